"""What a shadow delta turns into: each value offered once, counters that keep counting, and an
error field that says exactly what was not applied (and is cleared only when there is one)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, Field, model_validator

from ancsync.shadow.deltas import DeltaApplier


class Desired(BaseModel):
    volume: int | None = Field(default=None, ge=0, le=10)
    level: int | None = Field(default=None, ge=0, le=10)
    mode: str | None = None

    @model_validator(mode="after")
    def _off_has_no_level(self) -> Desired:
        if self.mode == "off" and self.level is not None:
            raise ValueError("mode off takes no level")
        return self


def as_reported(applied: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(applied, BaseModel):
        return applied.model_dump(exclude_none=True)
    return dict(applied)


def applier(model: type[BaseModel] | None = Desired, error_field: str | None = "error") -> Any:
    return DeltaApplier(
        desired_model=model, as_reported=as_reported, error_field=error_field, name="dev-9"
    )


class Handler:
    """Applies what it is given (or raises ``fail``) and remembers each call."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def __call__(self, changes: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(changes)
        if self.fail is not None:
            raise self.fail
        return changes


async def test_a_value_already_applied_is_not_offered_again() -> None:
    deltas, handler = applier(), Handler()

    assert await deltas.apply({"volume": 3}, handler, {}) == {"volume": 3}
    assert await deltas.apply({"volume": 3}, handler, {}) == {}

    assert handler.calls == [{"volume": 3}]
    assert (deltas.counts["deltas"], deltas.counts["deltas_handled"]) == (1, 1)


async def test_every_delta_and_every_handled_delta_is_counted() -> None:
    deltas, handler = applier(), Handler()
    for volume in range(3):
        await deltas.apply({"volume": volume}, handler, {})

    assert (deltas.counts["deltas"], deltas.counts["deltas_handled"]) == (3, 3)


async def test_every_handler_failure_is_counted() -> None:
    deltas, handler = applier(), Handler(fail=RuntimeError("busy"))
    for volume in range(2):
        await deltas.apply({"volume": volume}, handler, {})

    assert deltas.counts["handler_errors"] == 2


async def test_a_failed_value_is_offered_again_once_another_value_came_in_between() -> None:
    deltas, handler = applier(), Handler(fail=RuntimeError("busy"))
    await deltas.apply({"volume": 1}, handler, {})  # fails: held back until a re-sync
    handler.fail = None
    await deltas.apply({"volume": 2}, handler, {})  # a new value: applied

    assert await deltas.apply({"volume": 1}, handler, {}) == {"volume": 1}
    assert handler.calls[-1] == {"volume": 1}


async def test_a_handler_failure_names_every_value_not_applied() -> None:
    deltas = applier()

    patch = await deltas.apply({"volume": 1, "level": 2}, Handler(fail=RuntimeError("busy")), {})

    assert patch == {
        "error": "desired level, volume not applied: the delta handler raised RuntimeError: busy"
    }


async def test_an_invalid_value_and_a_failing_handler_are_both_reported() -> None:
    deltas = applier()

    patch = await deltas.apply({"volume": 99, "level": 2}, Handler(fail=RuntimeError("busy")), {})

    invalid, failed = patch["error"].split("; ")
    assert invalid.startswith("desired value not applied:")
    assert "volume" in invalid
    assert failed == "desired level not applied: the delta handler raised RuntimeError: busy"


async def test_the_same_error_again_is_neither_repeated_nor_cleared() -> None:
    deltas = applier()
    first = await deltas.apply({"volume": 99, "level": 2}, Handler(), {})
    assert first["level"] == 2
    assert "volume" in first["error"]
    deltas.forget_offered()  # a reconnect: the refused value comes again, beside a new one

    again = await deltas.apply({"volume": 99, "level": 3}, Handler(), first)

    assert again == {"level": 3}


async def test_a_clean_apply_adds_no_error_field_when_none_was_reported() -> None:
    assert await applier().apply({"volume": 4}, Handler(), {"volume": 1}) == {"volume": 4}


async def test_a_clean_apply_clears_an_old_error() -> None:
    patch = await applier().apply({"volume": 4}, Handler(), {"error": "old"})

    assert patch == {"volume": 4, "error": None}


async def test_without_a_desired_model_every_value_reaches_the_handler() -> None:
    deltas, handler = applier(model=None), Handler()

    assert await deltas.apply({"anything": [1, 2]}, handler, {}) == {"anything": [1, 2]}
    assert handler.calls == [{"anything": [1, 2]}]


async def test_every_invalid_desired_value_is_counted() -> None:
    deltas = applier()
    await deltas.apply({"volume": 99, "level": -1}, Handler(), {})
    assert deltas.counts["invalid_desired"] == 2

    await deltas.apply({"volume": 98}, Handler(), {})
    assert deltas.counts["invalid_desired"] == 3


async def test_a_rule_across_fields_refuses_the_delta_and_counts_once() -> None:
    deltas, handler = applier(), Handler()

    patch = await deltas.apply({"mode": "off", "level": 2}, handler, {})

    assert handler.calls == []
    assert "mode off takes no level" in patch["error"]
    assert deltas.counts["invalid_desired"] == 1


async def test_a_refused_desired_value_is_logged_naming_the_shadow_and_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="ancsync.shadow"):
        await applier().apply({"volume": 99}, Handler(), {})

    [warning] = caplog.records
    assert "dev-9" in warning.getMessage()
    assert "volume" in warning.getMessage()


async def test_a_handler_returning_the_wrong_type_is_reported_with_the_fix() -> None:
    deltas = applier()

    patch = await deltas.apply({"volume": 1}, lambda changes: [1], {})

    assert patch["error"].endswith(
        "the delta handler returned list; return a dict (or model) of the values it applied, "
        "or None"
    )
    assert deltas.counts["handler_errors"] == 1


async def test_every_delta_a_full_listener_misses_is_counted() -> None:
    deltas = applier()
    with deltas.listen(0):
        for volume in range(3):
            await deltas.apply({"volume": volume}, Handler(), {})

    assert deltas.counts["deltas_dropped"] == 3


async def test_a_closed_listener_is_let_go_and_the_others_still_get_the_changes() -> None:
    deltas = applier()
    gone = deltas.listen(1)
    kept = deltas.listen(1)
    gone.close()

    assert await deltas.apply({"volume": 5}, Handler(), {}) == {"volume": 5}
    assert await deltas.apply({"volume": 6}, Handler(), {}) == {"volume": 6}

    with anyio.fail_after(5):
        assert await kept.receive() == {"volume": 5}
