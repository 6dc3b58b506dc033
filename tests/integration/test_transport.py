"""The transports on their own, over real TLS against the emulator's broker (amqtt) and mosquitto.

Tests taking ``backend`` run for PahoTransport and CrtTransport (awscrt); the others check the
paho backend's own error mapping (the crt one is covered through IoTConnection in
test_connection.py, and its mapping in tests/unit/test_crt_transport.py).

The session's tests (test_connection.py, test_reconnect.py) cover the transport through
IoTConnection; these drive the seam directly: acknowledgements with no task of the caller
running, QoS 0, the bounded incoming handoff, every connect failure's error, and a cancelled
connect leaving no connection behind.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import cast

import anyio
import pytest
from anyio.abc import SocketStream
from helpers import (
    HOST,
    AllowEverything,
    MosquittoBroker,
    client_tls_context,
    next_message,
    operator_client,
)

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import DevCerts, generate_ca, issue_certificate, write_pair
from ancsync.errors import ConnectError, NotAuthorized, TLSError
from ancsync.mqtt.crt_transport import CrtTransport
from ancsync.mqtt.paho_transport import PahoTransport
from ancsync.mqtt.transport import ConnectOptions, DropCounting, TlsFiles, Transport, Will

DEVICE = "anc-device-001"
TIMEOUT = 5


def options(certs: DevCerts, port: int, **overrides: object) -> ConnectOptions:
    """A device's connect options over TLS with its dev certificate (as a context and files)."""
    pair = certs.device(DEVICE)
    values: dict[str, object] = {
        "host": HOST,
        "port": port,
        "client_id": DEVICE,
        "keep_alive": 30,
        "ssl_context": client_tls_context(certs.ca, pair),
        "connect_timeout": TIMEOUT,
        "tls_files": TlsFiles(pair.cert, pair.key, certs.ca),
    }
    values.update(overrides)
    return ConnectOptions(**values)  # type: ignore[arg-type]


Backend = Callable[..., Transport]


