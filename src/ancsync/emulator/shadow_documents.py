"""The Device Shadow document core of the emulator: pure, synchronous, no I/O.

It implements ``shared/reference/aws-iot-shadow.md`` (docs/emulator.md summarises it): a request
payload goes in as bytes, the replies the AWS Device Shadow service would publish come out as
:class:`ShadowReply` values (a topic suffix and a JSON document). The MQTT layer
(:mod:`ancsync.emulator.shadows`) only moves bytes between the broker and this module, so every rule
of the reference page can be tested here without a network and again over MQTT. The JSON rules
themselves (equality, delta, merge, metadata) are in :mod:`ancsync.emulator.shadow_json`.

Stored documents are never mutated in place, so a reply or snapshot handed out earlier stays valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ancsync.emulator.shadow_json import JsonObject, delta, merge, project, stamp

__all__ = [
    "SECTIONS",
    "ShadowError",
    "ShadowLimits",
    "ShadowReply",
    "ShadowState",
    "ShadowStore",
    "client_token_of",
]

Operation = Literal["get", "update", "delete"]

SECTIONS = ("desired", "reported")
_NOT_UTF8 = "Unsupported documented encoding; supported encoding is UTF-8"  # sic, AWS's text


@dataclass(frozen=True)
class ShadowLimits:
    """The limits and open choices of the shadow service; the defaults are AWS's.

    ``max_depth`` counts the ``desired``/``reported`` object as level 1 and only objects and
    arrays as levels. The three booleans settle points the reference page marks **[open]**.
    """

    max_state_bytes: int = 8192
    max_depth: int = 6
    max_client_token_bytes: int = 64
    max_in_flight: int = 10
    max_requests_per_second: int | None = 20
    empty_update_bumps_version: bool = True
    version_on_missing_shadow_conflicts: bool = True
    delta_metadata_in_get: bool = False


class ShadowError(Exception):
    """A request the service rejects: the AWS error ``code`` and exact ``message``."""

    def __init__(self, code: int, message: str, *, timestamped: bool = True) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        # Real 404 replies carry no timestamp; every other error does.
        self.timestamped = timestamped


@dataclass(frozen=True)
class ShadowReply:
    """One message the service publishes: ``suffix`` such as ``"update/delta"`` and its document."""

    suffix: str
    document: JsonObject

    @property
    def payload(self) -> bytes:
        """The document as compact JSON bytes."""
        return orjson.dumps(self.document)


@dataclass
class ShadowState:
    """What the service holds for one shadow.

    ``state`` and ``metadata`` map ``"desired"``/``"reported"`` to their (non-empty) objects;
    a missing key means the section is absent. ``exists`` is false after a delete, when only the
    ``version`` is kept so a re-created shadow continues from it.
    """

    version: int = 0
    exists: bool = False
    state: JsonObject = field(default_factory=dict)
    metadata: JsonObject = field(default_factory=dict)

    def delta(self) -> JsonObject:
        """The current delta between desired and reported (empty if none)."""
        return delta(self.state.get("desired", {}), self.state.get("reported", {}))

    def snapshot(self) -> JsonObject:
        """``{"state", "metadata", "version"}`` as in an ``update/documents`` message."""
        return {"state": self.state, "metadata": self.metadata, "version": self.version}


def _too_deep(value: Any, levels_left: int) -> bool:
    """Whether ``value`` nests objects/arrays deeper than ``levels_left`` (bounded recursion)."""
    if not isinstance(value, dict | list):
        return False
    if levels_left == 0:
        return True
    children = value.values() if isinstance(value, dict) else value
    return any(_too_deep(child, levels_left - 1) for child in children)


def _array_with_null(value: Any) -> bool:
    """Whether ``value`` holds an array with a ``null`` element anywhere inside it."""
    if isinstance(value, dict):
        return any(_array_with_null(child) for child in value.values())
    if isinstance(value, list):
        return any(child is None or _array_with_null(child) for child in value)
    return False


def _decode(payload: bytes | bytearray, *, allow_empty: bool) -> JsonObject:
    """Bytes to a JSON object, or the AWS 415/400 error."""
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowError(
            415, "Unsupported documented encoding; supported encoding is UTF-8"
        ) from None
    if allow_empty and not text.strip():
        return {}
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ShadowError(400, "Invalid JSON") from None
    if not isinstance(document, dict):
        raise ShadowError(400, "Invalid JSON")
    return document


def _checked_token(document: JsonObject, limits: ShadowLimits) -> str | None:
    """The request's ``clientToken``, or ``None``; 400 if it is not a short enough string."""
    if "clientToken" not in document:
        return None
    token = document["clientToken"]
    if not isinstance(token, str) or len(token.encode("utf-8")) > limits.max_client_token_bytes:
        raise ShadowError(400, "Invalid clientToken")
    return token


