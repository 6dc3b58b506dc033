"""The JSON rules of a shadow document on the service side: equality, delta, merge, metadata.

Written from ``shared/reference/aws-iot-shadow.md`` (sections 3.1 to 3.3) and kept apart from the
SDK's own shadow code on purpose: the emulator is the independent oracle the SDK is tested
against, so the two must not share an implementation (a property test compares them).
Stored documents are never mutated: a merge builds new dicts along the path it touches and
shares the untouched subtrees.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JsonObject", "delta", "merge", "project", "same_json", "stamp"]

JsonObject = dict[str, Any]


def _json_type(value: Any) -> str:
    """The JSON type of a decoded value (``true`` is a boolean, never a number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def same_json(left: Any, right: Any) -> bool:
    """Whether two decoded JSON values are equal as the shadow service compares them.

    Values of different JSON types differ; numbers compare by value, so ``1`` equals ``1.0``;
    arrays compare element by element in order, objects key by key.
    """
    kind = _json_type(left)
    if kind != _json_type(right):
        return False
    if kind == "array":
        return len(left) == len(right) and all(
            same_json(a, b) for a, b in zip(left, right, strict=True)
        )
    if kind == "object":
        return set(left) == set(right) and all(same_json(left[key], right[key]) for key in left)
    return bool(left == right)


def delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """The keys of ``desired`` that ``reported`` lacks or holds otherwise.

    Objects on both sides are compared key by key, and an equal nested object gives no key;
    anything else (arrays included) is compared whole. Keys only in ``reported`` are ignored.
    """
    result: JsonObject = {}
    for key, wanted in desired.items():
        if key in reported:
            actual = reported[key]
            if isinstance(wanted, dict) and isinstance(actual, dict):
                nested = delta(wanted, actual)
                if nested:
                    result[key] = nested
                continue
            if same_json(wanted, actual):
                continue
        result[key] = wanted
    return result


def stamp(value: Any, now: int) -> Any:
    """Metadata for ``value``: its shape with each leaf as ``{"timestamp": now}``.

    An array is a leaf with one timestamp per element.
    """
    if isinstance(value, dict):
        return {key: stamp(item, now) for key, item in value.items()}
    if isinstance(value, list):
        return [{"timestamp": now} for _ in value]
    return {"timestamp": now}


def merge(
    stored: JsonObject, metadata: JsonObject, patch: JsonObject, now: int
) -> tuple[JsonObject, JsonObject]:
    """``patch`` deep-merged into a stored section: the new state and metadata.

    ``null`` deletes a key and its metadata; an object merges into an object (into nothing,
    if the stored value is not one); anything else replaces the stored value and is stamped
    ``now``. An object left empty disappears.
    """
    state, stamps = dict(stored), dict(metadata)
    for key, value in patch.items():
        if isinstance(value, dict):
            old = state.get(key)
            if isinstance(old, dict):
                nested, nested_stamps = merge(old, stamps.get(key, {}), value, now)
            else:  # absent, or a type change: the object replaces the old value
                nested, nested_stamps = merge({}, {}, value, now)
            if nested:
                state[key], stamps[key] = nested, nested_stamps
                continue
            value = None  # an object that ends up empty is removed like a null
        if value is None:
            state.pop(key, None)
            stamps.pop(key, None)
        else:
            state[key], stamps[key] = value, stamp(value, now)
    return state, stamps


def project(metadata: JsonObject, changes: JsonObject) -> JsonObject:
    """The part of ``metadata`` that covers the leaves of ``changes`` (same shape)."""
    return {
        key: project(metadata[key], value) if isinstance(value, dict) else metadata[key]
        for key, value in changes.items()
    }