@pytest.fixture(params=[PahoTransport, CrtTransport], ids=["paho", "crt"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The transport class under test: each test taking it runs on both backends."""
    return cast(Backend, request.param)


async def test_many_publishes_in_flight_are_acknowledged_in_the_loop_thread_with_no_reader(
    any_broker: EmbeddedBroker | MosquittoBroker, dev_certs: DevCerts, backend: Backend
) -> None:
    """QoS 1 PUBACKs complete in loop callbacks: no task of ours reads or waits meanwhile."""
    transport = backend(max_inflight=10)
    acked: list[int] = []
    threads: set[int] = set()
    all_acked = anyio.Event()

    def on_done(n: int) -> None:
        acked.append(n)
        threads.add(threading.get_ident())
        if len(acked) == 50:
            all_acked.set()

    with anyio.fail_after(TIMEOUT):
        await transport.connect(options(dev_certs, any_broker.port))
        try:
            for n in range(50):  # more than max_inflight: paho holds the rest back
                transport.publish(
                    f"anc/devices/{DEVICE}/n", b"%d" % n, 1, False, lambda n=n: on_done(n)
                )
            assert acked == [], "on_done before any PUBACK could arrive"
            await all_acked.wait()
        finally:
            await transport.close()
    assert sorted(acked) == list(range(50))
    assert threads == {threading.get_ident()}


async def test_qos_0_completes_once_written_and_messages_arrive(
    any_broker: EmbeddedBroker | MosquittoBroker, dev_certs: DevCerts, backend: Backend
) -> None:
    topic = f"anc/devices/{DEVICE}/echo"
    transport = backend()
    written = anyio.Event()
    with anyio.fail_after(TIMEOUT):
        await transport.connect(options(dev_certs, any_broker.port))
        try:
            assert await transport.subscribe([(topic, 1)]) == [1]
            transport.publish(topic, b"qos 0", 0, False, written.set)
            await written.wait()
            message = await anext(aiter(transport.messages()))
        finally:
            await transport.close()
    assert (message.topic, message.payload) == (topic, b"qos 0")


async def test_a_reader_that_falls_behind_loses_the_oldest_and_they_are_counted(
    any_broker: EmbeddedBroker | MosquittoBroker, dev_certs: DevCerts, backend: Backend
) -> None:
    topic = f"anc/devices/{DEVICE}/flood"
    transport = backend(incoming_limit=2)
    assert isinstance(transport, DropCounting)
    with anyio.fail_after(TIMEOUT):
        await transport.connect(options(dev_certs, any_broker.port))
        try:
            await transport.subscribe([(topic, 1)])
            for n in range(5):
                transport.publish(topic, b"%d" % n, 1, False, lambda: None)
            # The broker answers in order on our connection: once this SUBACK is in, the five
            # messages came back before it, with nobody reading them.
            await transport.subscribe([(f"anc/devices/{DEVICE}/other", 1)])
            messages = aiter(transport.messages())
            received = [await anext(messages), await anext(messages)]
        finally:
            await transport.close()
    assert transport.dropped == 3
    assert [m.payload for m in received] == [b"3", b"4"]


async def test_a_certificate_refused_after_a_tls_1_3_handshake_fails_fast_as_a_tls_error(
    dev_certs: DevCerts,
) -> None:
    """TLS 1.3 sends the refusal of a client certificate after the handshake: the connection
    drops before any CONNACK, which must end the wait at once, not at the connect timeout."""
    async with EmbeddedBroker(dev_certs, max_tls_version=ssl.TLSVersion.TLSv1_3) as tls13:
        no_certificate = client_tls_context(dev_certs.ca, None)
        started = time.monotonic()
        with anyio.fail_after(TIMEOUT), pytest.raises(ConnectError) as refused:
            await PahoTransport().connect(
                options(dev_certs, tls13.port, ssl_context=no_certificate)
            )
    assert time.monotonic() - started < 2, "the refusal waited for the connect timeout"
    assert "CONNACK" not in str(refused.value)


@pytest.mark.mosquitto
async def test_mosquitto_refusing_a_certificate_is_a_tls_error(
    dev_certs: DevCerts, mosquitto_broker: MosquittoBroker
) -> None:
    """mosquitto answers a certificate from an unknown CA with a TLS alert. Capped at TLS 1.2,
    where the alert ends the handshake: with TLS 1.3 it comes after, and may be lost to the
    reset of a socket closed with our CONNECT unread (then it is a plain ConnectError)."""
    stranger = generate_ca("stranger CA")
    pair = write_pair(
        mosquitto_broker.log.parent / "stranger", *issue_certificate(stranger, DEVICE)
    )
    context = client_tls_context(dev_certs.ca, pair, max_version=ssl.TLSVersion.TLSv1_2)
    with anyio.fail_after(TIMEOUT), pytest.raises(TLSError, match="refused the client cert"):
        await PahoTransport().connect(
            options(dev_certs, mosquitto_broker.port, ssl_context=context)
        )


async def test_an_untrusted_server_certificate_is_a_tls_error(
    any_broker: EmbeddedBroker | MosquittoBroker, dev_certs: DevCerts
) -> None:
    wrong_ca = ssl.create_default_context()  # the system's CAs, not the dev CA
    wrong_ca.load_cert_chain(dev_certs.device(DEVICE).cert, dev_certs.device(DEVICE).key)
    with anyio.fail_after(TIMEOUT), pytest.raises(TLSError, match="failed verification"):
        await PahoTransport().connect(options(dev_certs, any_broker.port, ssl_context=wrong_ca))


class _Refuse(AllowEverything):
    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        return "not in the policy"


async def test_a_connack_refusal_is_not_authorized(dev_certs: DevCerts) -> None:
    async with EmbeddedBroker(dev_certs, authorizer=_Refuse()) as refusing:
        with anyio.fail_after(TIMEOUT), pytest.raises(NotAuthorized) as refused:
            await PahoTransport().connect(options(dev_certs, refusing.port))
    assert refused.value.permanent


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


async def test_network_failures_are_connect_errors_naming_the_cause(
    dev_certs: DevCerts, backend: Backend
) -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(ConnectError, match="refused the TCP connection") as refused:
            await backend().connect(options(dev_certs, _closed_port()))
        assert not refused.value.permanent
        with pytest.raises(ConnectError, match="cannot resolve"):
            await backend().connect(options(dev_certs, 8883, host="no-such-host.invalid"))


async def test_a_broker_that_never_answers_times_out_with_a_clear_error(
    dev_certs: DevCerts,
) -> None:
    """A plain listener that accepts and says nothing: the TLS handshake times out; without TLS
    the CONNACK does."""

    async def hold(stream: SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    async with (
        await anyio.create_tcp_listener(local_host=HOST, local_port=0) as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, hold)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(ConnectError, match=r"no answer from .* within the connect timeout"):
                await PahoTransport().connect(options(dev_certs, port, connect_timeout=0.3))
            with pytest.raises(ConnectError, match="sent no CONNACK within"):
                await PahoTransport().connect(
                    options(dev_certs, port, ssl_context=None, connect_timeout=0.3)
                )
        tg.cancel_scope.cancel()


async def test_a_cancelled_connect_leaves_no_connection_behind(dev_certs: DevCerts) -> None:
    """Cancelled during the TLS handshake (the worker thread) and while waiting for the CONNACK:
    either way the server sees the connection end, so no stray connection with our client id
    lingers to kick off the next one."""
    ends: list[bytes] = []
    ended = anyio.Event()

    async def listen_to_the_end(stream: SocketStream) -> None:
        received = b""
        async with stream:
            try:
                async for chunk in stream:
                    received += chunk
            except (anyio.BrokenResourceError, OSError):
                pass
        ends.append(received)
        ended.set()

    async with (
        await anyio.create_tcp_listener(local_host=HOST, local_port=0) as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, listen_to_the_end)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        for tls in (True, False):
            ended = anyio.Event()
            connect = options(
                dev_certs, port, connect_timeout=1.0, **({} if tls else {"ssl_context": None})
            )
            transport = PahoTransport()
            with anyio.fail_after(TIMEOUT):
                with anyio.move_on_after(0.2) as scope:
                    await transport.connect(connect)
                assert scope.cancelled_caught
                await ended.wait()
        tg.cancel_scope.cancel()
    handshake_only, plain = ends
    assert not handshake_only.startswith(b"\x10"), "an MQTT CONNECT went out through TLS?"
    assert plain.startswith(b"\x10"), "no CONNECT was sent"
    assert plain.endswith(b"\xe0\x00"), "the cancelled connect did not end with a DISCONNECT"


async def test_a_cancelled_crt_connect_ends_when_awscrt_lets_go(dev_certs: DevCerts) -> None:
    """awscrt cannot abort a connect: cancelled while waiting for the CONNACK, close() returns at
    once and the connection ends when awscrt gives up on the CONNACK (half a keep-alive), with
    nothing sent after the CONNECT. (A cancelled TLS handshake ends at awscrt's 10 s handshake
    timeout, too long for this test.)"""
    received: list[bytes] = []
    ended = anyio.Event()

    async def listen_to_the_end(stream: SocketStream) -> None:
        data = b""
        async with stream:
            try:
                async for chunk in stream:
                    data += chunk
            except (anyio.BrokenResourceError, OSError):
                pass
        received.append(data)
        ended.set()

    keep_alive = 2
    async with (
        await anyio.create_tcp_listener(local_host=HOST, local_port=0) as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, listen_to_the_end)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        connect = options(
            dev_certs, port, connect_timeout=1.0, keep_alive=keep_alive, ssl_context=None
        )
        transport = CrtTransport()
        with anyio.fail_after(TIMEOUT):
            with anyio.move_on_after(0.2) as scope:
                await transport.connect(connect)
            assert scope.cancelled_caught
            cancelled_at = anyio.current_time()
            await ended.wait()
            assert anyio.current_time() - cancelled_at < keep_alive / 2 + 0.5
        tg.cancel_scope.cancel()
    [plain] = received
    assert plain.startswith(b"\x10"), "no CONNECT was sent"
    assert not plain.endswith(b"\xe0\x00"), "a DISCONNECT for a connection never accepted"


async def test_a_clean_close_sends_a_disconnect_so_no_will_is_published(
    any_broker: EmbeddedBroker | MosquittoBroker, dev_certs: DevCerts, backend: Backend
) -> None:
    status = f"anc/devices/{DEVICE}/status"
    transport = backend()
    will = Will(status, b"offline (the will)", qos=1, retain=False)
    async with operator_client(any_broker.port, dev_certs, "cloud") as cloud:
        await cloud.subscribe(status, qos=1)
        with anyio.fail_after(TIMEOUT):
            await transport.connect(options(dev_certs, any_broker.port, will=will))
            await transport.close()
            # A will would be published as the broker saw the connection end, before this.
            await cloud.publish(status, b"marker", qos=1)
            message = await next_message(cloud)
    assert message.payload == b"marker"


async def test_a_dead_link_is_cut_without_a_disconnect_so_the_will_fires(
    dev_certs: DevCerts, backend: Backend
) -> None:
    """A server that accepts the CONNECT, then never answers again (not even the PINGREQ): after
    1.5 x keep-alive of silence messages() reports a half-open link, and the connection ends
    with no DISCONNECT, so a broker would publish the will."""
    keep_alive = 1
    after_connack: list[bytes] = []
    ended = anyio.Event()

    async def accept_then_go_silent(stream: SocketStream) -> None:
        async with stream:
            await stream.receive()  # the CONNECT
            await stream.send(b"\x20\x02\x00\x00")  # CONNACK, accepted
            received = b""
            try:
                async for chunk in stream:
                    received += chunk
            except (anyio.BrokenResourceError, OSError):
                pass
        after_connack.append(received)
        ended.set()

    transport = backend()
    async with (
        await anyio.create_tcp_listener(local_host=HOST, local_port=0) as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, accept_then_go_silent)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        with anyio.fail_after(TIMEOUT):
            await transport.connect(
                options(dev_certs, port, keep_alive=keep_alive, ssl_context=None)
            )
            started = anyio.current_time()
            with pytest.raises(ConnectError, match="half-open"):
                async for _message in transport.messages():
                    pass
            detected_after = anyio.current_time() - started
            await transport.close()
            await ended.wait()
        tg.cancel_scope.cancel()
    assert 1.5 * keep_alive <= detected_after < 1.5 * keep_alive + 0.5
    assert after_connack == [b"\xc0\x00"], "expected one PINGREQ, then the end, no DISCONNECT"
