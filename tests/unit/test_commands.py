"""CommandDispatcher: one handler per command name, once per command_id, errors counted."""

from __future__ import annotations

from typing import Any

import pytest

from ancsync.commands import CommandDispatcher
from ancsync.models import Command, new_id, utc_now


def command(name: str, command_id: str | None = None, **params: Any) -> Command:
    return Command(
        command_id=command_id or new_id(), command=name, params=params, issued_at=utc_now()
    )


async def test_handlers_run_by_name_once_per_command_id() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    dispatcher = CommandDispatcher()

    async def set_mode(received: Command) -> None:
        seen.append(("set_mode", received.params))

    dispatcher.register("set_mode", set_mode)
    dispatcher.register("reboot", lambda received: seen.append(("reboot", received.params)))
    repeated = command("set_mode", mode="transparency")
    await dispatcher.dispatch(repeated)
    await dispatcher.dispatch(repeated)  # a QoS 1 redelivery
    await dispatcher.dispatch(command("reboot", delay=5))
    assert seen == [("set_mode", {"mode": "transparency"}), ("reboot", {"delay": 5})]
    status = dispatcher.status()
    assert (status["received"], status["handled"], status["duplicates"]) == (3, 2, 1)
    assert status["last"]["command"] == "reboot"


async def test_a_failing_handler_is_counted_and_the_next_command_still_handled() -> None:
    handled: list[str] = []
    dispatcher = CommandDispatcher()

    def calibrate(received: Command) -> None:
        if received.params.get("bad"):
            raise ValueError("no microphone")
        handled.append(received.command_id)

    dispatcher.register("calibrate", calibrate)
    await dispatcher.dispatch(command("calibrate", "c-1", bad=True))
    await dispatcher.dispatch(command("calibrate", "c-2"))
    await dispatcher.dispatch(command("self_destruct", "c-3"))
    assert handled == ["c-2"]
    status = dispatcher.status()
    assert (status["errors"], status["handled"], status["unhandled"]) == (1, 1, 1)
    assert "no microphone" in status["last_error"]
    assert "c-1" in status["last_error"]


def test_a_command_name_is_required() -> None:
    with pytest.raises(ValueError, match="empty"):
        CommandDispatcher().register("", lambda received: None)
