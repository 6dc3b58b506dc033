"""From a shadow delta to what the device reports: validate, offer once, apply, tell the truth.

:meth:`DeltaApplier.apply` takes a whole delta (the desired values reported does not show yet)
and returns the reported patch that describes what really happened:

1. A desired value already offered is skipped: it is offered again only when it changes, or
   after :meth:`DeltaApplier.forget_offered` (a reconnect). A refused or clamped value would
   otherwise come back with every delta and loop forever. A value whose handler raised is
   skipped too, but only until :meth:`DeltaApplier.retry_failed` (the next re-sync): the
   device may have been busy, and retrying at once would loop on the error report's delta.
2. Each value is validated against the desired model; invalid ones are never applied.
3. The valid ones go to the ``deltas()`` listeners and to the handler, which returns what it
   actually applied. A handler that raises applied nothing.
4. The patch is exactly what was applied, plus the error field saying what was not (or ``None``
   clearing an old error once everything applied cleanly).
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel, ValidationError

from ancsync.codec import describe_errors
from ancsync.errors import InvalidPayload
from ancsync.shadow.document import JsonObject, json_equal

__all__ = ["MAX_ERROR_CHARS", "Applied", "DeltaApplier", "DeltaHandler"]

log = logging.getLogger("ancsync.shadow")

Applied: TypeAlias = Mapping[str, Any] | BaseModel | None
"""What a delta handler returns: the values it actually applied (``None``: nothing)."""

DeltaHandler: TypeAlias = Callable[[JsonObject], Awaitable[Applied] | Applied]
"""``handler(changes) -> applied``, async or plain; ``changes`` are the valid desired values."""

MAX_ERROR_CHARS = 1024
"""The longest error text reported (``AncReportedState.last_error``'s bound)."""


class DeltaApplier:
    """Applies deltas for one shadow.

    ``desired_model`` validates desired values (``None``: all are valid); ``as_reported`` turns
    what a handler returns into a reported patch (and validates it); ``error_field`` names the
    reported key for errors (``None``: errors are only logged).
    """

    def __init__(
        self,
        *,
        desired_model: type[BaseModel] | None,
        as_reported: Callable[[Mapping[str, Any] | BaseModel], JsonObject],
        error_field: str | None,
        name: str,
    ) -> None:
        self._desired_model = desired_model
        self._as_reported = as_reported
        self._error_field = error_field
        self._name = name
        # Values settled (applied, refused or clamped), and values whose handler raised.
        self._offered: JsonObject = {}
        self._failed: JsonObject = {}
        self._listeners: list[MemoryObjectSendStream[JsonObject]] = []
        self.counts: Counter[str] = Counter()

    def listen(self, buffer: int) -> MemoryObjectReceiveStream[JsonObject]:
        """A stream of the valid desired changes offered from now on."""
        send, receive = anyio.create_memory_object_stream[JsonObject](buffer)
        self._listeners.append(send)
        return receive

    def forget_offered(self) -> None:
        """Offer every desired value again at the next delta (after a reconnect)."""
        self._offered.clear()
        self._failed.clear()

    def retry_failed(self) -> None:
        """Offer again, at the next delta, the values whose handler raised (a re-sync)."""
        self._failed.clear()

    async def apply(
        self, changes: JsonObject, handler: DeltaHandler | None, reported: JsonObject
    ) -> JsonObject:
        """The reported patch for the delta ``changes``, given the ``reported`` state now."""
        fresh = {
            key: value
            for key, value in changes.items()
            if not _holds(self._offered, key, value) and not _holds(self._failed, key, value)
        }
        if not fresh:
            return {}
        self.counts["deltas"] += 1
        for key in fresh:
            self._failed.pop(key, None)  # a new value: an older failure is no longer news
        valid, errors = self._split_valid(fresh)
        # Refused values are settled now; valid ones only once the handler has returned.
        self._offered.update({key: value for key, value in fresh.items() if key not in valid})
        applied: JsonObject = {}
        if valid:
            self._publish(valid)
            if handler is not None:
                try:
                    applied = await self._call(handler, valid)
                except Exception as exc:
                    self.counts["handler_errors"] += 1
                    self._failed.update(valid)
                    log.exception("the delta handler of %s raised; nothing applied", self._name)
                    errors.append(
                        f"desired {', '.join(sorted(valid))} not applied: the delta handler "
                        f"raised {type(exc).__name__}: {exc}"
                    )
                    valid = {}
            self._offered.update(valid)
        report = dict(applied)
        if self._error_field is not None:
            current = reported.get(self._error_field)
            message = "; ".join(errors)[:MAX_ERROR_CHARS]
            if errors and current != message:  # the same error again is not news
                report[self._error_field] = message
            elif applied and not errors and current is not None:
                report[self._error_field] = None  # applied cleanly: clear the old error
        return report

    def _split_valid(self, changes: JsonObject) -> tuple[JsonObject, list[str]]:
        """The desired values that pass the desired model, and why the others do not."""
        model = self._desired_model
        if model is None:
            return dict(changes), []
        try:
            model.model_validate(changes)
            return dict(changes), []
        except ValidationError as exc:
            bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
            self.counts["invalid_desired"] += len(bad) or 1
            reason = f"desired value not applied: {describe_errors(exc)}"
            log.warning("shadow %s: %s", self._name, reason)
        valid = {key: value for key, value in changes.items() if key not in bad}
        if not bad or not valid:
            return {}, [reason]
        try:
            model.model_validate(valid)
        except ValidationError:  # a rule across fields: refuse all of it
            return {}, [reason]
        return valid, [reason]

    async def _call(self, handler: DeltaHandler, changes: JsonObject) -> JsonObject:
        result = handler(dict(changes))
        if inspect.isawaitable(result):
            result = await result
        self.counts["deltas_handled"] += 1
        if result is None:
            log.info("the delta handler of %s applied nothing", self._name)
            return {}
        if not isinstance(result, BaseModel | Mapping):
            raise InvalidPayload(
                f"the delta handler returned {type(result).__name__}; return a dict (or model) "
                "of the values it applied, or None"
            )
        return self._as_reported(result)

    def _publish(self, changes: JsonObject) -> None:
        for listener in list(self._listeners):
            try:
                listener.send_nowait(dict(changes))
            except anyio.WouldBlock:
                self.counts["deltas_dropped"] += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._listeners.remove(listener)


def _holds(values: JsonObject, key: str, value: Any) -> bool:
    return key in values and json_equal(values[key], value)
