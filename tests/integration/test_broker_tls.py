"""The embedded broker (and mosquitto where relevant) over real TLS sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import anyio
import orjson
import pytest
from disconnects import until_disconnected
from faultproxy import FaultProxy
from helpers import (
    HOST,
    AllowEverything,
    MosquittoBroker,
    cut_off,
    device_client,
    foreign_pair,
    granted,
    mqtt_client,
    next_message,
    operator_client,
    plain_mqtt_client,
)

from ancsync.emulator.amqtt_broker import AwsLikeBroker
from ancsync.emulator.broker import ClientIdentity, EmbeddedBroker
from ancsync.emulator.certificates import certificate_id
from ancsync.emulator.certs import CertPair, DevCerts
from ancsync.errors import ConfigError, NotStarted

DEVICE = "anc-device-001"
OTHER_DEVICE = "anc-device-002"
TIMEOUT = 5


class Recorder:
    """Collects what a reserved-topic handler or publish listener is given, in order."""

    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[
            tuple[ClientIdentity, str, bytes]
        ](100)

    async def __call__(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        await self.send.send((identity, topic, payload))


# -- connecting with certificates ---------------------------------------------------------------


async def test_device_publishes_json_and_receives_it_back(
    any_broker: EmbeddedBroker | MosquittoBroker, dev_certs: DevCerts
) -> None:
    topic = f"anc/devices/{DEVICE}/status"
    document = {"device_id": DEVICE, "status": "online", "firmware_version": "1.2.3"}
    with anyio.fail_after(TIMEOUT):
        async with device_client(any_broker.port, dev_certs, DEVICE) as client:
            await client.subscribe(topic, qos=1)
            await client.publish(topic, orjson.dumps(document), qos=1)
            message = await next_message(client)
    assert message.topic.value == topic
    assert isinstance(message.payload, bytes)
    assert orjson.loads(message.payload) == document


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no client certificate", "SSL"),
        ("certificate from another CA", "SSL"),
        ("client trusts another CA", "CERTIFICATE_VERIFY_FAILED"),
    ],
)
async def test_bad_certificates_are_refused_at_once_with_a_tls_error(
    any_broker: EmbeddedBroker | MosquittoBroker,
    dev_certs: DevCerts,
    tmp_path: Path,
    case: str,
    expected: str,
) -> None:
    foreign_ca, foreign = foreign_pair(tmp_path, DEVICE)
    pair: CertPair | None = {
        "no client certificate": None,
        "certificate from another CA": foreign,
        "client trusts another CA": dev_certs.device(DEVICE),
    }[case]
    ca = foreign_ca if case == "client trusts another CA" else dev_certs.ca
    # mosquitto 2.0's `tls_version` is only a minimum, and with TLS 1.3 a refused client
    # certificate reaches the client after its handshake: aiomqtt then shows only a timeout.
    cap = ssl.TLSVersion.TLSv1_2 if isinstance(any_broker, MosquittoBroker) else None
    client = mqtt_client(
        any_broker.port, dev_certs, pair, DEVICE, ca=ca, max_tls_version=cap, timeout=TIMEOUT
    )
    started = time.monotonic()
    with anyio.fail_after(TIMEOUT + 1), pytest.raises(aiomqtt.MqttError) as refused:
        async with client:
            pass
    assert expected in str(refused.value)
    assert "timed out" not in str(refused.value)
    assert time.monotonic() - started < 1, "the refusal must not be a timeout"


def _connect_packet(client_id: str) -> bytes:
    """A plain MQTT 3.1.1 CONNECT packet (clean session, keep-alive 60)."""
    identifier = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(identifier).to_bytes(2, "big") + identifier
    return bytes([0x10, len(body)]) + body


async def test_plain_mqtt_to_the_tls_port_gets_no_connack(
    any_broker: EmbeddedBroker | MosquittoBroker,
) -> None:
    received = b""
    with anyio.fail_after(TIMEOUT):
        async with await anyio.connect_tcp(HOST, any_broker.port) as stream:
            await stream.send(_connect_packet(DEVICE))
            try:
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                pass  # the server closed the connection: what we expect
    # at most a TLS alert record (content type 0x15), never an MQTT CONNACK (0x20)
    assert not received.startswith(b"\x20")


# -- embedded broker only -----------------------------------------------------------------------


async def test_plain_listener_serves_loopback_clients_without_a_certificate(
    tls_broker: EmbeddedBroker,
) -> None:
    recorder = Recorder()
    tls_broker.add_publish_listener(recorder)
    assert tls_broker.plain_port is not None
    with anyio.fail_after(TIMEOUT):
        async with plain_mqtt_client(tls_broker.plain_port, "local-tool") as client:
            await client.subscribe("demo/#")
            await client.publish("demo/x", b"hello")
            message = await next_message(client)
            identity, topic, payload = await recorder.receive.receive()
    assert message.payload == b"hello"
    assert (identity, topic, payload) == (ClientIdentity("local-tool", None), "demo/x", b"hello")


async def test_an_empty_client_id_is_refused(
    tls_broker: EmbeddedBroker, dev_certs: DevCerts
) -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(aiomqtt.MqttCodeError) as refused:
        async with mqtt_client(tls_broker.port, dev_certs, dev_certs.device(DEVICE), ""):
            pass
    assert "Not authorized" in str(refused.value)  # CONNACK return code 5
    assert tls_broker.stats()["connects_denied"] == 1


async def test_restart_on_the_same_port_after_stop(dev_certs: DevCerts) -> None:
    with anyio.fail_after(TIMEOUT):
        first = EmbeddedBroker(dev_certs, plain_port=0)
        await first.start()
        port, plain_port = first.port, first.plain_port
        async with device_client(port, dev_certs, DEVICE) as client:
            await client.subscribe("x/y")
            await first.stop()
            with pytest.raises(aiomqtt.MqttError):
                await next_message(client)  # the stop disconnected the client
        async with EmbeddedBroker(dev_certs, port=port, plain_port=plain_port) as second:
            assert (second.port, second.plain_port) == (port, plain_port)
            async with device_client(port, dev_certs, DEVICE) as client:
                await client.subscribe("x/y")
                await client.publish("x/y", b"again")
                assert (await next_message(client)).payload == b"again"


async def test_a_taken_port_is_a_config_error_and_releases_the_other_listener(
    tls_broker: EmbeddedBroker, dev_certs: DevCerts
) -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        free_port = probe.getsockname()[1]
    failing = EmbeddedBroker(dev_certs, port=tls_broker.port, plain_port=free_port)
    with pytest.raises(ConfigError, match=f"port {tls_broker.port}.*choose a free port"):
        await failing.start()
    # the plain listener it had bound before the TLS one failed is closed again
    with socket.socket() as again:
        again.bind((HOST, free_port))


async def test_shadow_requests_go_to_the_handler_and_are_not_broadcast(dev_certs: DevCerts) -> None:
    recorder = Recorder()
    get_topic = f"$aws/things/{DEVICE}/shadow/get"
    accepted_topic = f"{get_topic}/accepted"
    with anyio.fail_after(TIMEOUT):
        async with (
            EmbeddedBroker(dev_certs, reserved_handler=recorder) as broker,
            operator_client(broker.port, dev_certs, "cloud") as operator,
            operator_client(broker.port, dev_certs, "everything") as wildcard,
            device_client(broker.port, dev_certs, DEVICE) as device,
        ):
            await operator.subscribe(get_topic)
            await operator.subscribe(accepted_topic)
            await wildcard.subscribe("#")
            await device.publish(get_topic, b'{"clientToken":"t-1"}', qos=1)
            identity, topic, payload = await recorder.receive.receive()
            cert_id = certificate_id(dev_certs.device(DEVICE).cert.read_text())
            assert identity == ClientIdentity(DEVICE, DEVICE, cert_id)
            assert (topic, payload) == (get_topic, b'{"clientToken":"t-1"}')

            # the service answers; had the request been broadcast, the operator would see it first
            await broker.publish(accepted_topic, b'{"clientToken":"t-1","state":{}}', qos=1)
            answer = await next_message(operator)
            assert (answer.topic.value, answer.payload) == (
                accepted_topic,
                b'{"clientToken":"t-1","state":{}}',
            )
            # `#` does not match `$` topics (MQTT-4.7.2-1): the wildcard sees only the next one
            await device.publish(f"anc/devices/{DEVICE}/status", b"still here")
            seen = await next_message(wildcard)
            assert (seen.topic.value, seen.payload) == (
                f"anc/devices/{DEVICE}/status",
                b"still here",
            )


async def test_other_dollar_topics_disconnect_the_client(
    tls_broker: EmbeddedBroker, dev_certs: DevCerts
) -> None:
    recorder = Recorder()
    tls_broker.add_publish_listener(recorder)
    with anyio.fail_after(TIMEOUT):
        async with device_client(tls_broker.port, dev_certs, DEVICE) as device:
            await device.subscribe("anc/#")
            await device.publish(f"$aws/things/{DEVICE}/jobs/get", b"{}")
            with pytest.raises(aiomqtt.MqttError):
                await next_message(device)
    assert tls_broker.stats()["publishes_denied"] == 1
    assert recorder.receive.statistics().current_buffer_used == 0


async def test_a_failing_handler_or_listener_does_not_disconnect_the_client(
    dev_certs: DevCerts,
) -> None:
    async def broken(identity: ClientIdentity, topic: str, payload: bytes) -> None:
        raise RuntimeError("service bug")

    with anyio.fail_after(TIMEOUT):
        async with EmbeddedBroker(dev_certs, reserved_handler=broken) as broker:
            broker.add_publish_listener(broken)
            async with device_client(broker.port, dev_certs, DEVICE) as device:
                await device.subscribe("anc/#")
                await device.publish(f"$aws/things/{DEVICE}/shadow/update", b"{}")
                await device.publish("anc/one", b"1")
                await device.publish("anc/two", b"2")
                assert (await next_message(device)).payload == b"1"
                assert (await next_message(device)).payload == b"2"


class DenyForbidden:
    """An authorizer for the test: nothing under `forbidden/`, and anc-device-002 is banned."""

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        return "banned for the test" if identity.common_name == OTHER_DEVICE else None

    def authorize_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> bool:
        return not topic.startswith("forbidden/")

    def authorize_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        return not topic_filter.startswith("forbidden/")


async def test_authorizer_decides_connect_publish_and_subscribe(dev_certs: DevCerts) -> None:
    """A refused connect gets CONNACK 5; a refused subscribe or publish disconnects the client
    (AWS IoT Core on MQTT 3.1.1), a subscribe with one refused filter among allowed ones too."""
    with anyio.fail_after(TIMEOUT):
        async with EmbeddedBroker(dev_certs, authorizer=DenyForbidden()) as broker:
            with pytest.raises(aiomqtt.MqttCodeError) as refused:
                async with device_client(broker.port, dev_certs, OTHER_DEVICE):
                    pass
            assert "Not authorized" in str(refused.value)  # CONNACK return code 5

            async with operator_client(broker.port, dev_certs, "cloud") as operator:
                await operator.subscribe("#")
                async with device_client(broker.port, dev_certs, DEVICE) as device:
                    await until_disconnected(
                        device, partial(device.subscribe, [("allowed/#", 1), ("forbidden/#", 1)])
                    )
                async with device_client(broker.port, dev_certs, DEVICE) as device:
                    assert granted(await device.subscribe("allowed/#", qos=1)) == [1]
                    await until_disconnected(
                        device, partial(device.publish, "forbidden/x", b"dropped")
                    )
                async with device_client(broker.port, dev_certs, DEVICE) as device:
                    await device.publish("allowed/x", b"delivered")
                first = await next_message(operator)
                assert (first.topic.value, first.payload) == ("allowed/x", b"delivered")
    assert broker.stats() == {
        "mqtt5_refused": 0,
        "connects_denied": 1,
        "publishes_denied": 1,
        "subscribes_denied": 1,
        "qos2_publishes_ignored": 0,
        "qos2_subscribes_ignored": 0,
        "publishes_too_large": 0,
        "malformed_packets": 0,
        "certificate_disconnects": 0,
    }
    assert [(v.request, v.topic) for v in broker.violations()] == [
        ("subscribe", "forbidden/#"),
        ("publish", "forbidden/x"),
    ]


class ClientIdIsThingName(AllowEverything):
    """An authorizer for the test: a device must use its thing name as client id."""

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        if identity.common_name in (identity.client_id, "operator"):
            return None
        return "the client id must be the thing name"


@pytest.mark.parametrize("clean_session", [True, False])
async def test_a_refused_impostor_does_not_disturb_the_connected_device(
    dev_certs: DevCerts, clean_session: bool
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            EmbeddedBroker(dev_certs, authorizer=ClientIdIsThingName()) as broker,
            device_client(broker.port, dev_certs, DEVICE, clean_session=False) as device,
            operator_client(broker.port, dev_certs, "cloud") as operator,
        ):
            await device.subscribe(f"anc/devices/{DEVICE}/commands", qos=1)
            impostor = mqtt_client(
                broker.port,
                dev_certs,
                dev_certs.device(OTHER_DEVICE),
                DEVICE,
                clean_session=clean_session,
            )
            with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
                async with impostor:
                    pass
            await operator.publish(f"anc/devices/{DEVICE}/commands", b"still yours", qos=1)
            assert (await next_message(device)).payload == b"still yours"
    assert broker.stats()["connects_denied"] == 1


async def test_a_refused_impostor_leaves_the_will_of_the_resumed_session_alone(
    dev_certs: DevCerts,
) -> None:
    status = f"anc/devices/{DEVICE}/status"
    with anyio.fail_after(TIMEOUT):
        async with (
            EmbeddedBroker(dev_certs, authorizer=ClientIdIsThingName()) as broker,
            FaultProxy(broker.port) as proxy,
            operator_client(broker.port, dev_certs, "cloud") as operator,
        ):
            await operator.subscribe(status, qos=1)
            device = device_client(
                proxy.port,
                dev_certs,
                DEVICE,
                clean_session=False,
                will=aiomqtt.Will(status, b"device lost", qos=1),
            )
            async with device:
                impostor = mqtt_client(
                    broker.port,
                    dev_certs,
                    dev_certs.device(OTHER_DEVICE),
                    DEVICE,
                    clean_session=False,
                    will=aiomqtt.Will(status, b"forged by the impostor", qos=1),
                )
                with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
                    async with impostor:
                        pass
                await cut_off(device, proxy)  # the broker now publishes the session's will
            will = await next_message(operator)
    assert will.payload == b"device lost"


async def test_service_publishes_work_while_the_broker_is_still_starting(
    dev_certs: DevCerts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain listener serves clients while the TLS one is still being set up."""
    plain_ports: list[int] = []
    tls_starting, release_tls = anyio.Event(), anyio.Event()
    create_server = AwsLikeBroker._create_server_instance

    async def hold_the_tls_listener(self: AwsLikeBroker, *args: Any) -> Any:
        server = await create_server(self, *args)
        if args[-1] is None:  # no SSL context: the plain listener, bound first
            plain_ports.append(server.sockets[0].getsockname()[1])
        else:
            tls_starting.set()
            await release_tls.wait()
        return server

    monkeypatch.setattr(AwsLikeBroker, "_create_server_instance", hold_the_tls_listener)
    refusals: list[NotStarted] = []
    handled = anyio.Event()

    async def answer(identity: ClientIdentity, topic: str, payload: bytes) -> None:
        try:
            await broker.publish(f"{topic}/accepted", payload, qos=1)
        except NotStarted as exc:
            refusals.append(exc)
        finally:
            handled.set()

    broker = EmbeddedBroker(dev_certs, plain_port=0, reserved_handler=answer)
    get_topic = f"$aws/things/{DEVICE}/shadow/get"
    try:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as starting:
                starting.start_soon(broker.start)
                await tls_starting.wait()
                async with plain_mqtt_client(plain_ports[0], DEVICE) as device:
                    await device.subscribe(f"{get_topic}/accepted", qos=1)
                    await device.publish(get_topic, b'{"clientToken":"early"}', qos=1)
                    await handled.wait()
                    assert refusals == [], "the reply was lost: publish() refused while starting"
                    release_tls.set()
                    reply = await next_message(device)
    finally:
        release_tls.set()
        await broker.stop()
    assert reply.payload == b'{"clientToken":"early"}'


