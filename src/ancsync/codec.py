"""JSON on the wire: orjson encoding with the AWS IoT size check, decoding with clear errors.

Every payload the SDK sends goes through :func:`encode`, so an over-size message is refused with
:class:`~ancsync.errors.PayloadTooLarge` before it is queued (AWS IoT would drop it, or the
connection). Every payload it receives goes through :func:`decode` or :func:`decode_model`, whose
:class:`~ancsync.errors.InvalidPayload` says what is wrong and where.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ancsync.errors import InvalidPayload, PayloadTooLarge

__all__ = ["MAX_PAYLOAD_BYTES", "decode", "decode_model", "describe_errors", "encode"]

MAX_PAYLOAD_BYTES = 128 * 1024
"""AWS IoT Core's limit for one PUBLISH payload."""

M = TypeVar("M", bound=BaseModel)

_SHOWN_ERRORS = 5  # enough to fix a payload, short enough to read in a log line


def _model_to_json(value: object) -> Any:
    # orjson calls this for types it does not know; models nested in a dict or list land here.
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _compact(data: bytes) -> bytes:
    # orjson's bytes keep the whole buffer it wrote into (at least 4 KiB, measured with
    # tracemalloc on orjson 3.13): a queued 150-byte message would hold 4 KiB. A copy is exact.
    return bytes(memoryview(data))


def encode(
    payload: BaseModel | Mapping[str, Any] | list[Any] | str | bytes,
    *,
    limit: int = MAX_PAYLOAD_BYTES,
    what: str = "payload",
) -> bytes:
    """Serialise ``payload`` to compact JSON bytes and check them against ``limit``.

    A model is dumped in JSON mode without ``None`` fields (an absent optional field is not sent
    as ``null``). A mapping or list is serialised as is and may hold models. ``str`` and ``bytes``
    are taken as already-encoded payloads: sent unchanged (a ``str`` as UTF-8), only size-checked.
    ``what`` names the payload in error messages, e.g. ``"telemetry batch"``.

    Models refuse NaN and infinity; in a plain mapping orjson writes them as ``null``, so
    validate numbers through a model when they matter.

    Raises:
        PayloadTooLarge: the encoded payload is over ``limit`` bytes.
        InvalidPayload: a value cannot be represented in JSON.
    """
    try:
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode("utf-8")
        elif isinstance(payload, BaseModel):
            data = _compact(orjson.dumps(payload.model_dump(mode="json", exclude_none=True)))
        else:
            # dict() so any Mapping works (orjson only knows dict); OPT_UTC_Z writes UTC as "Z".
            body = dict(payload) if isinstance(payload, Mapping) else payload
            data = _compact(orjson.dumps(body, default=_model_to_json, option=orjson.OPT_UTC_Z))
    except (orjson.JSONEncodeError, UnicodeEncodeError) as exc:
        raise InvalidPayload(
            f"{what} cannot be encoded as JSON: {exc}; use only str keys and JSON values "
            "(str, int, float, bool, None, list, dict, datetime, pydantic models)"
        ) from exc
    if len(data) > limit:
        raise PayloadTooLarge(what, len(data), limit)
    return data


def decode(data: bytes | str, *, what: str = "payload") -> Any:
    """Parse a JSON payload. ``what`` names it in error messages.

    Raises:
        InvalidPayload: the payload is empty, not UTF-8 or not JSON; the message gives the position.
    """
    if not data:
        raise InvalidPayload(f"{what} is empty: expected a JSON document")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if isinstance(data, bytes):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise InvalidPayload(
                    f"{what} is not UTF-8 text: byte 0x{data[bad.start]:02x} at position "
                    f"{bad.start} is invalid; JSON payloads must be UTF-8"
                ) from exc
        raise InvalidPayload(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
            f"(character {exc.pos})"
        ) from exc


def decode_model(data: bytes | str, model: type[M], *, what: str | None = None) -> M:
    """Parse a JSON payload and validate it as ``model``.

    Raises:
        InvalidPayload: not JSON (see :func:`decode`), or the document does not fit ``model``;
            the message names each bad field, what is wrong with it and the value received.
    """
    what = what or f"{model.__name__} payload"
    document = decode(data, what=what)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InvalidPayload(f"{what} is invalid: {describe_errors(exc)}") from exc


def describe_errors(exc: ValidationError) -> str:
    """A pydantic ``ValidationError`` in one line: ``field: problem (got value); ...``."""
    errors = exc.errors(include_url=False)
    parts = [_describe(error) for error in errors[:_SHOWN_ERRORS]]
    if len(errors) > _SHOWN_ERRORS:
        parts.append(f"and {len(errors) - _SHOWN_ERRORS} more")
    return "; ".join(parts)


def _describe(error: Any) -> str:
    where = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
    ).lstrip(".")
    text = f"{where or '(document)'}: {error['msg']}"
    shown = repr(error["input"])
    # A missing field has no value to show; custom messages may already quote it.
    if error["type"] != "missing" and shown not in text:
        text += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return text
