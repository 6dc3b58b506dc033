"""A hostile-input campaign against the running emulator: each case ends in a clear refusal.

Every case runs against the whole emulator (TLS, device policy, shadow service, rules sink) with
a healthy device, anc-device-002, connected over TLS with its own certificate *before* the
hostile action. Each test asserts three things:

- the refusal itself: a TLS error, a disconnect (no ack, the socket closed), or a shadow
  ``/rejected`` reply with AWS's code;
- the healthy device is still served afterwards: a shadow get round trip through the broker
  (publish, then the reply on its subscription) and a new QoS 1 telemetry batch stored;
- nothing accepted before is lost: the QoS 1 telemetry the healthy device published before the
  hostile action (and, where the hostile client published something valid first, that too)
  reaches the rules sink.

docs/emulator.md ("Hostile input") lists the cases with what AWS IoT Core does.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import anyio
import orjson
import pytest
from disconnects import until_disconnected
from helpers import (
    HOST,
    client_tls_context,
    device_client,
    foreign_pair,
    load_ca,
    mqtt_client,
)
from publish_log import PublishLog
from raw_mqtt import (
    CONNACK,
    PUBACK,
    RawClient,
    connect_packet,
    publish_packet,
    raw_device,
    raw_tls,
    remaining_length,
    subscribe_packet,
    unsubscribe_packet,
)
from test_shadow_service import shadow_client

from ancsync.codec import MAX_PAYLOAD_BYTES
from ancsync.emulator.amqtt_broker import MAX_PACKET_BYTES
from ancsync.emulator.certs import CertPair, issue_certificate, write_pair
from ancsync.emulator.server import Emulator
from ancsync.topics import ShadowTopics

HOSTILE = "anc-device-001"
HEALTHY = "anc-device-002"
TIMEOUT = 10
# A refusal at the TLS layer is immediate; the bound leaves room for a loaded 2-core machine.
PROMPT = 3.0


def telemetry(device: str, seq: int) -> tuple[str, bytes]:
    """A telemetry batch the rules sink stores: its topic and payload."""
    payload = {"msg_id": f"{device}-{seq}", "seq": seq, "records": [{"n": seq}]}
    return f"anc/telemetry/{device}/system", orjson.dumps(payload)


class Healthy:
    """The healthy device: connected before the hostile action, checked after it."""

    def __init__(self, emulator: Emulator, client: aiomqtt.Client) -> None:
        self.emulator = emulator
        self.client = client
        self.topics = ShadowTopics(HEALTHY)
        self.seq = 0
        self.round_trips = 0

    async def publish_telemetry(self) -> None:
        """One more QoS 1 telemetry batch (PUBACKed when this returns)."""
        self.seq += 1
        await self.client.publish(*telemetry(HEALTHY, self.seq), qos=1)

    async def assert_still_served(self) -> None:
        """A shadow get round trip, then a new batch: every batch so far is stored, in order."""
        self.round_trips += 1
        token = f"round-trip-{self.round_trips}"
        await self.client.publish(self.topics.get, orjson.dumps({"clientToken": token}), qos=1)
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            reply = orjson.loads(message.payload)
            if reply.get("clientToken") == token:
                break
        # no shadow exists for the healthy device: AWS answers a get with 404
        assert message.topic.value == self.topics.get_rejected
        assert reply["code"] == 404
        await self.publish_telemetry()
        rules = self.emulator.rules
        await rules.wait_for(lambda sink: len(sink.telemetry_batches(HEALTHY)) == self.seq)
        assert [batch.seq for batch in rules.telemetry_batches(HEALTHY)] == list(
            range(1, self.seq + 1)
        )


@asynccontextmanager
async def healthy_device(emulator: Emulator) -> AsyncIterator[Healthy]:
    """The healthy device, subscribed to its shadow get replies, one batch already accepted."""
    async with device_client(emulator.port, emulator.certs, HEALTHY) as client:
        healthy = Healthy(emulator, client)
        await client.subscribe(f"{healthy.topics.prefix}/get/+", qos=1)
        await healthy.publish_telemetry()
        yield healthy


async def tls_refusal(emulator: Emulator, pair: CertPair | None) -> aiomqtt.MqttError:
    """Connect with ``pair`` (None: no certificate); the TLS error, which must come at once."""
    client = mqtt_client(emulator.port, emulator.certs, pair, HOSTILE, timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(aiomqtt.MqttError) as refused:
        async with client:
            pass
    assert time.monotonic() - started < PROMPT, "the refusal must not be a timeout"
    assert "timed out" not in str(refused.value)
    return refused.value


# -- 1-3: certificates --------------------------------------------------------------------------


async def test_no_client_certificate_is_a_tls_error(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            refused = await tls_refusal(emulator, None)
            await healthy.assert_still_served()
    assert "SSL" in str(refused)
    assert emulator.broker.stats()["connects_denied"] == 0  # refused before MQTT


async def test_a_certificate_from_another_ca_is_a_tls_error(
    emulator: Emulator, tmp_path: Path
) -> None:
    _, stranger = foreign_pair(tmp_path, HOSTILE)  # a valid thing name, the wrong issuer
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            refused = await tls_refusal(emulator, stranger)
            await healthy.assert_still_served()
    assert "SSL" in str(refused)


def _expired_pair(emulator: Emulator, directory: Path) -> CertPair:
    """The hostile thing's certificate from the right CA, expired yesterday."""
    past = datetime.now(UTC) - timedelta(days=30)
    cert, key = issue_certificate(
        load_ca(emulator.certs), HOSTILE, not_before=past, not_after=past + timedelta(days=29)
    )
    return write_pair(directory, cert, key)


