"""Commands from the cloud (``anc/devices/{id}/commands``) to the handler registered per name.

The orchestrator routes every valid :class:`~ancsync.models.Command` to
:meth:`CommandDispatcher.dispatch`. A command is delivered at least once (QoS 1), so a repeat of a
``command_id`` seen recently is ignored; a command nobody handles is logged and counted; a handler
that raises is logged and counted and the next command is handled as usual.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from ancsync.models import Command
from ancsync.status import CommandsStatus

__all__ = ["CommandDispatcher", "CommandHandler"]

log = logging.getLogger("ancsync.commands")

CommandHandler: TypeAlias = Callable[[Command], Awaitable[Any] | Any]
"""``handler(command)``, async or plain; runs in the commands route's own task."""

# How many command ids to remember for spotting repeats (a redelivery comes soon after).
_REMEMBERED_IDS = 256


class CommandDispatcher:
    """Calls the handler registered for each command's name, once per ``command_id``."""

    def __init__(self) -> None:
        self._handlers: dict[str, CommandHandler] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._counts: Counter[str] = Counter()
        self._last: dict[str, Any] | None = None
        self._last_error: str | None = None

    def register(self, name: str, handler: CommandHandler) -> None:
        """Handle commands called ``name`` with ``handler`` (replacing an earlier one)."""
        if not name:
            raise ValueError("a command name must not be empty")
        self._handlers[name] = handler

    async def dispatch(self, command: Command) -> None:
        """Run the handler of ``command`` (a router handler: never raises)."""
        self._counts["received"] += 1
        if command.command_id in self._seen:
            self._counts["duplicates"] += 1
            log.info("command %s (%s) repeated; ignored", command.command_id, command.command)
            return
        self._seen[command.command_id] = None
        if len(self._seen) > _REMEMBERED_IDS:
            self._seen.popitem(last=False)
        self._last = {"command": command.command, "command_id": command.command_id}
        handler = self._handlers.get(command.command)
        if handler is None:
            self._counts["unhandled"] += 1
            log.warning(
                "no handler for command %r (%s); register one with on_command(%r, handler)",
                command.command,
                command.command_id,
                command.command,
            )
            return
        try:
            result = handler(command)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._counts["errors"] += 1
            self._last_error = f"{command.command} ({command.command_id}): {exc!r}"
            log.exception("the handler of command %r raised", command.command)
        else:
            self._counts["handled"] += 1

    def status(self) -> CommandsStatus:
        """Counters, the last command and the last handler error, JSON-serialisable."""
        return {
            "handlers": sorted(self._handlers),
            "received": self._counts["received"],
            "handled": self._counts["handled"],
            "duplicates": self._counts["duplicates"],
            "unhandled": self._counts["unhandled"],
            "errors": self._counts["errors"],
            "last": self._last,
            "last_error": self._last_error,
        }
