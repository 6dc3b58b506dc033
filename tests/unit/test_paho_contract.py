"""What ancsync.mqtt.paho_transport relies on in paho-mqtt, checked against the installed paho.

Each test names the assumption it checks, so a paho upgrade that changes one fails here with a
message saying what changed, before an integration test fails somewhere less clear. paho is
driven for real: a tiny MQTT 3.1.1 server on a loopback socket (a thread in this test) answers
CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE and PINGREQ, and the client is pumped the way the
backend pumps it (socket callbacks, ``loop_read``/``loop_write``/``loop_misc``, no paho thread).
"""

from __future__ import annotations

import inspect
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from paho.mqtt.client import (
    MQTT_ERR_SUCCESS,
    Client,
    MQTTMessageInfo,
    convert_disconnect_error_code_to_reason_code,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from ancsync.mqtt import paho_transport
from ancsync.mqtt.transport import SUBSCRIBE_FAILURE

PINGREQ = 0xC0

# -- a minimal MQTT 3.1.1 server -----------------------------------------------------------------


def _read_packet(conn: socket.socket) -> tuple[int, bytes] | None:
    """One packet as (first byte, body); None at the end of the stream."""
    try:
        header = conn.recv(1)
    except ConnectionResetError:  # a client that closes without reading everything
        return None
    if not header:
        return None
    length, shift = 0, 0
    while True:
        byte = conn.recv(1)[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        body += conn.recv(length - len(body))
    return header[0], body


def _serve(
    conn: socket.socket, connack_code: int, silent_after_connack: bool, seen: list[int]
) -> None:
    with conn:
        while (packet := _read_packet(conn)) is not None:
            kind, body = packet[0] & 0xF0, packet[1]
            seen.append(kind)
            if kind == 0x10:  # CONNECT
                conn.sendall(bytes([0x20, 2, 0, connack_code]))
            elif silent_after_connack:
                continue
            elif kind == 0x30 and packet[0] & 0x06:  # PUBLISH, QoS 1: mid after the topic
                topic_length = int.from_bytes(body[:2], "big")
                conn.sendall(b"\x40\x02" + body[2 + topic_length : 4 + topic_length])
            elif kind == 0x80:  # SUBSCRIBE: grant QoS 1, then refuse
                conn.sendall(b"\x90\x04" + body[:2] + bytes([1, SUBSCRIBE_FAILURE]))
            elif kind == 0xA0:  # UNSUBSCRIBE
                conn.sendall(b"\xb0\x02" + body[:2])
            elif kind == PINGREQ:
                conn.sendall(b"\xd0\x00")


class Server:
    """A one-connection MQTT server on 127.0.0.1: ``port``, and the packet types it received."""

    def __init__(self) -> None:
        self.port = 0
        self.seen: list[int] = []


@contextmanager
def mqtt_server(connack_code: int = 0, *, silent_after_connack: bool = False) -> Iterator[Server]:
    server = Server()
    listener = socket.create_server(("127.0.0.1", 0))
    server.port = listener.getsockname()[1]

    def accept() -> None:
        with listener:
            conn, _ = listener.accept()
            _serve(conn, connack_code, silent_after_connack, server.seen)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server
    thread.join(timeout=5)


# -- the client, pumped as the backend pumps it ----------------------------------------------------


class Recorder:
    """Every callback paho makes, with its arguments, and the socket the pump watches."""

    def __init__(self, client: Client) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.sock: Any = None
        self.writing = False
        for name in (
            "on_connect",
            "on_disconnect",
            "on_publish",
            "on_subscribe",
            "on_unsubscribe",
            "on_message",
        ):
            setattr(client, name, self._record(name))
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_socket_close = self._record("on_socket_close")

    def _record(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record

    def _register_write(self, client: Client, userdata: Any, sock: Any) -> None:
        self.calls.append(("register_write", (sock,)))
        self.writing = True

    def _unregister_write(self, client: Client, userdata: Any, sock: Any) -> None:
        self.calls.append(("unregister_write", (sock,)))
        self.writing = False

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]


def new_client() -> Client:
    return Client(
        CallbackAPIVersion.VERSION2,
        client_id="contract",
        clean_session=True,
        protocol=MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
    )


def pump(client: Client, recorder: Recorder, until: Callable[[], bool], timeout: float = 5) -> None:
    """Drive the client with select (reader always, writer when registered) until ``until()``."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"paho never got there; callbacks: {recorder.calls}"
        sock = client.socket()
        if sock is None:
            return
        readable, writable, _ = select.select([sock], [sock] if recorder.writing else [], [], 0.05)
        if writable:
            client.loop_write()
        if readable:
            client.loop_read()
        client.loop_misc()


def connected(port: int, keep_alive: int = 60) -> tuple[Client, Recorder]:
    client = new_client()
    client.connect("127.0.0.1", port, keep_alive)  # as the backend's worker thread does
    recorder = Recorder(client)  # callbacks set after connect, as the backend does
    pump(client, recorder, lambda: bool(recorder.named("on_connect")))
    return client, recorder


def disconnect(client: Client, recorder: Recorder) -> None:
    client.disconnect()
    pump(client, recorder, lambda: client.socket() is None)


# -- the assumptions -----------------------------------------------------------------------------


def test_the_v2_callback_api_and_the_client_options_the_backend_passes_exist() -> None:
    parameters = inspect.signature(Client).parameters
    for name in ("callback_api_version", "client_id", "clean_session", "protocol"):
        assert name in parameters, f"paho's Client() lost its {name!r} parameter"
    assert "reconnect_on_failure" in parameters, "paho's Client(reconnect_on_failure=) is gone"
    assert CallbackAPIVersion.VERSION2.value == 2
    for method in (
        "enable_logger",
        "tls_set_context",
        "will_set",
        "max_inflight_messages_set",
        "loop_read",
        "loop_write",
        "loop_misc",
        "want_write",
        "socket",
    ):
        assert callable(getattr(Client, method, None)), f"paho's Client.{method} is gone"
    assert isinstance(Client.connect_timeout, property), "Client.connect_timeout is no property"


def test_connect_writes_the_connect_and_leaves_a_non_blocking_socket() -> None:
    """The backend's worker thread calls connect(); the loop's thread takes over the socket."""
    with mqtt_server() as server:
        client = new_client()
        assert client.connect("127.0.0.1", server.port, 60) == MQTT_ERR_SUCCESS
        sock = client.socket()
        assert isinstance(sock, socket.socket), "connect() no longer leaves client.socket() open"
        assert sock.getblocking() is False, "paho's socket is blocking: the loop would stall"
        assert not client.want_write(), "connect() no longer writes the CONNECT at once"
        client.disconnect()


def test_v2_callbacks_receive_the_arguments_the_backend_unpacks() -> None:
    with mqtt_server() as server:
        client, recorder = connected(server.port)
        (_client, _userdata, _flags, reason, _properties) = recorder.named("on_connect")[0]
        assert isinstance(reason, ReasonCode), "on_connect's 4th argument is no longer a reason"
        assert not reason.is_failure

        info = client.publish("a/b", b"x", 1, False)
        assert isinstance(info, MQTTMessageInfo)
        assert (info.rc, isinstance(info.mid, int)) == (MQTT_ERR_SUCCESS, True)
        assert recorder.writing, "publish() no longer asks for the writer (register_write)"
        pump(client, recorder, lambda: bool(recorder.named("on_publish")))
        assert not recorder.writing, "loop_write() no longer unregisters the writer when done"
        (_client, _userdata, mid, _reason, _properties) = recorder.named("on_publish")[0]
        assert mid == info.mid, "on_publish's 3rd argument is no longer the mid"

        rc, mid = client.subscribe([("a/#", 1), ("refused/#", 1)])
        assert rc == MQTT_ERR_SUCCESS
        pump(client, recorder, lambda: bool(recorder.named("on_subscribe")))
        (_client, _userdata, sub_mid, reasons, _properties) = recorder.named("on_subscribe")[0]
        assert sub_mid == mid
        assert [r.value for r in reasons] == [1, SUBSCRIBE_FAILURE], (
            "SUBACK return codes no longer arrive as ReasonCode values equal to the granted QoS "
            "(or 0x80)"
        )

        _rc, mid = client.unsubscribe(["a/#"])
        pump(client, recorder, lambda: bool(recorder.named("on_unsubscribe")))
        assert recorder.named("on_unsubscribe")[0][2] == mid

        disconnect(client, recorder)
        assert recorder.named("on_socket_close"), "closing no longer calls on_socket_close"
        assert recorder.named("on_disconnect")


def test_qos_0_completes_once_written() -> None:
    with mqtt_server() as server:
        client, recorder = connected(server.port)
        info = client.publish("a/b", b"x", 0, False)
        pump(client, recorder, lambda: bool(recorder.named("on_publish")))
        assert recorder.named("on_publish")[0][2] == info.mid
        disconnect(client, recorder)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (5, "Not authorized"),
        (4, "Bad user name or password"),
        (2, "Client identifier not valid"),
    ],
)
def test_connack_refusals_have_the_names_the_error_mapping_reads(code: int, name: str) -> None:
    with mqtt_server(connack_code=code) as server:
        client = new_client()
        client.connect("127.0.0.1", server.port, 60)
        recorder = Recorder(client)
        pump(client, recorder, lambda: bool(recorder.named("on_connect")))
        reason = recorder.named("on_connect")[0][3]
        assert reason.is_failure
        assert reason.getName() == name, f"CONNACK {code} is now called {reason.getName()!r}"
        pump(client, recorder, lambda: client.socket() is None)


def test_a_connack_refusing_mqtt_3_1_1_is_a_protocol_error_without_on_connect() -> None:
    """With reconnect_on_failure=False paho does not fall back to MQTT 3.1 on CONNACK 1: it
    calls on_disconnect with "Protocol error" and never on_connect (the backend maps that)."""
    with mqtt_server(connack_code=1) as server:
        client = new_client()
        client.connect("127.0.0.1", server.port, 60)
        recorder = Recorder(client)
        pump(client, recorder, lambda: client.socket() is None)
        assert not recorder.named("on_connect")
        reason = recorder.named("on_disconnect")[0][3]
        assert reason.getName() == paho_transport._PROTOCOL_ERROR


def test_the_end_of_the_stream_closes_the_socket_and_reports_a_loss() -> None:
    """The backend's abort: shut the socket down, loop_read until paho has closed it."""
    with mqtt_server(silent_after_connack=True) as server:
        client, recorder = connected(server.port)
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        for _ in range(10):
            if client.socket() is None:
                break
            client.loop_read()
        assert client.socket() is None, "reading the end of the stream no longer closes"
        assert recorder.named("on_disconnect"), "a lost connection no longer calls on_disconnect"


def test_paho_names_its_own_keep_alive_timeout_as_the_backend_expects() -> None:
    reason = convert_disconnect_error_code_to_reason_code(MQTTErrorCode.MQTT_ERR_KEEPALIVE)
    assert reason.getName() == paho_transport._KEEPALIVE_TIMEOUT, (
        f"paho now calls its keep-alive timeout {reason.getName()!r}"
    )


def test_loop_misc_sends_the_pingreq_one_keep_alive_after_the_last_inbound_bytes() -> None:
    """The backend calls loop_misc at that moment, and counts on the PINGREQ going out then."""
    with mqtt_server() as server:
        client, recorder = connected(server.port, keep_alive=1)
        connack_seen = time.monotonic()
        pump(client, recorder, lambda: PINGREQ in server.seen, timeout=3)
        waited = time.monotonic() - connack_seen
        assert 0.9 < waited < 1.5, f"the PINGREQ went out {waited:.2f} s after the CONNACK"
        disconnect(client, recorder)