async def test_an_expired_certificate_is_a_tls_error(emulator: Emulator, tmp_path: Path) -> None:
    expired = _expired_pair(emulator, tmp_path / "expired")
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            refused = await tls_refusal(emulator, expired)
            await healthy.assert_still_served()
    assert "SSL" in str(refused)


def test_the_emulators_tls_context_refuses_an_expired_certificate_as_expired(
    emulator: Emulator, tmp_path: Path
) -> None:
    """The reason, which the client cannot see (asyncio closes without an alert): a handshake in
    memory between the broker's own server context and a client presenting the expired one."""
    expired = _expired_pair(emulator, tmp_path / "expired")
    server = emulator.broker.tls_context()
    client = ssl.create_default_context(cafile=str(emulator.certs.ca))
    client.load_cert_chain(expired.cert, expired.key)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        _handshake_in_memory(server, client)


def _handshake_in_memory(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """Run a TLS handshake between the two contexts over memory buffers; the server's error."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    client_side = client.wrap_bio(to_client, to_server, server_hostname=HOST)
    for _ in range(10):
        for side in (client_side, server_side):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                if side is server_side:
                    raise
    raise AssertionError("the handshake did not fail on the server side")


# -- 4: wildcard subscriptions beyond the device's own topics -----------------------------------


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "$aws/things/+/shadow/#",
        f"$aws/things/{HEALTHY}/shadow/#",
        "$aws/things/+/shadow/update/accepted",
        "anc/telemetry/+/system",
        f"anc/telemetry/{HEALTHY}/#",
        "anc/devices/+/commands",
    ],
)
async def test_a_wildcard_subscription_beyond_its_own_topics_disconnects(
    emulator: Emulator, topic_filter: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with device_client(emulator.port, emulator.certs, HOSTILE) as hostile:
                await until_disconnected(hostile, lambda: hostile.subscribe(topic_filter, qos=1))
            await healthy.assert_still_served()
    [violation] = emulator.broker.violations()
    assert (violation.client_id, violation.request, violation.topic) == (
        HOSTILE,
        "subscribe",
        topic_filter,
    )
    assert emulator.broker.stats()["subscribes_denied"] == 1


# -- 5: garbage after the TLS handshake ----------------------------------------------------------


def garbage(seed: int) -> bytes:
    """4 KB of random bytes, the same for a seed."""
    return random.Random(seed).randbytes(4096)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_garbage_instead_of_a_connect_closes_the_connection(
    emulator: Emulator, seed: int
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with raw_tls(emulator.port, emulator.certs, HOSTILE) as raw:
                await raw.send(garbage(seed))
                received = await raw.packets_until_closed()
            await healthy.assert_still_served()
    assert received == []  # no CONNACK, nothing: the socket closed
    assert emulator.broker.stats()["malformed_packets"] == 1


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_garbage_after_the_connect_closes_the_connection(
    emulator: Emulator, seed: int
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with raw_device(emulator.port, emulator.certs, HOSTILE) as raw:
                await raw.send(publish_packet(*telemetry(HOSTILE, 1), qos=1, packet_id=1))
                assert await raw.next_packet() == (PUBACK, b"\x00\x01")
                await raw.send(garbage(seed))
                received = await raw.packets_until_closed()
            await emulator.rules.wait_for(lambda sink: len(sink.telemetry_batches(HOSTILE)) == 1)
            await healthy.assert_still_served()
    assert received == []
    assert emulator.broker.stats()["malformed_packets"] == 1


@pytest.mark.parametrize("first_packet", [False, True], ids=["after-connect", "first-packet"])
async def test_a_packet_declared_over_1_mib_closes_at_once_unread(
    emulator: Emulator, first_packet: bool
) -> None:
    """Only the fixed header is sent: the broker must not wait for the 2 MiB it announces."""
    length = remaining_length(2 * MAX_PACKET_BYTES)
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            if first_packet:
                async with raw_tls(emulator.port, emulator.certs, HOSTILE) as raw:
                    await raw.send(b"\x10" + length)
                    received = await raw.packets_until_closed()
            else:
                async with raw_device(emulator.port, emulator.certs, HOSTILE) as raw:
                    await raw.send(b"\x32" + length)
                    received = await raw.packets_until_closed()
            await healthy.assert_still_served()
    assert received == []
    assert emulator.broker.stats()["malformed_packets"] == 1


async def test_a_packet_sent_slower_than_the_keep_alive_is_still_read_whole(
    emulator: Emulator,
) -> None:
    """amqtt bounds its wait for each packet with the keep-alive (1 s here) and reads on after
    it: the half of a packet received before must not be lost (the stream would be read out of
    step, the rest taken as a packet of its own)."""
    topic, payload = telemetry(HOSTILE, 1)
    whole = publish_packet(topic, payload, qos=1, packet_id=9)
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with raw_device(emulator.port, emulator.certs, HOSTILE, keep_alive=1) as raw:
                await raw.send(whole[:5])
                # the slowness under test (not a synchronisation): over the keep-alive, under
                # the 1.5 x keep-alive of silence after which AWS IoT Core disconnects
                await anyio.sleep(1.25)  # ok: the slowness is the input under test
                await raw.send(whole[5:])
                assert await raw.next_packet() == (PUBACK, b"\x00\x09")
            await emulator.rules.wait_for(lambda sink: len(sink.telemetry_batches(HOSTILE)) == 1)
            await healthy.assert_still_served()
    assert emulator.broker.stats()["malformed_packets"] == 0


# -- 6: payload size -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [MAX_PAYLOAD_BYTES + 1, 200 * 1024])
async def test_a_publish_over_128_kb_disconnects_and_what_came_before_is_kept(
    emulator: Emulator, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    caplog.set_level(logging.WARNING, "ancsync.emulator")
    status = f"anc/devices/{HOSTILE}/status"
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with raw_device(emulator.port, emulator.certs, HOSTILE) as raw:
                await raw.send(
                    publish_packet(*telemetry(HOSTILE, 1), qos=1, packet_id=1)
                    + publish_packet(status, b"x" * size, qos=1, packet_id=2)
                    + publish_packet(*telemetry(HOSTILE, 2), qos=1, packet_id=3)
                )
                received = await raw.packets_until_closed()
            await emulator.rules.wait_for(lambda sink: len(sink.telemetry_batches(HOSTILE)) == 1)
            await healthy.assert_still_served()
    assert received == [(PUBACK, b"\x00\x01")]  # no PUBACK for the big one, nothing after it
    assert [batch.seq for batch in emulator.rules.telemetry_batches(HOSTILE)] == [1]
    assert emulator.broker.stats()["publishes_too_large"] == 1
    assert emulator.broker.violations() == []  # a protocol limit, not the policy
    [line] = [r.getMessage() for r in caplog.records if "too large" in r.getMessage()]
    assert HOSTILE in line
    assert status in line
    assert str(size) in line


@pytest.mark.parametrize("size", [127 * 1024, MAX_PAYLOAD_BYTES])
async def test_a_publish_up_to_128_kb_is_delivered(emulator: Emulator, size: int) -> None:
    status = f"anc/devices/{HOSTILE}/status"
    payload = random.Random(size).randbytes(size)
    log = PublishLog()
    emulator.broker.add_publish_listener(log)
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with raw_device(emulator.port, emulator.certs, HOSTILE) as raw:
                await raw.send(publish_packet(status, payload, qos=1, packet_id=7))
                assert await raw.next_packet() == (PUBACK, b"\x00\x07")
            await log.wait_for(lambda seen: seen.on(status) != [])
            await healthy.assert_still_served()
    assert log.on(status) == [payload]
    assert emulator.broker.stats()["publishes_too_large"] == 0


# -- 7-8: shadow documents -----------------------------------------------------------------------


def _nested(levels: int) -> object:
    """`levels` objects and arrays inside one another, the section counting as level 1."""
    value: object = 1
    for level in range(levels):
        value = [value] if level == 0 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        pytest.param(
            orjson.dumps({"state": {"reported": {"blob": "x" * 9 * 1024}}}),
            413,
            "The payload exceeds the maximum size allowed",
            id="9-kb-document",
        ),
        pytest.param(b'{"state": {"reported": {"a": 1}', 400, "Invalid JSON", id="invalid-json"),
        pytest.param(
            orjson.dumps({"state": {"reported": _nested(7)}}),
            400,
            "JSON contains too many levels of nesting; maximum is 6",
            id="nested-7-levels",
        ),
        pytest.param(
            b'{"state": {"reported": {"a": "\xff\xfe"}}}',
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
            id="non-utf-8",
        ),
    ],
)
async def test_a_bad_shadow_update_is_rejected_with_the_aws_code(
    emulator: Emulator, payload: bytes, code: int, message: str
) -> None:
    """The device gets the /rejected reply and stays connected; the document it had is kept."""
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with shadow_client(emulator, HOSTILE) as hostile:
                accepted = await hostile.request("update", {"state": {"reported": {"mode": "on"}}})
                assert accepted.suffixes[0] == "update/accepted"
                rejected = await hostile.request("update", payload)
                document = (await hostile.request("get")).one("get/accepted")
            await healthy.assert_still_served()
    assert rejected.error("update") == (code, message)
    assert (document["state"], document["version"]) == ({"reported": {"mode": "on"}}, 1)


# -- 9: invalid topic names in a PUBLISH --------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param(f"anc/devices/{HOSTILE}/status/\xff".encode("latin-1"), id="non-utf-8"),
        pytest.param(b"anc/devices/\xc3\x28/status", id="invalid-utf-8-sequence"),
        pytest.param(b"anc/devices/+/status", id="plus-wildcard"),
        pytest.param(f"anc/devices/{HOSTILE}/#".encode(), id="hash-wildcard"),
        pytest.param(b"#", id="hash-alone"),
    ],
)
async def test_a_publish_to_an_invalid_topic_name_disconnects(
    emulator: Emulator, topic: bytes
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with raw_device(emulator.port, emulator.certs, HOSTILE) as raw:
                await raw.send(
                    publish_packet(*telemetry(HOSTILE, 1), qos=1, packet_id=1)
                    + publish_packet(topic, b"{}", qos=1, packet_id=2)
                    + publish_packet(*telemetry(HOSTILE, 2), qos=1, packet_id=3)
                )
                received = await raw.packets_until_closed()
            await emulator.rules.wait_for(lambda sink: len(sink.telemetry_batches(HOSTILE)) == 1)
            await healthy.assert_still_served()
    assert received == [(PUBACK, b"\x00\x01")]
    assert [batch.seq for batch in emulator.rules.telemetry_batches(HOSTILE)] == [1]
    # refused as an invalid topic, before the policy is asked
    assert emulator.broker.violations() == []
    assert emulator.broker.stats()["publishes_denied"] == 1


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(subscribe_packet(2, [(b"anc/devices/\xff/commands", 1)]), id="subscribe"),
        pytest.param(unsubscribe_packet(2, [b"anc/\xff"]), id="unsubscribe"),
    ],
)
async def test_a_topic_filter_that_is_not_utf_8_closes_the_connection(
    emulator: Emulator, packet: bytes
) -> None:
    """Not a policy question (amqtt took the filter in as ``str(the bytes)``, which the policy
    then judged): the packet is malformed, and the connection closed without an answer."""
    with anyio.fail_after(TIMEOUT):
        async with healthy_device(emulator) as healthy:
            async with raw_device(emulator.port, emulator.certs, HOSTILE) as raw:
                await raw.send(publish_packet(*telemetry(HOSTILE, 1), qos=1, packet_id=1))
                assert await raw.next_packet() == (PUBACK, b"\x00\x01")
                await raw.send(packet)
                received = await raw.packets_until_closed()
            await emulator.rules.wait_for(lambda sink: len(sink.telemetry_batches(HOSTILE)) == 1)
            await healthy.assert_still_served()
    assert received == []  # no SUBACK or UNSUBACK
    assert emulator.broker.violations() == []
    assert emulator.broker.stats()["malformed_packets"] == 1


# -- 10: a thousand connections at once ----------------------------------------------------------

FLOOD = 1000


class FloodOutcomes:
    """What became of each flood connection: served (CONNACK 0), refused or closed."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(("served", "refused", "closed"), 0)
        self.all_settled = anyio.Event()
        self.release = anyio.Event()  # the connections served are held open until then

    def settle(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if sum(self.counts.values()) == FLOOD:
            self.all_settled.set()


async def _flood_connection(
    port: int, context: ssl.SSLContext, client_id: str, outcomes: FloodOutcomes
) -> None:
    """Connect over TLS, send a CONNECT, note what became of it, and hold the connection."""
    try:
        stream = await anyio.connect_tcp(
            HOST, port, ssl_context=context, tls_standard_compatible=False
        )
    except OSError:  # refused at TCP or TLS: also clean
        outcomes.settle("refused")
        return
    async with stream:
        client = RawClient(stream, session_present=False)
        await client.send(connect_packet(client_id))
        try:
            first, body = await client.next_packet()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            outcomes.settle("closed")
            return
        assert first == CONNACK, f"{client_id}: expected a CONNACK, got {first:#x}"
        outcomes.settle("served" if body[1] == 0 else "refused")
        await outcomes.release.wait()


async def test_a_thousand_connections_at_once_are_each_served_or_refused(
    emulator: Emulator,
) -> None:
    """1,000 TLS connections (the operator certificate, each its own client id) opened at
    once, each a CONNECT: every one is answered; the healthy device is served while they
    open and, promptly, once they are all open."""
    context = client_tls_context(emulator.certs.ca, emulator.certs.operator)
    outcomes = FloodOutcomes()
    started = time.monotonic()
    with anyio.fail_after(60):
        async with healthy_device(emulator) as healthy, anyio.create_task_group() as flood:
            for index in range(FLOOD):
                flood.start_soon(
                    _flood_connection, emulator.port, context, f"flood-{index:04}", outcomes
                )
            await healthy.assert_still_served()  # while the connections open
            during = time.monotonic() - started
            await outcomes.all_settled.wait()
            opened = time.monotonic() - started
            after = time.monotonic()
            await healthy.assert_still_served()  # all of them open
            round_trip = time.monotonic() - after
            outcomes.release.set()
    print(
        f"{FLOOD} connections in {opened:.1f} s: {outcomes.counts}; healthy round trip "
        f"{during:.2f} s into the flood, {round_trip:.2f} s with all open"
    )
    assert outcomes.counts == {"served": FLOOD, "refused": 0, "closed": 0}
    assert round_trip < PROMPT
    assert emulator.broker.stats()["malformed_packets"] == 0