def client_token_of(payload: bytes | bytearray, limits: ShadowLimits | None = None) -> str | None:
    """The valid ``clientToken`` of a request payload, or ``None`` if it has none or is malformed.

    For replies made without looking at the rest of the request (429, 500, delete).
    """
    try:
        return _checked_token(_decode(payload, allow_empty=True), limits or ShadowLimits())
    except ShadowError:
        return None


def _with_token(document: JsonObject, token: str | None) -> JsonObject:
    if token is not None:
        document["clientToken"] = token
    return document


class ShadowStore:
    """Every shadow of every thing, and the request handling of the Device Shadow service.

    ``now`` is the caller's clock in integer epoch seconds, so tests control time.
    """

    def __init__(self, limits: ShadowLimits | None = None) -> None:
        self.limits = limits or ShadowLimits()
        self._shadows: dict[tuple[str, str | None], ShadowState] = {}

    def shadow(self, thing_name: str, shadow_name: str | None = None) -> ShadowState | None:
        """The stored shadow, or ``None`` if it does not exist (never created, or deleted)."""
        found = self._shadows.get((thing_name, shadow_name))
        return found if found is not None and found.exists else None

    def handle(
        self,
        operation: Operation,
        thing_name: str,
        shadow_name: str | None,
        payload: bytes | bytearray,
        now: int,
    ) -> list[ShadowReply]:
        """Handle one request published on ``.../get``, ``/update`` or ``/delete``."""
        if operation == "get":
            return [self.get(thing_name, shadow_name, payload, now)]
        if operation == "update":
            return self.update(thing_name, shadow_name, payload, now)
        return [self.delete(thing_name, shadow_name, payload, now)]

    def rejection(
        self, operation: Operation, error: ShadowError, token: str | None, now: int
    ) -> ShadowReply:
        """The ``{operation}/rejected`` reply for ``error`` (also used by the service: 429, 500)."""
        document: JsonObject = {"code": error.code, "message": error.message}
        if error.timestamped:
            document["timestamp"] = now
        return ShadowReply(f"{operation}/rejected", _with_token(document, token))

    def _not_found(self, thing_name: str, shadow_name: str | None) -> ShadowError:
        name = thing_name if shadow_name is None else f"{thing_name}~{shadow_name}"
        return ShadowError(404, f"No shadow exists with name: '{name}'", timestamped=False)

    def get(
        self, thing_name: str, shadow_name: str | None, payload: bytes | bytearray, now: int
    ) -> ShadowReply:
        """``get/accepted`` with the full document, or ``get/rejected``."""
        token = None
        try:
            token = _checked_token(_decode(payload, allow_empty=True), self.limits)
            shadow = self.shadow(thing_name, shadow_name)
            if shadow is None:
                raise self._not_found(thing_name, shadow_name)
        except ShadowError as error:
            return self.rejection("get", error, token, now)
        state = dict(shadow.state)
        metadata = dict(shadow.metadata)
        current_delta = shadow.delta()
        if current_delta:
            state["delta"] = current_delta
            if self.limits.delta_metadata_in_get:
                metadata["delta"] = project(shadow.metadata["desired"], current_delta)
        document: JsonObject = {"state": state, "metadata": metadata}
        document.update(version=shadow.version, timestamp=now)
        return ShadowReply("get/accepted", _with_token(document, token))

    def delete(
        self, thing_name: str, shadow_name: str | None, payload: bytes | bytearray, now: int
    ) -> ShadowReply:
        """``delete/accepted`` keeping the version number, or ``delete/rejected`` (404)."""
        token = client_token_of(payload, self.limits)  # the payload is otherwise ignored
        shadow = self.shadow(thing_name, shadow_name)
        if shadow is None:
            return self.rejection("delete", self._not_found(thing_name, shadow_name), token, now)
        self._shadows[(thing_name, shadow_name)] = ShadowState(version=shadow.version)
        document: JsonObject = {"version": shadow.version, "timestamp": now}
        return ShadowReply("delete/accepted", _with_token(document, token))

    def update(
        self, thing_name: str, shadow_name: str | None, payload: bytes | bytearray, now: int
    ) -> list[ShadowReply]:
        """``update/accepted`` then ``update/delta`` (if any) then ``update/documents``.

        Or a single ``update/rejected``; a rejected update changes nothing.
        """
        token = None
        try:
            request = _decode(payload, allow_empty=False)
            token = _checked_token(request, self.limits)
            return self._apply_update(thing_name, shadow_name, request, token, now)
        except ShadowError as error:
            return [self.rejection("update", error, token, now)]

    def _check_request(self, request: JsonObject) -> tuple[JsonObject | None, int | None]:
        """Validate an update request as AWS IoT does; return its state and version."""
        version = request.get("version")
        if "version" in request and type(version) is not int:
            raise ShadowError(400, "Invalid version")
        if "state" not in request:
            raise ShadowError(400, "Missing required node: state")
        state = request["state"]
        if state is None:
            return None, version
        if not isinstance(state, dict):
            raise ShadowError(400, "State node must be an object")
        for name, section in state.items():
            if name not in SECTIONS:
                raise ShadowError(400, f"State contains an invalid node: '{name}'")
            if section is not None and not isinstance(section, dict):
                raise ShadowError(400, f"{name.capitalize()} node must be an object")
            if _too_deep(section, self.limits.max_depth):
                raise ShadowError(
                    400,
                    f"JSON contains too many levels of nesting; maximum is {self.limits.max_depth}",
                )
            if _array_with_null(section):
                # AWS documents no text for this case; its generic 400 is the closest.
                raise ShadowError(400, "Invalid JSON")
        return state, version

    def _apply_update(
        self,
        thing_name: str,
        shadow_name: str | None,
        request: JsonObject,
        token: str | None,
        now: int,
    ) -> list[ShadowReply]:
        state_patch, version = self._check_request(request)
        key = (thing_name, shadow_name)
        stored = self._shadows.get(key) or ShadowState()
        if version is not None:
            if stored.exists and version != stored.version:
                raise ShadowError(409, "Version conflict")
            if not stored.exists and self.limits.version_on_missing_shadow_conflicts:
                raise ShadowError(409, "Version conflict")

        state, metadata = dict(stored.state), dict(stored.metadata)
        for name in SECTIONS:
            patch = None if state_patch is None else state_patch.get(name, {})
            if patch is None:  # `"desired": null` or `"state": null` drops the section
                state.pop(name, None)
                metadata.pop(name, None)
                continue
            merged, stamps = merge(state.get(name, {}), metadata.get(name, {}), patch, now)
            if merged:
                state[name], metadata[name] = merged, stamps
            else:
                state.pop(name, None)
                metadata.pop(name, None)
        size = len(orjson.dumps(state))
        if size > self.limits.max_state_bytes:
            raise ShadowError(413, "The payload exceeds the maximum size allowed")

        unchanged = state_patch == {} and not self.limits.empty_update_bumps_version
        if unchanged and stored.exists:
            accepted: JsonObject = {"state": {}, "metadata": {}}
            accepted.update(version=stored.version, timestamp=now)
            return [ShadowReply("update/accepted", _with_token(accepted, token))]

        current = ShadowState(stored.version + 1, exists=True, state=state, metadata=metadata)
        self._shadows[key] = current
        echo_metadata = {"timestamp": now} if state_patch is None else stamp(state_patch, now)
        accepted = {"state": state_patch, "metadata": echo_metadata}
        accepted.update(version=current.version, timestamp=now)
        replies = [ShadowReply("update/accepted", _with_token(accepted, token))]

        current_delta = current.delta()
        if current_delta:
            delta_document: JsonObject = {"version": current.version, "timestamp": now}
            delta_document["state"] = current_delta
            delta_document["metadata"] = project(metadata["desired"], current_delta)
            replies.append(ShadowReply("update/delta", _with_token(delta_document, token)))

        documents: JsonObject = {
            "previous": stored.snapshot() if stored.exists else None,
            "current": current.snapshot(),
            "timestamp": now,
        }
        replies.append(ShadowReply("update/documents", _with_token(documents, token)))
        return replies
