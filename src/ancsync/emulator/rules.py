"""The emulator's rules sink: the local stand-in for the cloud's IoT rules.

In AWS, rules route telemetry batches to a table and emergencies to a handler. Here
:class:`RulesSink` listens to every accepted publish on the embedded broker and stores

- each telemetry batch (``anc/telemetry/{id}/{kind}``) keyed by its ``msg_id``, and
- each emergency (``anc/devices/{id}/emergency``) keyed by its ``event_id``

in SQLite (a file, or memory), so a re-delivered message (QoS 1 is at-least-once) is stored once
and counted as a duplicate. It reports gaps in ``seq`` per device and stream, which is how the
cloud side notices lost messages. The device id is taken from the topic, which the device policy
ties to the publishing certificate.

Tests and the demo read it with the query methods and wait with :meth:`RulesSink.wait_for`.
Writes run in a worker thread; the queries are short reads on the caller's (the event loop's)
thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.service import EmulatorService
from ancsync.errors import NotStarted, StorageError

__all__ = ["RulesSink", "SeqGap", "StoredEmergency", "StoredTelemetry"]

log = logging.getLogger("ancsync.emulator.rules")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (
    msg_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL,
    record_count INTEGER NOT NULL, payload TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS emergencies (
    event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, seq INTEGER NOT NULL,
    payload TEXT NOT NULL, received_at REAL NOT NULL);
"""

# Consecutive seq values per device and stream; a step of more than one is a gap.
_GAPS = """
SELECT device_id, stream, previous + 1, seq - 1 FROM (
    SELECT device_id, 'telemetry/' || kind AS stream, seq,
           LAG(seq) OVER (PARTITION BY device_id, kind ORDER BY seq) AS previous
    FROM telemetry
    UNION ALL
    SELECT device_id, 'emergency', seq,
           LAG(seq) OVER (PARTITION BY device_id ORDER BY seq)
    FROM emergencies)
WHERE previous IS NOT NULL AND seq > previous + 1
ORDER BY device_id, stream, seq
"""


@dataclass(frozen=True)
class StoredTelemetry:
    """A telemetry batch as stored: its keys, and the whole payload."""

    msg_id: str
    device_id: str
    kind: str
    seq: int
    records: list[dict[str, Any]]
    payload: dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class StoredEmergency:
    """An emergency event as stored: its keys, and the whole (flat) payload."""

    event_id: str
    device_id: str
    seq: int
    payload: dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class SeqGap:
    """Sequence numbers ``first`` to ``last`` (inclusive) never arrived on ``stream``.

    ``stream`` is ``"telemetry/{kind}"`` or ``"emergency"``.
    """

    device_id: str
    stream: str
    first: int
    last: int


def _is_seq(value: Any) -> bool:
    return type(value) is int and value >= 0


def _problem(kind: str, payload: Any) -> str | None:
    """Why a payload cannot be stored (the keys a cloud table needs), or None."""
    if not isinstance(payload, dict):
        return "payload is not a JSON object"
    key = "event_id" if kind == "emergency" else "msg_id"
    if not isinstance(payload.get(key), str) or not payload[key]:
        return f"{key} is missing or not a non-empty string"
    if not _is_seq(payload.get("seq")):
        return "seq is missing or not a non-negative integer"
    if kind != "emergency" and not isinstance(payload.get("records"), list):
        return "records is missing or not a list"
    return None


def _open(db_path: Path | str | None) -> sqlite3.Connection:
    """The rules database with its tables; :class:`StorageError` naming the fix if it fails."""
    try:
        if db_path is not None:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            ":memory:" if db_path is None else str(db_path),
            check_same_thread=False,
            isolation_level=None,
        )
        # Every stored message is its own transaction: with the default rollback journal each
        # one waited for several fsyncs, which capped the whole emulator at a few hundred
        # messages per second (benchmarks/bench_fleet.py). A write-ahead log synced at
        # checkpoints keeps what was stored across a crash of the emulator's process.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(
            f"cannot open the rules database {db_path}: {exc}; choose a writable --db path"
        ) from exc
    return db


