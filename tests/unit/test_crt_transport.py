"""The awscrt backend without a broker: its error mapping (crt_errors), the thread-to-loop
handoff, and how the ``transport`` setting picks a backend (or says the extra is missing).

The backend against real brokers is in tests/integration (test_connection.py,
test_reconnect.py and test_transport.py run on both transports).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import threading
from collections.abc import Callable

import anyio
import pytest
from awscrt.exceptions import AwsCrtError
from awscrt.mqtt import ConnectReturnCode

from ancsync import IoTConnection
from ancsync.errors import ConfigError, ConnectError, NotAuthorized, TLSError
from ancsync.mqtt import crt_errors
from ancsync.mqtt.crt_transport import CrtTransport, _Handoff
from ancsync.mqtt.incoming import IncomingQueue
from ancsync.mqtt.paho_transport import PahoTransport
from ancsync.mqtt.transport import DropCounting, IncomingMessage
from ancsync.mqtt.transports import transport_factory_for

HOST, PORT = "example-ats.iot.eu-west-1.amazonaws.com", 8883


def crt_error(name: str) -> AwsCrtError:
    """An error as awscrt raises it (the code is not read by the mapping, only the name)."""
    return AwsCrtError(code=0, name=name, message=f"{name} (test)")


@pytest.mark.parametrize(
    ("name", "raised", "permanent", "message"),
    [
        ("AWS_IO_TLS_UNKNOWN_ROOT_CERTIFICATE", TLSError, True, "failed verification"),
        ("AWS_IO_TLS_HOST_NAME_MISMATCH", TLSError, True, "failed verification"),
        ("AWS_IO_TLS_ERROR_ALERT_RECEIVED", TLSError, True, "refused the client certificate"),
        ("AWS_IO_TLS_ERROR_READ_FAILURE", TLSError, True, "refused the client certificate"),
        ("AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE", TLSError, True, "either the server cert"),
        ("AWS_IO_DNS_INVALID_NAME", ConnectError, False, f"cannot resolve {HOST}"),
        ("AWS_IO_SOCKET_CONNECTION_REFUSED", ConnectError, False, "refused the TCP connection"),
        ("AWS_IO_SOCKET_TIMEOUT", ConnectError, False, "within the connect timeout (10 s)"),
        ("AWS_IO_SOCKET_CLOSED", ConnectError, False, "closed the connection before accepting"),
        ("AWS_ERROR_MQTT_PROTOCOL_ERROR", NotAuthorized, True, "refused the connection"),
        ("AWS_ERROR_SOMETHING_NEW", ConnectError, False, "cannot connect to"),
    ],
)
def test_connect_failures_map_by_awscrt_error_name(
    name: str, raised: type[ConnectError], permanent: bool, message: str
) -> None:
    error = crt_errors.connect_failure(crt_error(name), HOST, PORT, 10)
    assert type(error) is raised
    assert error.permanent is permanent
    assert message in str(error)


@pytest.mark.parametrize(
    ("code", "raised", "permanent", "message"),
    [
        (ConnectReturnCode.NOT_AUTHORIZED, NotAuthorized, True, "Not authorized"),
        (ConnectReturnCode.BAD_USERNAME_OR_PASSWORD, NotAuthorized, True, "Bad user name"),
        (ConnectReturnCode.IDENTIFIER_REJECTED, ConnectError, True, "Client identifier"),
        (ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION, ConnectError, True, "protocol"),
        (ConnectReturnCode.SERVER_UNAVAILABLE, ConnectError, False, "Server unavailable"),
    ],
)
def test_connack_refusals_map_by_return_code(
    code: ConnectReturnCode, raised: type[ConnectError], permanent: bool, message: str
) -> None:
    error = crt_errors.refused(int(code), HOST)
    assert type(error) is raised
    assert error.permanent is permanent
    assert message in str(error)


def test_a_connack_timeout_names_an_untrusted_server_certificate_found_by_the_probe() -> None:
    probe = ssl.SSLCertVerificationError("certificate verify failed")
    probe.verify_message = "unable to get local issuer certificate"
    error = crt_errors.connack_timeout(HOST, PORT, 10, probe)
    assert isinstance(error, TLSError)
    assert "unable to get local issuer certificate" in str(error)
    plain = crt_errors.connack_timeout(HOST, PORT, 10, ConnectionResetError())
    assert type(plain) is ConnectError
    assert "sent no CONNACK within the connect timeout (10 s)" in str(plain)


def test_a_lost_link_says_half_open_for_an_unanswered_ping() -> None:
    half_open = crt_errors.lost(crt_error("AWS_ERROR_MQTT_TIMEOUT"), keep_alive=60)
    assert "no answer to the keep-alive ping within 30 s" in str(half_open)
    assert "half-open" in str(half_open)
    hangup = crt_errors.lost(crt_error("AWS_ERROR_MQTT_UNEXPECTED_HANGUP"))
    assert str(hangup).startswith("connection lost: AWS_ERROR_MQTT_UNEXPECTED_HANGUP")
    assert str(crt_errors.lost(None)) == "connection lost: the broker closed it"
    assert not half_open.permanent


def test_certificate_files_awscrt_cannot_load_are_a_config_error() -> None:
    error = crt_errors.tls_setup(crt_error("AWS_IO_FILE_VALIDATION_FAILURE"), "c.pem", "k.pem")
    assert isinstance(error, ConfigError)
    assert "c.pem" in str(error)
    assert "AWS_IO_FILE_VALIDATION_FAILURE" in str(error)


def _message(n: int) -> IncomingMessage:
    return IncomingMessage(f"anc/{n}", b"%d" % n, 1, False)


async def test_the_handoff_runs_events_in_the_loop_in_order_with_one_wake_up_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    incoming = IncomingQueue(100)
    handoff = _Handoff(loop, incoming, limit=100)
    seen: list[tuple[int, int, int]] = []
    wake_ups: list[object] = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(callback: Callable[[], None]) -> asyncio.Handle:
        wake_ups.append(callback)
        return call_soon_threadsafe(callback)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)

    def in_awscrt_thread() -> None:
        for n in range(50):
            handoff.call(
                lambda value: seen.append((value, threading.get_ident(), len(incoming))), n
            )
        handoff.message(_message(0))

    worker = threading.Thread(target=in_awscrt_thread)
    worker.start()
    worker.join()
    await _after_the_handoffs_wake_up()
    assert [value for value, _, _ in seen] == list(range(50))
    assert {thread for _, thread, _ in seen} == {threading.get_ident()}
    assert seen[0][2] == 1, "messages of a batch are queued before its events run"
    assert len(wake_ups) == 1


async def _after_the_handoffs_wake_up() -> None:
    """Return once the loop has run what a worker thread scheduled before this call: the loop
    runs its ready callbacks in order, so one scheduled now runs after them."""
    ran = asyncio.Event()
    asyncio.get_running_loop().call_soon(ran.set)
    with anyio.fail_after(1):
        await ran.wait()


async def test_the_handoff_drops_the_oldest_messages_while_the_loop_is_behind() -> None:
    assert isinstance(CrtTransport(incoming_limit=3), DropCounting)
    incoming = IncomingQueue(3)
    handoff = _Handoff(asyncio.get_running_loop(), incoming, limit=3)
    worker = threading.Thread(target=lambda: [handoff.message(_message(n)) for n in range(10)])
    worker.start()
    worker.join()  # the loop did not run meanwhile: 10 messages for 3 places
    await _after_the_handoffs_wake_up()
    assert handoff.dropped == 7
    assert [(await incoming.get()).topic for _ in range(3)] == ["anc/7", "anc/8", "anc/9"]
    assert len(incoming) == 0


def test_the_transport_setting_picks_the_backend() -> None:
    assert isinstance(transport_factory_for("paho", in_flight=5)(), PahoTransport)
    assert isinstance(transport_factory_for("crt", in_flight=5)(), CrtTransport)


def test_crt_without_awscrt_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "awscrt", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install ancsync\[crt\]"):
        transport_factory_for("crt", in_flight=5)
    monkeypatch.setenv("IOT_TRANSPORT", "crt")
    with pytest.raises(ConfigError, match=r"pip install ancsync\[crt\]"):
        IoTConnection("anc-device-001", "127.0.0.1", tls=False, port=1883)
