"""IoTConnection against the embedded broker over real TLS: round trip, limits, TLS errors."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import anyio
import pytest
from device import HOST, THING, device_connection
from helpers import AllowEverything, MosquittoBroker, load_ca, mqtt_client

from ancsync import (
    Command,
    ConfigError,
    ConnectError,
    DeviceStatus,
    EmergencyEvent,
    InvalidTopic,
    IoTConnection,
    Lane,
    NotAuthorized,
    PayloadTooLarge,
    TLSError,
)
from ancsync.codec import decode_model, encode
from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import (
    DevCerts,
    generate_ca,
    issue_certificate,
    write_pair,
)
from ancsync.models import utc_now
from ancsync.tools.operator import OperatorCredentials, operator_client_id
from ancsync.topics import commands_topic, emergency_topic, status_topic


@pytest.mark.usefixtures("each_transport")
async def test_typed_round_trip(dev_certs: DevCerts, tls_broker: EmbeddedBroker) -> None:
    """A command from the cloud reaches the handler as a model; a device model reaches the cloud."""
    with anyio.fail_after(10):
        received: list[Command] = []
        got_command = anyio.Event()

        def on_command(topic: str, command: Command) -> None:
            received.append(command)
            got_command.set()

        operator = mqtt_client(tls_broker.port, dev_certs, dev_certs.operator, "operator")
        async with operator, device_connection(dev_certs, tls_broker.port) as iot:
            iot.subscribe(commands_topic(THING), on_command, Command)
            await operator.subscribe(emergency_topic(THING), qos=1)
            await iot.wait_connected()

            # Device -> cloud: a model goes out as JSON and the handle resolves on PUBACK.
            event = EmergencyEvent(
                device_id=THING,
                event_id="e1",
                seq=0,
                timestamp=utc_now(),
                is_emergency=True,
                predicted_class="fire_alarm",
                confidence=0.94,
                action="anc_bypassed",
            )
            handle = await iot.publish(emergency_topic(THING), event, lane=Lane.EMERGENCY)
            await handle.delivered()
            message = await anext(aiter(operator.messages))
            assert isinstance(message.payload, bytes)
            assert decode_model(message.payload, EmergencyEvent) == event

            # Cloud -> device: validated into the model given to subscribe().
            command = Command(command_id="c1", command="reboot", issued_at=utc_now())
            await operator.publish(commands_topic(THING), encode(command), qos=1)
            await got_command.wait()
            assert received == [command]

            status = json.loads(json.dumps(iot.get_status()))  # JSON-serialisable as promised
            assert status["state"] == "connected"
            assert status["acknowledged"] == 1
            assert status["subscriptions"] == 1


async def test_invalid_payloads_are_counted_and_later_ones_still_arrive(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    invalid: list[tuple[str, bytes]] = []
    received: list[Command] = []
    valid_arrived = anyio.Event()

    def on_command(topic: str, command: Command) -> None:
        received.append(command)
        valid_arrived.set()

    iot = device_connection(
        dev_certs,
        tls_broker.port,
        on_invalid=lambda topic, payload, error: invalid.append((topic, payload)),
    )
    operator = mqtt_client(tls_broker.port, dev_certs, dev_certs.operator, "operator")
    with anyio.fail_after(10):
        async with operator, iot:
            iot.subscribe(commands_topic(THING), on_command, Command)
            await iot.wait_connected()
            await operator.publish(commands_topic(THING), b"{not json", qos=1)
            await operator.publish(commands_topic(THING), b'{"command": "reboot"}', qos=1)
            good = Command(command_id="c2", command="reboot", issued_at=utc_now())
            await operator.publish(commands_topic(THING), encode(good), qos=1)
            await valid_arrived.wait()
            assert received == [good]
            assert [payload for _, payload in invalid] == [b"{not json", b'{"command": "reboot"}']
            assert iot.get_status()["invalid"] == 2
            assert iot.connected


@pytest.mark.usefixtures("each_transport")
async def test_a_slow_handler_drops_its_oldest_and_spares_other_routes(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    release = anyio.Event()
    slow_seen: list[int] = []
    fast_seen: list[int] = []
    fast_done = anyio.Event()

    slow_done = anyio.Event()

    async def slow(topic: str, payload: dict[str, int]) -> None:
        await release.wait()
        slow_seen.append(payload["n"])
        if len(slow_seen) == 3:
            slow_done.set()

    fast_arrived = anyio.Condition()

    async def fast(topic: str, payload: dict[str, int]) -> None:
        fast_seen.append(payload["n"])
        async with fast_arrived:
            fast_arrived.notify_all()
        if len(fast_seen) == 6:
            fast_done.set()

    operator = mqtt_client(tls_broker.port, dev_certs, dev_certs.operator, "operator")
    with anyio.fail_after(10):
        async with operator, device_connection(dev_certs, tls_broker.port, queue_size=2) as iot:
            iot.subscribe("anc/slow", slow)
            iot.subscribe("anc/fast", fast)
            await iot.wait_connected()
            for n in range(6):
                await operator.publish("anc/slow", b'{"n": %d}' % n, qos=1)
                await operator.publish("anc/fast", b'{"n": %d}' % n, qos=1)
                # One at a time, so the fast route never holds more than its queue: a transport
                # that hands over incoming messages in batches (crt) would burst it otherwise.
                async with fast_arrived:
                    while len(fast_seen) <= n:
                        await fast_arrived.wait()
            await fast_done.wait()  # the fast route got everything while the slow one is stuck
            assert fast_seen == list(range(6))
            slow_route = next(
                r for r in iot.get_status()["router"]["routes"] if r["filter"] == "anc/slow"
            )
            # One message is in the handler, two wait in the queue, three were dropped oldest first.
            assert slow_route["dropped"] == 3
            release.set()
            await slow_done.wait()
        assert slow_seen == [0, 4, 5]


@pytest.mark.usefixtures("each_transport")
async def test_status_online_retained_and_offline_on_stop(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    with anyio.fail_after(10):
        async with device_connection(dev_certs, tls_broker.port, firmware_version="1.2.3") as iot:
            await iot.wait_connected()
        # Retained: a client subscribing afterwards still gets the latest status.
        operator = mqtt_client(tls_broker.port, dev_certs, dev_certs.operator, "operator")
        async with operator:
            await operator.subscribe(status_topic(THING), qos=1)
            message = await anext(aiter(operator.messages))
        assert isinstance(message.payload, bytes)
        status = decode_model(message.payload, DeviceStatus)
        assert (status.status, status.firmware_version) == ("offline", "1.2.3")


async def test_operator_connection_leaves_no_status_behind(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    """The operator tools' connection is not a device: no retained status, no last will."""
    credentials = OperatorCredentials(
        endpoint=HOST,
        port=tls_broker.port,
        cert_path=dev_certs.operator.cert,
        key_path=dev_certs.operator.key,
        root_ca_path=dev_certs.ca,
        client_id=operator_client_id(),
    )
    with anyio.fail_after(10):
        async with credentials.connection() as iot:
            await iot.wait_connected()
            await (await iot.publish("anc/ops/request", b"{}")).delivered()
        # A retained status would reach a new subscriber before the marker it publishes itself.
        watcher = mqtt_client(tls_broker.port, dev_certs, dev_certs.operator, "watcher")
        async with watcher:
            await watcher.subscribe([("anc/devices/+/status", 1), ("anc/ops/marker", 1)])
            await watcher.publish("anc/ops/marker", b"{}", qos=1)
            first = await anext(aiter(watcher.messages))
        assert first.topic.value == "anc/ops/marker"


