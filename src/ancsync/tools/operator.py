"""The cloud side of a device, over MQTT: read a Device Shadow, set desired state, watch it.

``ancsync shadow get|update|watch`` and the demo's cloud operator use :class:`ShadowOperator`.
It connects with an *operator* certificate (the emulator generates one under
``<certs-dir>/operator/``; on AWS, any certificate whose policy allows the shadow topics of the
things it manages) and a client id that is not a thing name, so it never takes a device's
connection away.

It is built on the SDK's own parts: an :class:`~ancsync.connection.IoTConnection` for the
connection and a :class:`~ancsync.shadow.DeviceShadowSync` pointed at another thing's shadow for
the requests (clientToken correlation, retries, version conflicts). Only the device side runs the
sync task; the operator sends requests and reads ``update/documents``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel

from ancsync.config import Settings
from ancsync.connection import IoTConnection
from ancsync.lifecycle import Component
from ancsync.models import AncDesiredState, new_id
from ancsync.shadow import DeviceShadowSync, ShadowState
from ancsync.shadow.document import delta

__all__ = ["OperatorCredentials", "ShadowDocument", "ShadowOperator", "operator_client_id"]

log = logging.getLogger("ancsync.tools.operator")


def operator_client_id() -> str:
    """A fresh client id for an operator tool: two tools never disconnect each other."""
    return f"ancsync-operator-{new_id()[:8]}"


@dataclass(frozen=True)
class OperatorCredentials:
    """Where and as whom the operator connects.

    ``cert_path``/``key_path`` are the operator's certificate; ``tls=False`` is plain MQTT to a
    loopback emulator started with ``--no-tls``.
    """

    endpoint: str
    port: int
    cert_path: Path | None
    key_path: Path | None
    root_ca_path: Path | None
    client_id: str
    tls: bool = True

    @classmethod
    def from_certs_dir(
        cls, certs_dir: Path, endpoint: str = "127.0.0.1", port: int = 8883, **options: Any
    ) -> OperatorCredentials:
        """The operator certificate of an emulator certificate directory (``ancsync certs``)."""
        return cls(
            endpoint=endpoint,
            port=port,
            cert_path=certs_dir / "operator" / "cert.pem",
            key_path=certs_dir / "operator" / "private.key",
            root_ca_path=certs_dir / "ca.pem",
            client_id=options.pop("client_id", None) or operator_client_id(),
            **options,
        )

    def connection(self, **options: Any) -> IoTConnection:
        """An :class:`IoTConnection` with these credentials (not started).

        Raises:
            ConfigError: a file is missing or a value is not allowed (named).
        """
        settings = Settings.load(
            thing_name=self.client_id,
            endpoint=self.endpoint,
            port=self.port,
            tls=self.tls,
            cert_path=self.cert_path if self.tls else None,
            key_path=self.key_path if self.tls else None,
            root_ca_path=self.root_ca_path if self.tls else None,
            persistent_session=False,
        )
        # Not a device: no retained status topic of its own, no last will.
        return IoTConnection(settings=settings, announce_status=False, **options)


@dataclass(frozen=True)
class ShadowDocument:
    """One shadow state as the operator sees it: what ``shadow get`` and ``watch`` print."""

    thing_name: str
    shadow_name: str | None
    version: int
    exists: bool
    desired: dict[str, Any]
    reported: dict[str, Any]
    delta: dict[str, Any]

    @classmethod
    def of(cls, thing_name: str, shadow_name: str | None, state: ShadowState) -> ShadowDocument:
        return cls(
            thing_name,
            shadow_name,
            state.version,
            state.exists,
            state.desired,
            state.reported,
            state.delta,
        )

    @property
    def converged(self) -> bool:
        """Whether every desired value is reported as it is desired (the delta is empty)."""
        return not self.delta

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        return {
            "thing": self.thing_name,
            "shadow": self.shadow_name or "classic",
            "version": self.version,
            "exists": self.exists,
            "desired": self.desired,
            "reported": self.reported,
            "delta": self.delta,
        }


class ShadowOperator(Component):
    """Read and change one thing's Device Shadow from the cloud side, over ``connection``.

    ::

        async with ShadowOperator(credentials.connection(), "anc-device-001") as operator:
            print(await operator.get())
            await operator.update_desired({"anc_intensity": 0.9})
            with operator.watch() as documents:
                async for document in documents: ...

    Desired values are checked against ``desired_model`` (the ANC desired state for the classic
    shadow; pass ``None`` to send anything). ``request_timeout`` bounds each request attempt.
    """

    def __init__(
        self,
        connection: IoTConnection,
        thing_name: str,
        shadow_name: str | None = None,
        *,
        desired_model: type[BaseModel] | None = AncDesiredState,
        request_timeout: float = 5.0,
        connect_timeout: float = 15.0,
    ) -> None:
        super().__init__()
        self.connection = connection
        self.thing_name = thing_name
        self.shadow_name = shadow_name
        self._connect_timeout = connect_timeout
        self._shadow = DeviceShadowSync(
            connection,
            thing_name,
            shadow_name,
            model=None,
            desired_model=desired_model,
            request_timeout=request_timeout,
            error_field=None,
        )
        self._watchers: list[MemoryObjectSendStream[ShadowDocument]] = []
        # The shadow's own filter, not update/documents alone: overlapping subscriptions would
        # make the broker deliver every document twice.
        connection.subscribe(self._shadow.topics.all_responses, self._on_documents)

    name = "shadow-operator"

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Connect (raising a clear error if that fails); ready once the shadow was read."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.connection.run)
            await self.connection.wait_connected(self._connect_timeout)
            # Read it once, so the copy knows the version and updates can carry it.
            await self._shadow.get()
            task_status.started()

    async def _shutdown(self) -> None:
        for watcher in self._watchers:
            watcher.close()

    async def get(self) -> ShadowDocument:
        """Read the shadow from the service (a missing shadow has ``exists`` false).

        Raises:
            ShadowRejected: the service refused the request (e.g. 403 without permission).
            ShadowTimeout: no answer after every attempt.
        """
        return self._document(await self._shadow.get())

    async def update_desired(self, desired: Mapping[str, Any]) -> ShadowDocument:
        """Set desired values (``None`` deletes a key) and wait until the service accepted them.

        Raises:
            InvalidPayload: a value does not fit ``desired_model`` (named); nothing was sent.
            ShadowRejected, ShadowTimeout: as :meth:`get`.
        """
        return self._document(await self._shadow.update_desired(desired))

    def current(self) -> ShadowDocument:
        """The operator's latest copy, without a request."""
        return self._document(self._shadow.get_state())

    def watch(self, buffer: int = 100) -> MemoryObjectReceiveStream[ShadowDocument]:
        """Every accepted change of the shadow from now on (its ``update/documents``).

        ``with operator.watch() as documents: async for document in documents: ...``
        """
        send, receive = anyio.create_memory_object_stream[ShadowDocument](buffer)
        self._watchers.append(send)
        return receive

    def _document(self, state: ShadowState) -> ShadowDocument:
        return ShadowDocument.of(self.thing_name, self.shadow_name, state)

    def _on_documents(self, topic: str, document: Any) -> None:
        if topic != self._shadow.topics.update_documents:
            return
        current = document.get("current") if isinstance(document, dict) else None
        if not isinstance(current, dict):
            return
        state = current.get("state")
        if not isinstance(state, dict):
            state = {}
        desired = state.get("desired") or {}
        reported = state.get("reported") or {}
        snapshot = ShadowDocument(
            self.thing_name,
            self.shadow_name,
            int(current.get("version", 0)),
            True,
            dict(desired),
            dict(reported),
            delta(dict(desired), dict(reported)),
        )
        for watcher in list(self._watchers):
            try:
                watcher.send_nowait(snapshot)
            except anyio.WouldBlock:
                log.warning("a shadow watcher is too far behind; it misses a document")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._watchers.remove(watcher)