class RulesSink(EmulatorService):
    """Stores telemetry batches and emergencies from the broker in SQLite.

    ``db_path`` None keeps everything in memory (for one run). An
    :class:`~ancsync.emulator.service.EmulatorService`: :meth:`attach` it to a broker and run
    it (``async with RulesSink(path) as rules:`` alone reads a database file); the database is
    open while it runs, and :class:`StorageError` when it cannot be opened says how to fix it.
    """

    name = "rules"

    def __init__(self, db_path: Path | str | None = None, *, stop_timeout: float = 5.0) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.db_path = db_path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._changed: anyio.Event | None = None
        self._stats = {"telemetry_batches": 0, "emergencies": 0, "duplicates": 0, "invalid": 0}

    def attach(self, broker: EmbeddedBroker) -> None:
        """Listen to every accepted publish on ``broker``."""
        broker.add_publish_listener(self.on_publish)

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Open the database (in a worker thread), then keep it open until stopped."""
        self._db = await anyio.to_thread.run_sync(_open, self.db_path)
        task_status.started()
        await anyio.sleep_forever()

    async def _shutdown(self) -> None:
        """Close the database, once the write in progress (if any) has finished."""
        await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    def stats(self) -> dict[str, int]:
        """Counters since start: ``telemetry_batches`` and ``emergencies`` stored,
        ``duplicates`` ignored, ``invalid`` payloads refused."""
        return dict(self._stats)

    # -- writing ------------------------------------------------------------------------------

    async def on_publish(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        """A broker publish listener: store the message if it is telemetry or an emergency."""
        levels = topic.split("/")
        if len(levels) == 4 and levels[:2] == ["anc", "telemetry"]:
            kind, device_id = levels[3], levels[2]
        elif len(levels) == 4 and levels[0:2] == ["anc", "devices"] and levels[3] == "emergency":
            kind, device_id = "emergency", levels[2]
        else:
            return
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            document = None
        problem = _problem(kind, document)
        if problem is not None:
            self._stats["invalid"] += 1
            log.warning(
                "not stored: %s from %r on %r: %s", kind, identity.client_id, topic, problem
            )
            return
        stored = await anyio.to_thread.run_sync(self._insert, kind, device_id, document, payload)
        if stored is None:
            log.warning("not stored: the rules sink is not running (%s on %r)", kind, topic)
            return
        if not stored:
            self._stats["duplicates"] += 1
            log.info("duplicate %s on %r ignored", kind, topic)
        else:
            self._stats["emergencies" if kind == "emergency" else "telemetry_batches"] += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _insert(
        self, kind: str, device_id: str, document: dict[str, Any], raw: bytes
    ) -> bool | None:
        """Insert unless the key is already stored; True if a row was added, None if the
        database is closed."""
        text, now = raw.decode("utf-8"), time.time()
        with self._lock:
            if self._db is None:
                return None
            if kind == "emergency":
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO emergencies VALUES (?, ?, ?, ?, ?)",
                    (document["event_id"], device_id, document["seq"], text, now),
                )
            else:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        document["msg_id"],
                        device_id,
                        kind,
                        document["seq"],
                        len(document["records"]),
                        text,
                        now,
                    ),
                )
            return cursor.rowcount == 1

    # -- reading ------------------------------------------------------------------------------

    def _query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._db is None:
                raise NotStarted("the rules sink is not running; its database is closed")
            return self._db.execute(sql, parameters).fetchall()

    def telemetry_batches(
        self, device_id: str | None = None, kind: str | None = None
    ) -> list[StoredTelemetry]:
        """Stored telemetry batches (optionally of one device and kind) by device, kind, seq."""
        rows = self._query(
            "SELECT msg_id, device_id, kind, seq, payload, received_at FROM telemetry"
            " WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR kind = ?2)"
            " ORDER BY device_id, kind, seq",
            (device_id, kind),
        )
        batches = []
        for msg_id, device, batch_kind, seq, text, received_at in rows:
            payload = orjson.loads(text)
            records = payload["records"]
            batches.append(
                StoredTelemetry(msg_id, device, batch_kind, seq, records, payload, received_at)
            )
        return batches

    def record_count(self, device_id: str | None = None, kind: str | None = None) -> int:
        """How many telemetry records (not batches) are stored."""
        [(count,)] = self._query(
            "SELECT COALESCE(SUM(record_count), 0) FROM telemetry"
            " WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR kind = ?2)",
            (device_id, kind),
        )
        return int(count)

    def emergencies(self, device_id: str | None = None) -> list[StoredEmergency]:
        """Stored emergencies (optionally of one device) by device and seq."""
        rows = self._query(
            "SELECT event_id, device_id, seq, payload, received_at FROM emergencies"
            " WHERE (?1 IS NULL OR device_id = ?1) ORDER BY device_id, seq",
            (device_id,),
        )
        return [
            StoredEmergency(event_id, device, seq, orjson.loads(text), received_at)
            for event_id, device, seq, text, received_at in rows
        ]

    def gaps(self, device_id: str | None = None) -> list[SeqGap]:
        """Missing ``seq`` ranges between the lowest and highest seen, per device and stream."""
        return [
            SeqGap(device, stream, first, last)
            for device, stream, first, last in self._query(_GAPS)
            if device_id is None or device == device_id
        ]

    async def wait_for(self, predicate: Callable[[RulesSink], bool]) -> None:
        """Return once ``predicate(sink)`` is true, re-checked after every stored message.

        Bound the wait with ``anyio.fail_after``, e.g.
        ``with anyio.fail_after(5): await sink.wait_for(lambda s: len(s.emergencies()) == 1)``.
        """
        while not predicate(self):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