async def test_aws_limits_raise_before_anything_is_sent(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    with anyio.fail_after(10):
        async with device_connection(dev_certs, tls_broker.port) as iot:
            await iot.wait_connected()
            with pytest.raises(PayloadTooLarge, match="131073 bytes"):
                await iot.publish("anc/big", b"x" * (128 * 1024 + 1))
            with pytest.raises(InvalidTopic, match="256 bytes"):
                await iot.publish("anc/" + "t" * 253, b"{}")
            with pytest.raises(InvalidTopic, match="8 slashes"):
                await iot.publish("a/b/c/d/e/f/g/h/i", b"{}")
            with pytest.raises(InvalidTopic, match="reserves"):
                await iot.publish("$aws/rules/my_rule", b"{}")
            with pytest.raises(ConfigError, match="QoS 2"):
                await iot.publish("anc/q", b"{}", qos=2)
            for n in range(50):
                iot.subscribe(f"anc/sub/{n}", lambda topic, payload: None)
            with pytest.raises(InvalidTopic, match="limit of 50"):
                iot.subscribe("anc/sub/one-too-many", lambda topic, payload: None)
            # A filter already subscribed is not a new subscription.
            iot.subscribe("anc/sub/0", lambda topic, payload: None)

            status = iot.get_status()
            assert status["published"] == 0
            assert all(lane["enqueued"] == 0 for lane in status["lanes"].values())


@pytest.mark.usefixtures("each_transport")
async def test_key_not_matching_certificate(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    other_key = dev_certs.device("anc-device-002").key
    with anyio.fail_after(10):
        async with device_connection(dev_certs, tls_broker.port, key_path=other_key) as iot:
            with pytest.raises(ConfigError, match="does not belong to the certificate"):
                await iot.wait_connected()
            assert iot.get_status()["last_error"]["permanent"] is True


async def test_expired_certificate(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    ca = load_ca(dev_certs)
    past = datetime.now(UTC) - timedelta(days=30)
    cert, key = issue_certificate(ca, THING, not_before=past, not_after=past + timedelta(days=1))
    pair = write_pair(tmp_path / "expired", cert, key)
    with anyio.fail_after(10):
        async with device_connection(
            dev_certs, tls_broker.port, cert_path=pair.cert, key_path=pair.key
        ) as iot:
            with pytest.raises(ConfigError, match="expired on"):
                await iot.wait_connected()


async def test_server_certificate_from_another_ca(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker, tmp_path: Path, each_transport: str
) -> None:
    other_ca_cert, other_ca_key = generate_ca("some other CA")
    other = write_pair(tmp_path / "other-ca", other_ca_cert, other_ca_key)
    # awscrt (s2n) holds its verdict back for 10 to 30 s; at the connect timeout the crt
    # transport names it with a probe of the handshake: a short timeout keeps the test short.
    timeout = {"connect_timeout": 1.0} if each_transport == "crt" else {}
    with anyio.fail_after(10):
        async with device_connection(
            dev_certs, tls_broker.port, root_ca_path=other.cert, **timeout
        ) as iot:
            with pytest.raises(TLSError, match="failed verification"):
                await iot.wait_connected()
            assert iot.get_status()["state"] in ("waiting", "connecting")


@pytest.mark.usefixtures("each_transport")
@pytest.mark.mosquitto
async def test_client_certificate_from_another_ca(
    dev_certs: DevCerts, mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    # mosquitto answers an unknown client certificate with a TLS alert; amqtt only closes the
    # socket, which looks the same as a network failure (and is retried as one).
    stranger_ca = generate_ca("stranger CA")
    cert, key = issue_certificate(stranger_ca, THING)
    pair = write_pair(tmp_path / "stranger", cert, key)
    with anyio.fail_after(10):
        async with device_connection(
            dev_certs, mosquitto_broker.port, cert_path=pair.cert, key_path=pair.key
        ) as iot:
            with pytest.raises(TLSError, match="refused the client certificate"):
                await iot.wait_connected()


class _OnlyDevice1(AllowEverything):
    """An authorizer that lets only anc-device-001 connect."""

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        return None if identity.client_id == THING else "not in the policy"


@pytest.mark.usefixtures("each_transport")
async def test_not_authorized(dev_certs: DevCerts) -> None:
    with anyio.fail_after(10):
        async with EmbeddedBroker(dev_certs, authorizer=_OnlyDevice1()) as broker:
            iot = device_connection(dev_certs, broker.port, thing="anc-device-002")
            async with iot:
                with pytest.raises(NotAuthorized, match="refused the connection"):
                    await iot.wait_connected()


async def test_stop_fails_the_handles_of_messages_never_sent(dev_certs: DevCerts) -> None:
    """A message queued while the broker refuses the device: after stop(), delivered() raises
    at once, saying the message was never sent, instead of waiting forever."""
    with anyio.fail_after(10):
        async with EmbeddedBroker(dev_certs, authorizer=_OnlyDevice1()) as broker:
            iot = device_connection(dev_certs, broker.port, thing="anc-device-002")
            async with iot:
                handle = await iot.publish("anc/devices/anc-device-002/metrics", {"snr": 1})
                with pytest.raises(NotAuthorized):
                    await iot.wait_connected()
                await iot.stop(timeout=0.1)
            with anyio.fail_after(1), pytest.raises(ConnectError, match="never sent"):
                await handle.delivered()


def test_plaintext_refused_to_a_non_loopback_host() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        IoTConnection(THING, "example.com", tls=False)


@pytest.mark.usefixtures("each_transport")
async def test_plaintext_allowed_to_loopback_only_when_asked(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    assert tls_broker.plain_port is not None
    iot = IoTConnection(THING, HOST, tls=False, port=tls_broker.plain_port)
    before = iot.get_status()
    with anyio.fail_after(10):
        async with iot:
            await iot.wait_connected()
            assert iot.get_status().keys() == before.keys()  # same shape before start
    assert before["state"] == "stopped"


@pytest.mark.usefixtures("each_transport")
async def test_a_native_cancel_during_stop_still_closes_the_connection(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    # asyncio.run turns Ctrl-C into task.cancel(), which reaches through anyio's shields: stop()
    # is cut short then, but must still close its task group, or every cancel scope its caller
    # leaves afterwards fails ("exit a cancel scope that isn't the current task's").
    iot = device_connection(dev_certs, tls_broker.port)
    task = cast("asyncio.Task[None]", asyncio.current_task())  # the test's own task
    with anyio.fail_after(10):
        await iot.start()
        await iot.wait_connected()
        asyncio.get_running_loop().call_soon(task.cancel)  # lands in stop()'s shielded flush
        with pytest.raises(asyncio.CancelledError):
            await iot.stop()
        task.uncancel()
        async with anyio.create_task_group():  # this task's cancel scopes are in order
            pass
    assert iot.get_status()["state"] == "stopped"
