"""The client side of the emulator's operator APIs over MQTT (Jobs, certificates).

Each request is a JSON object published on ``{prefix}/{operation}`` with a fresh
``clientToken``; the emulator answers on ``{prefix}/{operation}/accepted`` (``{"result": ...}``)
or ``.../rejected`` (``code``, ``message``) with the same token. :class:`EmulatorOperatorApi`
correlates the two; :class:`~ancsync.tools.jobs_operator.EmulatorJobsOperator` and
:class:`~ancsync.tools.certs_operator.EmulatorCertificatesOperator` name the operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ancsync.connection import IoTConnection
from ancsync.lifecycle import Component
from ancsync.models import new_id

__all__ = ["EmulatorOperatorApi"]


class EmulatorOperatorApi(Component):
    """Requests to one operator API (``prefix``) over an operator :class:`IoTConnection` (not
    started). A rejection raises ``rejected(code, message)``; no answer within ``timeout``
    seconds raises TimeoutError."""

    name = "operator-api"

    def __init__(
        self,
        connection: IoTConnection,
        prefix: str,
        rejected: Callable[[str, str], Exception],
        *,
        timeout: float = 15.0,
    ) -> None:
        super().__init__()
        self._connection = connection
        self._prefix = prefix
        self._rejected = rejected
        self.timeout = timeout
        self._waiting: dict[str, tuple[anyio.Event, list[tuple[str, Any]]]] = {}

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Connect (raising a clear error if that fails); ready once connected."""
        self._connection.subscribe(f"{self._prefix}/+/+", self._on_reply)
        async with anyio.create_task_group() as tg:
            await tg.start(self._connection.run)
            await self._connection.wait_connected(timeout=self.timeout)
            task_status.started()

    def _on_reply(self, topic: str, payload: Any) -> None:
        if isinstance(payload, dict):
            waiter = self._waiting.get(str(payload.get("clientToken")))
            if waiter is not None:
                waiter[1].append((topic.rsplit("/", 1)[-1], payload))
                waiter[0].set()

    async def _call(self, operation: str, body: dict[str, Any]) -> Any:
        """Send ``body`` to ``operation`` and return the accepted reply's ``result``."""
        token = new_id()
        event, answer = anyio.Event(), list[tuple[str, Any]]()
        self._waiting[token] = (event, answer)
        try:
            topic = f"{self._prefix}/{operation}"
            await self._connection.publish(topic, {**body, "clientToken": token})
            with anyio.fail_after(self.timeout):
                await event.wait()
        finally:
            self._waiting.pop(token, None)
        outcome, reply = answer[0]
        if outcome != "accepted":
            raise self._rejected(str(reply.get("code")), str(reply.get("message")))
        return reply["result"]
