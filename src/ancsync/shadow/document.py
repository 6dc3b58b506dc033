"""Shadow documents as plain JSON values: delta, merge, limits, and the device's local copy.

Pure and synchronous, no I/O: the rules of ``shared/reference/aws-iot-shadow.md`` that the device
side needs, so :mod:`ancsync.shadow.sync` can be read as a state machine and this module tested
on its own. The emulator's shadow service follows the same rules on the server side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from pydantic import BaseModel, ValidationError

from ancsync.codec import describe_errors
from ancsync.errors import InvalidPayload, PayloadTooLarge

__all__ = [
    "MAX_DEPTH",
    "MAX_STATE_BYTES",
    "JsonObject",
    "LocalShadow",
    "ShadowState",
    "as_patch",
    "check_state_limits",
    "combine",
    "delta",
    "depth",
    "json_equal",
    "merge",
]

JsonObject = dict[str, Any]

MAX_STATE_BYTES = 8192
"""AWS's limit for ``desired`` plus ``reported`` after a merge, compact JSON, without metadata."""

MAX_DEPTH = 6
"""AWS's nesting limit inside ``desired`` or ``reported``, the section object counting as 1."""


def json_equal(left: Any, right: Any) -> bool:
    """Equality as JSON sees it: ``1`` equals ``1.0``, but ``true`` is not ``1``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    return type(left) is type(right) and bool(left == right)


def delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """What ``desired`` asks that ``reported`` does not show yet (the shadow's ``delta``).

    Keys only in ``reported`` do not count; nested objects are compared key by key and an equal
    nested object gives no key at all; arrays are compared whole.
    """
    changes: JsonObject = {}
    for key, wanted in desired.items():
        if key not in reported:
            changes[key] = wanted
        elif isinstance(wanted, dict) and isinstance(reported[key], dict):
            nested = delta(wanted, reported[key])
            if nested:
                changes[key] = nested
        elif not json_equal(wanted, reported[key]):
            changes[key] = wanted
    return changes


def merge(stored: JsonObject, patch: JsonObject) -> JsonObject:
    """``patch`` merged into ``stored`` as the shadow service does; returns a new object.

    ``null`` deletes a key, an object merges into an object, anything else replaces; an object
    left empty disappears. ``stored`` is not modified.
    """
    result = dict(stored)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            old = result.get(key)
            nested = merge(old if isinstance(old, dict) else {}, value)
            if nested:
                result[key] = nested
            else:
                result.pop(key, None)
        else:
            result[key] = value
    return result


def combine(older: JsonObject, newer: JsonObject) -> JsonObject:
    """Two patches as one, the newer value winning per key: the coalescing of reported updates.

    Unlike :func:`merge`, ``null`` is kept (it must still travel to delete the key).
    """
    result = dict(older)
    for key, value in newer.items():
        old = result.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            result[key] = combine(old, value)
        else:
            result[key] = value
    return result


def as_patch(
    state: Mapping[str, Any] | BaseModel, model: type[BaseModel] | None, what: str
) -> JsonObject:
    """``state`` (a dict or a model) as a JSON patch, validated against ``model`` if given.

    Only the keys given are kept, and ``None`` stays (as JSON ``null`` it deletes the key).

    Raises:
        InvalidPayload: ``state`` does not fit ``model``; names each bad field and value.
    """
    if isinstance(state, BaseModel):
        if model is not None and not isinstance(state, model):
            raise InvalidPayload(f"{what} must be a {model.__name__}, got {type(state).__name__}")
        return state.model_dump(mode="json", exclude_unset=True)
    if not isinstance(state, Mapping):
        raise InvalidPayload(f"{what} must be a dict (or a model), got {type(state).__name__}")
    if model is None:
        return dict(state)
    try:
        return model.model_validate(dict(state)).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        raise InvalidPayload(f"{what} is invalid: {describe_errors(exc)}") from exc


def depth(value: Any) -> int:
    """Levels of objects and arrays in ``value`` (a scalar is 0, ``{}`` is 1)."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def check_state_limits(
    state: JsonObject, *, max_bytes: int = MAX_STATE_BYTES, max_depth: int = MAX_DEPTH
) -> None:
    """Refuse a state document (``{"desired": ..., "reported": ...}``) AWS would reject.

    Raises:
        PayloadTooLarge: the compact JSON is over ``max_bytes`` (AWS answers 413).
        InvalidPayload: a section nests deeper than ``max_depth`` levels (AWS answers 400).
    """
    for name, section in state.items():
        levels = depth(section)
        if levels > max_depth:
            raise InvalidPayload(
                f"shadow {name} state nests {levels} levels deep, over the AWS IoT limit of "
                f"{max_depth} (the {name} object itself is level 1); flatten the state"
            )
    size = len(orjson.dumps(state))
    if size > max_bytes:
        raise PayloadTooLarge("shadow state document (desired + reported)", size, max_bytes)


