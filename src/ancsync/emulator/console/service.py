"""The console's part in the emulator: an operator MQTT client and a web server, one Component.

:class:`Console` connects to a running :class:`~ancsync.emulator.server.Emulator` as its
*operator* (the operator certificate and a client id that is not a thing name: the broker applies
the same policy decisions to it as to any operator tool, nothing more), watches ``anc/#`` and the
shadow topics into a :class:`~ancsync.emulator.console.fleet.FleetView`, and serves the page
(:mod:`ancsync.emulator.console.web`) on ``host:port`` with uvicorn, in the current event loop.

Everything the page does goes over that MQTT connection: a desired-state edit is a shadow
``update`` the emulator's shadow service validates (size, depth, version) and answers like AWS; an
acknowledgement is an ``emergency_ack`` command on the device's commands topic; the MQTT test
client subscribes and publishes as the operator.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import uvicorn
from anyio.abc import TaskStatus
from cryptography import x509
from cryptography.x509.oid import NameOID

from ancsync.config import is_loopback
from ancsync.connection import IoTConnection
from ancsync.emulator.component import EmulatorComponent
from ancsync.emulator.console.errors import ConsoleError
from ancsync.emulator.console.fleet import FleetView
from ancsync.emulator.console.jobs import JobsSection
from ancsync.emulator.console.web import ConsoleSection, LiveSection, build_app
from ancsync.errors import AncSyncError, ConfigError
from ancsync.models import Command, new_id, utc_now
from ancsync.mqtt.outbox import Lane
from ancsync.mqtt.router import Route
from ancsync.tools.operator import OperatorCredentials, operator_client_id
from ancsync.topics import (
    ShadowTopics,
    commands_topic,
    parse_shadow_topic,
    validate_filter,
    validate_topic,
)

if TYPE_CHECKING:
    from ancsync.emulator.server import Emulator

__all__ = ["Console", "ConsoleError", "ConsoleSection"]

log = logging.getLogger("ancsync.emulator.console")

# How long the page waits for the shadow service to answer an edit.
_REQUEST_TIMEOUT = 5.0
# How many messages the MQTT test client keeps for the page.
_TEST_MESSAGES = 200


class Console(EmulatorComponent):
    """The emulator's web console on ``http://host:port/`` (port 0 picks a free one).

    ``emulator`` must be running when the console starts. Only loopback hosts are allowed unless
    ``allow_remote`` is true and a ``token`` is given; with a token every request must carry it
    (``?token=`` on the page's address, or ``Authorization: Bearer``). ``window`` is how many
    seconds of telemetry the charts show. The Jobs panel (:class:`JobsSection`) is always
    there; ``sections`` add more panels (:class:`ConsoleSection`).
    """

    name = "console"

    def __init__(
        self,
        emulator: Emulator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allow_remote: bool = False,
        window: float = 300.0,
        sections: Sequence[ConsoleSection] = (),
        stop_timeout: float = 3.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        if not is_loopback(host):
            if not allow_remote:
                raise ConfigError(
                    f"the console host {host!r} is not a loopback address; the console has the "
                    "operator's rights, so serve it on 127.0.0.1, or pass --console-allow-remote "
                    "with --console-token"
                )
            if not token:
                raise ConfigError(
                    f"serving the console on {host!r} needs a token (--console-token): anyone "
                    "who reaches it acts as the operator"
                )
        if not 0 <= port <= 65535:
            raise ConfigError(f"console port {port} is not a TCP port; use 0..65535 (0: any free)")
        self.emulator = emulator
        self.host = host
        self.token = token
        self.window = window
        self.sections: tuple[ConsoleSection, ...] = (JobsSection(emulator.jobs), *sections)
        self._requested_port = port
        self._port: int | None = None
        self.fleet = FleetView(emulator.things, window=window)
        #: Messages the MQTT test client received, newest last.
        self.messages: deque[dict[str, Any]] = deque(maxlen=_TEST_MESSAGES)
        self._test_routes: dict[str, Route] = {}
        self._connection: IoTConnection | None = None
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._replies: dict[str, dict[str, Any]] = {}
        self._replied: dict[str, anyio.Event] = {}
        self._changed = anyio.Event()
        self.closing = False

    # -- lifecycle -------------------------------------------------------------------------

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Connect as the operator, read every shadow, then listen for the page."""
        emulator = self.emulator
        certificates = await anyio.to_thread.run_sync(self._certificates)
        self.fleet = FleetView(
            emulator.things, window=self.window, certificate_of=lambda t: certificates.get(t, {})
        )
        for event in emulator.rules.emergencies():
            self.fleet.add_emergency(event.payload)
        self.closing = False
        connection = self._operator().connection()
        connection.subscribe("anc/#", self._on_fleet_message)
        connection.subscribe("$aws/things/+/shadow/#", self._on_shadow_message)
        for topic_filter in self._test_routes:  # a restarted console keeps its subscriptions
            self._test_routes[topic_filter] = connection.subscribe(
                topic_filter, self._on_test_message
            )
        self._connection = connection
        await connection.start()
        try:
            await connection.wait_connected(timeout=15)
            for thing in emulator.things:
                await self._request_shadow(thing)
            await self._start_http()
            log.info("console on %s", self.url)
            task_status.started()
            async with anyio.create_task_group() as watchers:
                for section in self.sections:
                    if isinstance(section, LiveSection):
                        watchers.start_soon(section.watch, self._touch)
                await anyio.sleep_forever()
        finally:
            # Stopped in the task and scope that started it; the page's requests fail from now.
            self._connection = None
            await connection.stop(timeout=1.0)

    async def _start_http(self) -> None:
        """Bind the port and start uvicorn's server on it (its connections run as tasks of the
        event loop; :meth:`_shutdown` closes them)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        problem = None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
        except OSError as exc:
            sock.close()
            problem = exc.strerror
        if problem is not None:
            # Raised outside the except block: the CLI reads a chained EADDRINUSE as the MQTT
            # port being taken.
            raise ConfigError(
                f"the console cannot listen on {self.host}:{self._requested_port}: {problem}; "
                "choose a free port or 0 (--console-port)"
            )
        sock.listen(128)
        sock.setblocking(False)
        self._socket, self._port = sock, sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(self), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server

    async def _shutdown(self) -> None:
        """Let the pages' event streams end, then close the web server."""
        self.closing = True
        self._touch()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown(sockets=[self._socket] if self._socket else None)
        self._socket = None

    @property
    def port(self) -> int:
        """The bound HTTP port."""
        if self._port is None:
            raise ConfigError("the console is not running; start it first")
        return self._port

    @property
    def url(self) -> str:
        """The page's address (with the token, if any)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = f"/?token={self.token}" if self.token else "/"
        return f"http://{host}:{self.port}{suffix}"

    def authorized(self, presented: str | None) -> bool:
        """Whether a request presenting ``presented`` (its token, or None) may use the console."""
        if self.token is None:
            return True
        return presented is not None and hmac.compare_digest(presented, self.token)

    # -- what the page reads ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, with the MQTT test client's messages and the sections."""
        return {
            **self.fleet.snapshot(),
            "subscriptions": sorted(self._test_routes),
            "messages": list(self.messages),
            "sections": {
                section.key: {"title": section.title, "rows": section.snapshot()}
                for section in self.sections
            },
        }

    async def changed(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until something shown changed, or ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            await self._changed.wait()

    def _touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- what the page does -----------------------------------------------------------------

    async def update_desired(self, thing: str, desired: Any) -> dict[str, Any]:
        """Ask the shadow service to set ``desired`` on ``thing``; return its accepted answer.

        Raises:
            ConsoleError: not a JSON object, an unknown thing, or the service's rejection
                (its code and message, e.g. 413 for a document over 8 KB).
        """
        if thing not in self.fleet.things:
            raise ConsoleError(f"{thing!r} is not a thing of this emulator")
        if not isinstance(desired, dict):
            raise ConsoleError(
                'desired must be a JSON object, e.g. {"anc_intensity": 0.9}; '
                f"got {type(desired).__name__}"
            )
        reply = await self._shadow_request(thing, "update", {"state": {"desired": desired}})
        if "code" in reply:
            raise ConsoleError(
                f"the shadow service rejected the update: {reply.get('code')} "
                f"{reply.get('message')}"
            )
        return reply

    async def subscribe(self, topic_filter: str) -> None:
        """Show every message on ``topic_filter`` in the MQTT test client.

        Raises:
            ConsoleError: not a valid filter (named), or the connection refused it.
        """
        try:
            validate_filter(topic_filter)
            if topic_filter not in self._test_routes:
                route = self._running().subscribe(topic_filter, self._on_test_message)
                self._test_routes[topic_filter] = route
        except AncSyncError as exc:
            raise ConsoleError(f"cannot subscribe to {topic_filter!r}: {exc}") from None
        self._touch()

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop showing ``topic_filter`` in the MQTT test client."""
        route = self._test_routes.pop(topic_filter, None)
        if route is not None:
            self._running().unsubscribe(route)
        self._touch()

    async def publish(
        self, topic: str, payload: str, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish ``payload`` (sent as typed) on ``topic`` as the operator; QoS 1 waits for
        the broker's PUBACK.

        Raises:
            ConsoleError: a bad topic or QoS (named), or the broker did not take it.
        """
        if qos not in (0, 1):
            raise ConsoleError(f"qos {qos} is not supported by AWS IoT Core; use 0 or 1")
        try:
            validate_topic(topic)
            handle = await self._running().publish(topic, payload.encode(), qos=qos, retain=retain)
            if qos == 1:
                with anyio.fail_after(_REQUEST_TIMEOUT):
                    await handle.delivered()
        except (AncSyncError, TimeoutError) as exc:
            raise ConsoleError(f"could not publish to {topic!r}: {exc or 'no PUBACK'}") from None

    async def acknowledge(self, event_id: str) -> None:
        """Send the ``emergency_ack`` command for emergency ``event_id`` to its device.

        Raises:
            ConsoleError: no such emergency, or the broker did not take the command.
        """
        event = self.fleet.emergencies.get(event_id)
        if event is None:
            raise ConsoleError(f"no emergency {event_id!r}; pick one from the list")
        ack = Command(
            command_id=new_id(),
            command="emergency_ack",
            params={"event_id": event_id},
            issued_at=utc_now(),
        )
        try:
            handle = await self._running().publish(commands_topic(event["device_id"]), ack)
            with anyio.fail_after(_REQUEST_TIMEOUT):
                await handle.delivered()
        except (AncSyncError, TimeoutError) as exc:
            why = exc or "no PUBACK"
            raise ConsoleError(f"could not send the acknowledgement: {why}") from None
        event["acknowledged"] = True
        self._touch()

    # -- MQTT --------------------------------------------------------------------------------

    def _running(self) -> IoTConnection:
        if self._connection is None:
            raise ConsoleError("the console is not connected to the emulator; start it first")
        return self._connection

    def _operator(self) -> OperatorCredentials:
        emulator = self.emulator
        if emulator.tls:
            return OperatorCredentials.from_certs_dir(
                emulator.certs.root, endpoint=emulator.host, port=emulator.port
            )
        return OperatorCredentials(
            emulator.host, emulator.port, None, None, None, operator_client_id(), tls=False
        )

    def _certificates(self) -> dict[str, dict[str, str]]:
        """Each thing's certificate: subject CN, serial and expiry (read from its file)."""
        if not self.emulator.tls:
            return {thing: {"cn": "none (plain MQTT)"} for thing in self.emulator.things}
        return {
            thing: _describe(self.emulator.certs.device(thing).cert)
            for thing in self.emulator.things
        }

    def _on_fleet_message(self, topic: str, payload: Any) -> None:
        if self.fleet.on_message(topic, payload):
            self._touch()

    def _on_test_message(self, topic: str, payload: Any) -> None:
        text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        self.messages.append({"topic": topic, "payload": text, "at": utc_now()})
        self._touch()

    async def _on_shadow_message(self, topic: str, payload: Any) -> None:
        parsed = parse_shadow_topic(topic)
        if parsed is None or parsed.shadow_name is not None or not isinstance(payload, dict):
            return
        token = payload.get("clientToken")
        if parsed.suffix in ("accepted", "rejected") and token in self._replied:
            self._replies[token] = payload
            self._replied.pop(token).set()
        if parsed.operation == "get" and parsed.suffix == "accepted":
            self.fleet.on_shadow(parsed.thing_name, payload)
            self._touch()
        elif parsed.operation == "update" and parsed.suffix == "documents":
            # The documents carry no delta: read the whole shadow again.
            await self._request_shadow(parsed.thing_name)

    async def _request_shadow(self, thing: str) -> None:
        """Ask for ``thing``'s shadow; its ``get/accepted`` answer updates the view."""
        await self._running().publish(
            ShadowTopics(thing).get, {"clientToken": new_id()}, lane=Lane.SHADOW
        )

    async def _shadow_request(
        self, thing: str, operation: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Send a shadow request and return its accepted or rejected answer."""
        token = new_id()
        self._replied[token] = replied = anyio.Event()
        topic = ShadowTopics(thing).update if operation == "update" else ShadowTopics(thing).get
        try:
            await self._running().publish(topic, {**body, "clientToken": token}, lane=Lane.SHADOW)
            with anyio.fail_after(_REQUEST_TIMEOUT):
                await replied.wait()
        except TimeoutError:
            raise ConsoleError(
                f"the shadow service did not answer within {_REQUEST_TIMEOUT:g} s; is the "
                "emulator still running?"
            ) from None
        finally:
            self._replied.pop(token, None)
        return self._replies.pop(token)


def _describe(cert_path: Path) -> dict[str, str]:
    """Subject CN, serial number and expiry of the PEM certificate at ``cert_path``."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "cn": str(names[0].value) if names else "",
        "serial": f"{cert.serial_number:x}"[:16],
        "expires": cert.not_valid_after_utc.date().isoformat(),
    }
