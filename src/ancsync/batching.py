"""Telemetry batching: per-kind queues of encoded records under one bound, and when to send.

This is the pure part of :class:`~ancsync.telemetry.TelemetryPublisher`: no I/O, no tasks, a clock
that tests replace. :func:`encode_record` validates and encodes a record (so its size is known
exactly), :meth:`RecordBuffer.take` hands out the records of one batch and :func:`batch_payload`
wraps them in the batch envelope (see the topics and payloads page of the docs).

Rules:

* A kind is *due* when ``batch_size`` of its records wait, or when its oldest waiting record has
  waited ``batch_interval`` seconds, whichever comes first.
* A batch holds at most ``batch_size`` records and never more bytes than the payload limit.
* At most ``max_records`` records wait over all kinds together (the caller also counts the records
  of batches it has handed out but not yet delivered). Past that, the oldest record of any kind is
  dropped and counted per kind.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ValidationError

from ancsync.codec import MAX_PAYLOAD_BYTES, describe_errors
from ancsync.errors import InvalidPayload, PayloadTooLarge
from ancsync.models import RECORD_MODELS, utc_now
from ancsync.topics import TELEMETRY_KINDS, TelemetryKind

__all__ = [
    "BATCH_OVERHEAD_BYTES",
    "RecordBuffer",
    "batch_payload",
    "encode_record",
    "kind_of_topic",
]

# Room kept in every batch for the envelope around the records: device id (<= 128 characters),
# kind, msg_id, seq, sent_at and the JSON punctuation. Generous on purpose.
BATCH_OVERHEAD_BYTES = 512


def encode_record(
    kind: TelemetryKind, record: Mapping[str, Any] | BaseModel, *, limit: int
) -> bytes:
    """Validate ``record`` as the model of ``kind`` (``timestamp`` defaults to now) and encode it.

    Raises :class:`InvalidPayload` naming the bad field, or :class:`PayloadTooLarge` when the
    encoded record is over ``limit`` bytes.
    """
    model = RECORD_MODELS[kind]
    if isinstance(record, model):
        validated: BaseModel = record
    elif isinstance(record, Mapping):
        data = record if "timestamp" in record else {**record, "timestamp": utc_now()}
        try:
            validated = model.model_validate(data)
        except ValidationError as exc:
            raise InvalidPayload(
                f"{kind} telemetry record is invalid: {describe_errors(exc)}"
            ) from None
    else:
        raise InvalidPayload(
            f"{kind} telemetry takes a mapping or a {model.__name__}, not {type(record).__name__}"
        )
    # Not codec.encode: orjson's result keeps its 4 KiB buffer, 30x what a record needs.
    encoded = validated.model_dump_json(exclude_none=True).encode()
    if len(encoded) > limit:
        raise PayloadTooLarge(f"one {kind} telemetry record", len(encoded), limit)
    return encoded


def batch_payload(
    device_id: str, kind: TelemetryKind, msg_id: str, seq: int, records: list[bytes]
) -> bytes:
    """The JSON of a telemetry batch around encoded ``records`` (spliced in, not re-encoded)."""
    head = orjson.dumps(
        {"device_id": device_id, "kind": kind, "msg_id": msg_id, "seq": seq, "sent_at": utc_now()}
    )
    return b"".join((head[:-1], b',"records":[', b",".join(records), b"]}"))


def kind_of_topic(topic: str) -> TelemetryKind:
    """The telemetry kind a topic ``anc/telemetry/{id}/{kind}`` is for."""
    last = topic.rsplit("/", 1)[-1]
    for kind in TELEMETRY_KINDS:
        if kind == last:
            return kind
    raise InvalidPayload(f"{topic!r} is not a telemetry topic (anc/telemetry/{{id}}/{{kind}})")


class _Record(NamedTuple):
    order: int  # arrival order over all kinds, to find the oldest record to drop
    arrived_at: float
    data: bytes


class RecordBuffer:
    """Records waiting to be batched, one FIFO per telemetry kind, bounded in total."""

    def __init__(
        self,
        *,
        batch_size: int = 10,
        batch_interval: float = 30.0,
        max_records: int = 1000,
        max_payload: int = MAX_PAYLOAD_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1 or max_records < 1:
            raise ValueError("batch_size and max_records must be at least 1")
        if batch_interval <= 0:
            raise ValueError("batch_interval must be greater than 0 seconds")
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.max_records = max_records
        self.max_record_bytes = max_payload - BATCH_OVERHEAD_BYTES
        self.clock = clock
        self._queues: dict[TelemetryKind, deque[_Record]] = {k: deque() for k in TELEMETRY_KINDS}
        self._order = 0
        self._bytes = 0
        #: Records handed out in batches that are not delivered yet; they count against the bound.
        self.in_flight = 0
        self.dropped: dict[TelemetryKind, int] = dict.fromkeys(TELEMETRY_KINDS, 0)
        self.accepted: dict[TelemetryKind, int] = dict.fromkeys(TELEMETRY_KINDS, 0)

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    @property
    def waiting_bytes(self) -> int:
        """Encoded bytes of the waiting records."""
        return self._bytes

    def depth(self, kind: TelemetryKind) -> int:
        """Records of ``kind`` waiting."""
        return len(self._queues[kind])

    def add(self, kind: TelemetryKind, data: bytes) -> bool:
        """Queue one encoded record; return ``True`` when the sender should look again.

        That is when ``kind`` is now due by size, or when the buffer was empty (the interval
        clock of a first record starts now).

        The caller checks ``len(data)`` against :attr:`max_record_bytes` first. When the bound is
        reached the oldest waiting record (of any kind) is dropped and counted.
        """
        queue = self._queues[kind]
        was_empty = not any(self._queues.values())
        queue.append(_Record(self._order, self.clock(), data))
        self._order += 1
        self._bytes += len(data)
        self.accepted[kind] += 1
        while len(self) + self.in_flight > self.max_records and self._drop_oldest():
            pass
        return was_empty or len(queue) >= self.batch_size

    def _drop_oldest(self) -> bool:
        heads = [(queue[0].order, kind) for kind, queue in self._queues.items() if queue]
        if not heads:
            return False
        _, kind = min(heads)
        self._bytes -= len(self._queues[kind].popleft().data)
        self.dropped[kind] += 1
        return True

    def due(self, *, flush: bool = False) -> TelemetryKind | None:
        """The kind to batch next (the one whose oldest record is oldest), or ``None``.

        With ``flush`` every kind that has records is due (used when stopping).
        """
        deadline = self.clock() - self.batch_interval
        best: tuple[int, TelemetryKind] | None = None
        for kind, queue in self._queues.items():
            if queue and (
                flush or len(queue) >= self.batch_size or queue[0].arrived_at <= deadline
            ):
                candidate = (queue[0].order, kind)
                best = candidate if best is None else min(best, candidate)
        return None if best is None else best[1]

    def seconds_until_due(self) -> float | None:
        """How long until some kind is due by interval; ``None`` when nothing waits."""
        oldest = [queue[0].arrived_at for queue in self._queues.values() if queue]
        if not oldest:
            return None
        return max(0.0, min(oldest) + self.batch_interval - self.clock())

    def take(self, kind: TelemetryKind) -> list[bytes]:
        """Remove and return the next batch of ``kind``: oldest first, within size and bytes.

        The records are counted as in flight until :meth:`settle` is called for them.
        """
        queue = self._queues[kind]
        batch: list[bytes] = []
        size = 0
        while queue and len(batch) < self.batch_size:
            data = queue[0].data
            # +1 for the comma between records
            if batch and size + len(data) + 1 > self.max_record_bytes:
                break
            queue.popleft()
            batch.append(data)
            size += len(data) + 1
        self._bytes -= size - len(batch)
        self.in_flight += len(batch)
        return batch

    def readmit(self, kind: TelemetryKind, records: int) -> None:
        """Count ``records`` of a batch a previous run stored as accepted and in flight.

        They are re-sent without passing through the buffer; counting them keeps
        ``accepted`` equal to the sum of the outcomes.
        """
        self.accepted[kind] += records
        self.in_flight += records

    def settle(self, records: int) -> None:
        """``records`` handed out by :meth:`take` are delivered, stored or given up on."""
        self.in_flight -= records