class ShadowState(dict[str, Any]):
    """A snapshot of the device's copy of its shadow, as :meth:`DeviceShadowSync.get_state`
    returns it.

    ``version`` is the shadow version this copy reflects (0 before anything is known);
    ``exists`` is false until the shadow was read or created, and after it is deleted.
    It is a plain dict too (``json.dumps(state)`` works, as it did with the previous SDK), with
    the same five keys readable as attributes.
    """

    def __init__(
        self,
        *,
        desired: JsonObject,
        reported: JsonObject,
        delta: JsonObject,
        version: int,
        exists: bool,
    ) -> None:
        super().__init__(
            desired=desired, reported=reported, delta=delta, version=version, exists=exists
        )

    @property
    def desired(self) -> JsonObject:
        """The desired section."""
        return cast(JsonObject, self["desired"])

    @property
    def reported(self) -> JsonObject:
        """The reported section."""
        return cast(JsonObject, self["reported"])

    @property
    def delta(self) -> JsonObject:
        """``delta(desired, reported)``: what the device has yet to apply."""
        return cast(JsonObject, self["delta"])

    @property
    def version(self) -> int:
        """The shadow version this copy reflects."""
        return cast(int, self["version"])

    @property
    def exists(self) -> bool:
        """Whether the shadow exists as far as this copy knows."""
        return cast(bool, self["exists"])


@dataclass
class LocalShadow:
    """The device's copy of one shadow, kept in step with the service's replies.

    Every ``apply_*`` method takes a reply document and returns whether the copy changed. A reply
    older than the copy is ignored, so replies may arrive in any order.
    """

    desired: JsonObject = field(default_factory=dict)
    reported: JsonObject = field(default_factory=dict)
    version: int = 0
    exists: bool = False

    def snapshot(self) -> ShadowState:
        """An immutable view, with the delta computed from desired and reported."""
        return ShadowState(
            desired=dict(self.desired),
            reported=dict(self.reported),
            delta=delta(self.desired, self.reported),
            version=self.version,
            exists=self.exists,
        )

    def state_with(
        self, *, desired: JsonObject | None = None, reported: JsonObject | None = None
    ) -> JsonObject:
        """The state document the service would hold after merging these patches."""
        result: JsonObject = {}
        for name, patch in (("desired", desired), ("reported", reported)):
            merged = merge(getattr(self, name), patch or {})
            if merged:
                result[name] = merged
        return result

    def apply_get(self, document: JsonObject, *, force: bool = False) -> bool:
        """``get/accepted``: the full document replaces the copy unless it is older.

        ``force``: replace it even so (the reply to this device's own get is the service's
        word on what the shadow is now).
        """
        version = _version_of(document)
        if version is None or (version < self.version and not force):
            return False
        state = document.get("state") or {}
        self._replace(state, version)
        return True

    def apply_documents(self, document: JsonObject) -> bool:
        """``update/documents``: adopt ``current`` if it is newer than the copy."""
        current = document.get("current")
        if not isinstance(current, dict):
            return False
        version = _version_of(current)
        if version is None or version <= self.version:
            return False
        self._replace(current.get("state") or {}, version)
        return True

    def apply_accepted(self, document: JsonObject) -> bool:
        """``update/accepted``: merge the echoed state, only if it is the next version.

        A gap means an update this copy has not seen; ``update/documents`` or the next get
        brings the whole document.
        """
        version = _version_of(document)
        if version is None or version != self.version + 1:
            return False
        state = document.get("state")
        if state is None:  # {"state": null} cleared both sections
            self.desired, self.reported = {}, {}
        elif isinstance(state, dict):
            for name in ("desired", "reported"):
                if name not in state:
                    continue
                section = state[name]
                merged = merge(getattr(self, name), section) if isinstance(section, dict) else {}
                setattr(self, name, merged)
        self.version, self.exists = version, True
        return True

    def apply_deleted(self, document: JsonObject) -> bool:
        """``delete/accepted``: the shadow is gone; its version number is kept."""
        version = _version_of(document)
        if version is None or version < self.version:
            return False
        self.desired, self.reported = {}, {}
        self.version, self.exists = version, False
        return True

    def apply_missing(self) -> None:
        """A get found no shadow (404): the copy is empty; the version number is kept."""
        self.desired, self.reported = {}, {}
        self.exists = False

    def _replace(self, state: Any, version: int) -> None:
        state = state if isinstance(state, dict) else {}
        desired, reported = state.get("desired"), state.get("reported")
        self.desired = dict(desired) if isinstance(desired, dict) else {}
        self.reported = dict(reported) if isinstance(reported, dict) else {}
        self.version, self.exists = version, True


def _version_of(document: JsonObject) -> int | None:
    version = document.get("version")
    # bool is an int in Python; a version is never true/false.
    return version if isinstance(version, int) and not isinstance(version, bool) else None