async def test_a_resumed_session_is_identified_by_its_new_certificate(
    tls_broker: EmbeddedBroker, dev_certs: DevCerts
) -> None:
    recorder = Recorder()
    tls_broker.add_publish_listener(recorder)
    with anyio.fail_after(TIMEOUT):
        for thing in (DEVICE, OTHER_DEVICE):
            async with mqtt_client(
                tls_broker.port,
                dev_certs,
                dev_certs.device(thing),
                "shared-session",
                clean_session=False,
            ) as client:
                await client.publish("who/am/i", thing.encode(), qos=1)
                identity, _topic, payload = await recorder.receive.receive()
            cert_id = certificate_id(dev_certs.device(thing).cert.read_text())
            assert identity == ClientIdentity("shared-session", thing, cert_id)
            assert payload == thing.encode()


def test_plain_mqtt_is_refused_on_a_non_loopback_host(dev_certs: DevCerts) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        EmbeddedBroker(dev_certs, host="0.0.0.0", plain_port=0)


async def test_with_tls_1_3_aiomqtt_sees_a_refused_certificate_only_as_a_timeout(
    dev_certs: DevCerts,
) -> None:
    """Why the broker caps TLS at 1.2 by default (see docs/emulator.md)."""
    with anyio.fail_after(TIMEOUT):
        async with EmbeddedBroker(dev_certs, max_tls_version=ssl.TLSVersion.TLSv1_3) as broker:
            with pytest.raises(aiomqtt.MqttError, match="timed out"):
                async with mqtt_client(broker.port, dev_certs, None, DEVICE, timeout=1):
                    pass


async def test_a_plain_only_broker_has_no_tls_port() -> None:
    with anyio.fail_after(TIMEOUT):
        async with EmbeddedBroker(None, plain_port=0) as broker:
            assert broker.plain_port is not None
            with pytest.raises(ConfigError, match="no TLS listener"):
                _ = broker.port
            async with plain_mqtt_client(broker.plain_port, "tool") as client:
                await client.subscribe("a/b")
                await client.publish("a/b", b"plain")
                assert (await next_message(client)).payload == b"plain"


def test_a_broker_needs_a_listener() -> None:
    with pytest.raises(ConfigError, match="needs a listener"):
        EmbeddedBroker(None)


# -- measured differences from MQTT (docs/emulator.md lists them; mosquitto is the reference) ----


async def test_offline_messages_reach_a_persistent_session(
    any_broker: EmbeddedBroker | MosquittoBroker, dev_certs: DevCerts
) -> None:
    """Emulator sessions are authenticated, not anonymous, so amqtt queues for them; the
    emulator sends them unflagged (amqtt itself flags them retained, mosquitto does not)."""
    topic = f"anc/devices/{DEVICE}/commands"
    with anyio.fail_after(TIMEOUT):
        async with device_client(any_broker.port, dev_certs, DEVICE, clean_session=False) as client:
            await client.subscribe(topic, qos=1)
        async with operator_client(any_broker.port, dev_certs, "cloud") as cloud:
            await cloud.publish(topic, b"while you were away", qos=1)
        async with device_client(any_broker.port, dev_certs, DEVICE, clean_session=False) as client:
            message = await next_message(client)
    assert (message.payload, message.qos, message.retain) == (b"while you were away", 1, False)


async def test_delivery_qos_is_the_subscription_qos_in_amqtt(
    any_broker: EmbeddedBroker | MosquittoBroker, dev_certs: DevCerts
) -> None:
    """MQTT delivers at min(publish QoS, subscription QoS); amqtt uses the subscription's."""
    topic = f"anc/devices/{DEVICE}/status"
    with anyio.fail_after(TIMEOUT):
        async with device_client(any_broker.port, dev_certs, DEVICE) as client:
            await client.subscribe(topic, qos=1)
            await client.publish(topic, b"qos 0", qos=0)
            message = await next_message(client)
    assert message.qos == (1 if isinstance(any_broker, EmbeddedBroker) else 0)
