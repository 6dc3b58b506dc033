"""The durable outbox store: outgoing messages and ``seq`` counters in one SQLite file.

Emergencies (and, when asked for, telemetry batches) are written here before they are handed to
the connection and deleted only when the broker has acknowledged them (PUBACK), so a crash, a
power cut or a restart never loses one: on start the owner re-sends what is still pending, with
the original ``msg_id``. The ``seq`` counter of every stream lives in the same file, so sequence
numbers keep counting up across restarts.

Design choices:

* **One file, WAL.** Every commit survives a crash of the process. An emergency's commit is also
  fsynced (``synchronous=FULL``) before :meth:`DurableStore.put` returns, so it survives a power
  cut. Telemetry batches, acknowledgements and bare ``seq`` updates are not fsynced
  (``synchronous=NORMAL``; a few milliseconds each on flash, at up to 100 batches a second): a
  power cut may lose the last of them, which means lost telemetry or a duplicate, never a lost
  emergency.
* **One way to number.** :meth:`DurableStore.put_numbered` takes a stream's next ``seq`` in the
  commit that stores the message it numbers (or, for a message sent without a safety net, the
  counter alone), so a number is never used twice nor skipped by a failed write.
* **Synchronous methods, thread-safe.** SQLite is a blocking library. Every method takes a lock
  and is safe to call from a worker thread; async callers use ``anyio.to_thread.run_sync`` so that
  the fsync never stalls the event loop (and the ANC control loop on it).
* **Bounded in bytes.** Payload bytes are capped by ``max_bytes``; a new entry evicts the oldest
  telemetry first and never an emergency. If emergencies alone would pass the cap, the new entry
  is refused with :class:`~ancsync.errors.BufferFull` rather than silently dropped.
* **Start-up never crashes on a corrupt file, and never drops what it can read.** A damaged file
  is moved aside (``outbox.sqlite3.corrupt-<UTC time>``) with an error log and a fresh store is
  created; first, every pending emergency and ``seq`` counter still readable in it is copied over.
* **A permission problem is an error, not corruption.** A file this user cannot read and write
  (say, created once under ``sudo``) is left alone and :class:`~ancsync.errors.StorageError` says
  how to fix it: moving it aside would orphan the emergencies in it.
* **One process per store.** A store holds an exclusive ``flock`` on ``outbox.sqlite3.lock`` (its
  file name plus ``.lock``) for as long as it is open. A second process (or a second store on the
  same file) gets :class:`~ancsync.errors.DataDirInUse` naming the directory, the process holding
  it and the fix. The kernel drops the lock when the holder dies, even by ``SIGKILL``: a stale
  lock file never blocks the next start. A file system without ``flock`` gets a warning instead.
* **Clear errors.** SQLite failures (disk full, read-only file system, I/O errors) become
  :class:`~ancsync.errors.StorageError` naming the file, the cause and what to do.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from ancsync.errors import BufferFull, DataDirInUse, StorageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LOCK_SUFFIX",
    "STORE_FILE_NAME",
    "DurableStore",
    "StoreStats",
    "StoredLane",
    "StoredMessage",
]

logger = logging.getLogger("ancsync.durable.store")

STORE_FILE_NAME = "outbox.sqlite3"
LOCK_SUFFIX = ".lock"
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

StoredLane = Literal["emergency", "telemetry"]

_T = TypeVar("_T")

# Telemetry rows deleted to make room: their row ids, payload bytes and records.
_Eviction = tuple[list[int], int, int]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    lane TEXT NOT NULL CHECK (lane IN ('emergency', 'telemetry')),
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    records INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_lane ON messages (lane, id);
CREATE TABLE IF NOT EXISTS seqs (
    stream TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# SQLite result codes that mean "this file is not a usable database" (move it aside and start
# again) rather than "this machine cannot write right now" (tell the caller).
_BAD_FILE_ERRORS = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}

_ERROR_ADVICE = {
    "SQLITE_FULL": "the disk is full; free space on the device or lower the store's max_bytes",
    "SQLITE_READONLY": "the file system is read-only; point data_dir at a writable directory",
    "SQLITE_IOERR": "an I/O error occurred; check the storage device",
    "SQLITE_BUSY": "another process holds the store locked; run one device process per data_dir",
    "SQLITE_CANTOPEN": "the file cannot be opened; check that data_dir exists and is writable",
}

# Errors that a full disk may cause, and how little free space makes it the likely cause.
_MAYBE_FULL = {"SQLITE_IOERR", "SQLITE_CANTOPEN"}
_NEARLY_FULL = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One outgoing message as the store keeps it: ready to publish again byte for byte."""

    msg_id: str
    lane: StoredLane
    topic: str
    payload: bytes
    qos: int = 1
    #: How many telemetry records the payload carries (1 for an emergency): evictions are
    #: counted in records so the publisher's drop counters stay exact.
    records: int = 1
    #: Wall-clock seconds (``time.time()``) when the message was first stored.
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of the store for ``get_status()``."""

    path: str
    emergencies: int
    telemetry: int
    bytes: int
    max_bytes: int
    oldest_emergency_at: float | None
    evicted_messages: int
    evicted_records: int


class DurableStore:
    """The SQLite durable outbox: pending messages, removed on acknowledgement, and seq counters.

    Open it with :meth:`in_dir` (the usual ``data_dir`` layout) or with a file path. Every method
    is blocking and thread-safe; from async code call it through ``anyio.to_thread.run_sync``.
    With ``open_now=False`` the file is opened by :meth:`open` or by the first call that needs it,
    so an owner on an event loop can open (and maybe recover) it in a worker thread.
    """

    def __init__(
        self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES, open_now: bool = True
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # the connection: held during I/O, by worker threads
        self._seq_lock = threading.Lock()  # the counters only: never held during I/O
        self._sync_mode = "FULL"
        self._evicted_messages = 0
        self._evicted_records = 0
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._unlock = weakref.finalize(self, _unlock, None)  # replaced when the lock is taken
        self._bytes = 0
        self._seqs: dict[str, int] = {}
        if open_now:
            self.open()

    @classmethod
    def in_dir(
        cls, data_dir: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES, open_now: bool = True
    ) -> DurableStore:
        """Open (or create) ``<data_dir>/outbox.sqlite3``, creating the directory if needed.

        ``open_now=False`` creates the directory only and leaves the file to :meth:`open`.
        """
        directory = Path(data_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the data directory {str(directory)!r}: {exc.strerror}; "
                "set data_dir (env ANCSYNC_DATA_DIR) to a writable directory"
            ) from exc
        return cls(directory / STORE_FILE_NAME, max_bytes=max_bytes, open_now=open_now)

    # -- opening -------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the file now: lock it for this process, create it, or move a corrupt one aside
        and rescue its emergencies.

        Does nothing when it is open already. Raises :class:`DataDirInUse` when another process
        has it open, and :class:`StorageError` when the file cannot be opened (the message names
        the file and the fix).
        """
        with self._lock:
            self._connection()

    def _connection(self) -> sqlite3.Connection:
        """The open connection, opened first if needed; the caller holds ``_lock``."""
        if self._conn is None:
            self._refuse_files_without_permission()
            self._lock_fd = self._take_lock()
            # A store dropped without close() still releases its lock once collected.
            self._unlock = weakref.finalize(self, _unlock, self._lock_fd)
            try:
                conn = self._open_or_recover()
                try:
                    row = conn.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages")
                    self._bytes = int(row.fetchone()[0])
                    with self._seq_lock:
                        self._seqs = dict(conn.execute("SELECT stream, value FROM seqs"))
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                self._release_lock()
                raise
            self._conn = conn
        return self._conn

    @property
    def lock_path(self) -> Path:
        """The file this store holds locked while it is open (``outbox.sqlite3.lock``)."""
        return self.path.with_name(self.path.name + LOCK_SUFFIX)

    def _take_lock(self) -> int | None:
        """Lock the store for this process; raise :class:`DataDirInUse` if another has it.

        Returns the locked file descriptor, or ``None`` when the lock file cannot be created (a
        read-only directory): then nobody can write the store, and opening it says so.
        """
        path = self.lock_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                logger.debug("no lock file %s (%s): opening the store will say why", path, exc)
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            by = f"process {holder}" if holder is not None else "another process"
            raise DataDirInUse(
                f"durable outbox {str(self.path)!r} is already open in {by} (it holds "
                f"{str(path)!r} locked): the data directory {str(self.path.parent)!r} is in use. "
                "Run one device process per data_dir: stop the other process, or give this one "
                "its own data_dir (env ANCSYNC_DATA_DIR).",
                path=str(self.path),
                holder=holder,
            ) from None
        except OSError as exc:
            # A file system without flock (some network or FUSE ones): run, unguarded.
            os.close(fd)
            logger.warning(
                "durable outbox %s: cannot lock %s (%s), so a second device process on this "
                "data_dir would not be refused; run one device process per data_dir (a local "
                "file system supports the lock)",
                self.path,
                path,
                exc.strerror,
            )
            return None
        try:  # who holds it, for the error the next process gets (best effort)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return fd

    def _release_lock(self) -> None:
        self._lock_fd = None
        self._unlock()  # once only: closing the descriptor drops the flock

    def _open_or_recover(self) -> sqlite3.Connection:
        try:
            return _connect(self.path)
        except sqlite3.Error as exc:
            if not os.access(self.path.parent, os.W_OK):
                raise StorageError(
                    f"durable outbox {str(self.path)!r} could not open: the directory is not "
                    "writable (a read-only file system or missing permission); point data_dir "
                    "(env ANCSYNC_DATA_DIR) at a writable directory"
                ) from exc
            if _error_name(exc) not in _BAD_FILE_ERRORS:
                raise self._storage_error("open", exc) from exc
            damage = exc
        emergencies, seqs = _rescue(self.path)
        moved_to = self._move_aside()
        try:
            conn = _connect(self.path)
        except sqlite3.Error as exc:
            raise self._storage_error("create", exc) from exc
        try:
            rescued = _restore(conn, emergencies, seqs)
        except sqlite3.Error as exc:
            conn.close()
            raise self._storage_error(f"copy the emergencies rescued from {moved_to}", exc) from exc
        logger.error(
            "durable outbox %s is corrupt (%s); moved it to %s and started a new store holding "
            "the %d pending emergencies and %d seq counters still readable in it. Other "
            "messages in the old file were not re-sent; inspect it if they matter.",
            self.path,
            damage,
            moved_to,
            rescued,
            len(seqs),
        )
        return conn

    def _refuse_files_without_permission(self) -> None:
        """Raise if the store's files exist but this user may not read and write them.

        SQLite would report such a file as unopenable or read-only, much like a broken one; but
        its emergencies are intact, so it must stay where it is for its owner to fix.
        """
        for file in (self.path, *_sidecars(self.path), self.lock_path):
            if _lacks_permission(file):
                raise StorageError(
                    f"durable outbox {str(self.path)!r} could not open: {str(file)!r} cannot be "
                    f"read and written by this user (uid {os.geteuid()}), perhaps because it was "
                    "created under sudo or by another user; give it back to this user "
                    f"(chown {os.geteuid()} {file}; chmod u+rw {file}) or point data_dir "
                    "(env ANCSYNC_DATA_DIR) at another directory. The file was left untouched: "
                    "its pending emergencies are sent once it can be opened."
                )

    def _move_aside(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            self.path.rename(target)
            # The WAL and shared-memory files belong to the bad database: move them with it,
            # or SQLite would try to replay them into the new file.
            for sidecar in _sidecars(self.path):
                if sidecar.exists():
                    sidecar.rename(target.with_name(target.name + sidecar.name[-4:]))
        except OSError as exc:
            raise StorageError(
                f"durable outbox {str(self.path)!r} is corrupt and could not be moved aside "
                f"({exc.strerror}); remove it or point data_dir at a writable directory"
            ) from exc
        return target

    # -- writing -------------------------------------------------------------------------------

    def put(self, message: StoredMessage) -> int:
        """Store ``message`` and return how many telemetry records were evicted to make room.

        An emergency is fsynced before this returns; telemetry survives a process crash.
        Storing a ``msg_id`` that is already stored changes nothing.

        Raises :class:`BufferFull` when the message cannot fit even after evicting all telemetry,
        and :class:`StorageError` when SQLite cannot write.
        """
        with self._transaction("store a message", fsync=message.lane == "emergency") as conn:
            evicted = self._insert(conn, message)
        return self._account(message, evicted)

    def put_numbered(
        self,
        stream: str,
        number: Callable[[int], StoredMessage | None],
        *,
        fsync: bool = True,
    ) -> StoredMessage | None:
        """Take the next ``seq`` of ``stream`` and store the message ``number(seq)`` builds.

        The one way to number: the number is taken in the transaction that stores the row (and
        the counter), under the store's lock, so it is used only if the commit succeeds (a
        :class:`BufferFull` or :class:`StorageError` leaves no gap), and row order is ``seq``
        order. When ``number`` returns ``None`` only the counter is stored (a message sent
        without a safety net still numbers on across restarts). ``fsync=False`` (telemetry)
        makes the commit survive a process crash but maybe not a power cut.
        """
        with self._transaction("store a numbered message", fsync=fsync) as conn:
            # Read in the write transaction: the row is the truth (the in-memory copy, for
            # last_seq, is raised only after the commit, outside the lock).
            row = conn.execute("SELECT value FROM seqs WHERE stream = ?", (stream,)).fetchone()
            value = (row[0] if row else 0) + 1
            message = number(value)
            evicted = self._insert(conn, message) if message is not None else None
            self._save_seq(conn, stream, value)
        self._raise_seq(stream, value)
        if message is not None:
            self._account(message, evicted)
        return message

    def last_seq(self, stream: str) -> int:
        """The last ``seq`` of ``stream`` stored (0 before the first)."""
        if self._conn is None:
            self.open()
        with self._seq_lock:
            return self._seqs.get(stream, 0)

    def _insert(self, conn: sqlite3.Connection, message: StoredMessage) -> _Eviction | None:
        """Insert ``message``, evicting old telemetry; return what was evicted (``None`` if the
        ``msg_id`` was already stored: nothing changed)."""
        size = len(message.payload)
        if conn.execute("SELECT 1 FROM messages WHERE msg_id = ?", (message.msg_id,)).fetchone():
            return None
        evicted_ids, evicted_bytes, evicted_records = self._plan_eviction(conn, size)
        if self._bytes - evicted_bytes + size > self.max_bytes:
            raise BufferFull(
                f"durable outbox is full: a {size}-byte {message.lane} message does not fit "
                f"in max_bytes={self.max_bytes} ({self._bytes} bytes held, emergencies are "
                "never evicted); wait for the connection to deliver them or raise max_bytes"
            )
        conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in evicted_ids])
        conn.execute(
            "INSERT INTO messages (msg_id, lane, topic, payload, qos, records, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                message.msg_id,
                message.lane,
                message.topic,
                message.payload,
                message.qos,
                message.records,
                message.created_at,
            ),
        )
        return evicted_ids, evicted_bytes, evicted_records

    def _account(self, message: StoredMessage, evicted: _Eviction | None) -> int:
        """After a commit: count the bytes and evictions; return the evicted records."""
        if evicted is None:
            return 0
        evicted_ids, evicted_bytes, evicted_records = evicted
        self._bytes += len(message.payload) - evicted_bytes
        if evicted_ids:
            self._evicted_messages += len(evicted_ids)
            self._evicted_records += evicted_records
            logger.warning(
                "durable outbox over max_bytes=%d: evicted the %d oldest telemetry messages "
                "(%d records)",
                self.max_bytes,
                len(evicted_ids),
                evicted_records,
            )
        return evicted_records

    def _plan_eviction(self, conn: sqlite3.Connection, size: int) -> _Eviction:
        """Oldest telemetry rows to delete so that ``size`` more bytes fit (maybe not enough)."""
        need = self._bytes + size - self.max_bytes
        ids: list[int] = []
        freed = records = 0
        if need <= 0:
            return ids, freed, records
        rows = conn.execute(
            "SELECT id, LENGTH(payload), records FROM messages WHERE lane = 'telemetry' ORDER BY id"
        )
        for row_id, row_bytes, row_records in rows:
            if freed >= need:
                break
            ids.append(row_id)
            freed += row_bytes
            records += row_records
        if freed < need:
            return [], 0, 0  # evicting would not help: keep the telemetry, refuse the new entry
        return ids, freed, records

    def ack(self, *msg_ids: str) -> int:
        """Delete acknowledged messages; return how many were held (others are ignored)."""
        # Not fsynced: an acknowledgement lost in a power cut only means a duplicate.
        with self._transaction("delete acknowledged messages", fsync=False) as conn:
            freed = [
                row[0]
                for msg_id in msg_ids
                for row in conn.execute(
                    "DELETE FROM messages WHERE msg_id = ? RETURNING LENGTH(payload)", (msg_id,)
                )
            ]
        self._bytes -= sum(freed)
        return len(freed)

    def _save_seq(self, conn: sqlite3.Connection, stream: str, value: int) -> None:
        conn.execute(
            "INSERT INTO seqs (stream, value) VALUES (?, ?)"
            " ON CONFLICT (stream) DO UPDATE SET value = MAX(value, excluded.value)",
            (stream, value),
        )

    def _raise_seq(self, stream: str, value: int) -> None:
        """After a commit: the in-memory counter follows the one on disk."""
        with self._seq_lock:
            self._seqs[stream] = max(self._seqs.get(stream, 0), value)

    # -- reading -------------------------------------------------------------------------------

    def pending(self, lane: StoredLane | None = None) -> list[StoredMessage]:
        """Every unacknowledged message, emergencies first, each lane oldest first."""
        query = "SELECT msg_id, lane, topic, payload, qos, records, created_at FROM messages"
        params: tuple[str, ...] = ()
        if lane is not None:
            query += " WHERE lane = ?"
            params = (lane,)
        query += " ORDER BY lane = 'telemetry', id"
        rows = self._read(lambda conn: conn.execute(query, params).fetchall())
        return [
            StoredMessage(
                msg_id=msg_id,
                lane=row_lane,
                topic=topic,
                payload=bytes(payload),
                qos=qos,
                records=records,
                created_at=created_at,
            )
            for msg_id, row_lane, topic, payload, qos, records, created_at in rows
        ]

    def stats(self) -> StoreStats:
        """Counts, bytes and the creation time of the oldest pending emergency."""

        def query(conn: sqlite3.Connection) -> list[tuple[str, int, float]]:
            return conn.execute(
                "SELECT lane, COUNT(*), MIN(created_at) FROM messages GROUP BY lane"
            ).fetchall()

        by_lane = {lane: (count, oldest) for lane, count, oldest in self._read(query)}
        emergencies, oldest = by_lane.get("emergency", (0, None))
        return StoreStats(
            path=str(self.path),
            emergencies=emergencies,
            telemetry=by_lane.get("telemetry", (0, None))[0],
            bytes=self._bytes,
            max_bytes=self.max_bytes,
            oldest_emergency_at=oldest,
            evicted_messages=self._evicted_messages,
            evicted_records=self._evicted_records,
        )

    def close(self) -> None:
        """Close the file (if it was opened) and release its lock. Pending messages stay in it
        for the next start."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._release_lock()

    def __enter__(self) -> DurableStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, doing: str, *, fsync: bool) -> Iterator[sqlite3.Connection]:
        """Run a write under the lock in one ``BEGIN IMMEDIATE`` transaction; map SQLite errors.

        ``fsync`` chooses whether the commit waits for the disk (``synchronous`` FULL/NORMAL).
        """
        with self._lock:
            conn = self._connection()
            try:
                mode = "FULL" if fsync else "NORMAL"
                if mode != self._sync_mode:
                    conn.execute(f"PRAGMA synchronous = {mode}")
                    self._sync_mode = mode
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                # SQLite rolls back by itself on some errors (SQLITE_FULL): only roll back what
                # is still open, and never let a failed rollback hide the original error.
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        logger.debug("rollback after a failed write also failed", exc_info=True)
                if isinstance(exc, sqlite3.Error):
                    raise self._storage_error(doing, exc) from exc
                raise

    def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                return query(self._connection())
            except sqlite3.Error as exc:
                raise self._storage_error("read", exc) from exc

    def _storage_error(self, doing: str, exc: sqlite3.Error) -> StorageError:
        name = _error_name(exc)
        advice = _ERROR_ADVICE.get(name, f"SQLite error {name}")
        free = _free_bytes(self.path.parent)
        if name in _MAYBE_FULL and free is not None and free < _NEARLY_FULL:
            # SQLite reports a disk that cannot grow its shared-memory or WAL file as an I/O
            # error (SQLITE_IOERR_SHMSIZE...): say what is really wrong.
            advice = f"{_ERROR_ADVICE['SQLITE_FULL']} ({free} bytes free)"
        return StorageError(f"durable outbox {str(self.path)!r} could not {doing}: {exc}; {advice}")


def _connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, check it is a healthy ancsync store and create the schema."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        _check_integrity(conn)
        conn.executescript(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _free_bytes(directory: Path) -> int | None:
    """Bytes this user may still write on the file system of ``directory`` (None: unknown)."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    """The process id a lock holder wrote in its lock file, if it can be read."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _sidecars(path: Path) -> tuple[Path, Path]:
    """The WAL and shared-memory files SQLite keeps next to ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _lacks_permission(file: Path) -> bool:
    """True when ``file`` exists but this (effective) user may not read and write it.

    A read-only file system is not a permission problem: opening reports that on its own.
    """
    effective = os.access in os.supports_effective_ids
    if not os.path.exists(file) or os.access(file, os.R_OK | os.W_OK, effective_ids=effective):
        return False
    readable = os.access(file, os.R_OK, effective_ids=effective)
    return not (readable and os.statvfs(file).f_flag & os.ST_RDONLY)


_RescuedRow = tuple[Any, ...]

# Two ways to the emergency rows: through the lane index (touches only their pages) and, if the
# index itself is damaged, a plain table scan. Each keeps whatever it read before an error.
_RESCUE_QUERIES = (
    "SELECT id, msg_id, lane, topic, payload, qos, records, created_at"
    " FROM messages WHERE lane = 'emergency'",
    "SELECT id, msg_id, lane, topic, payload, qos, records, created_at"
    " FROM messages NOT INDEXED WHERE lane = 'emergency'",
)


def _rescue(path: Path) -> tuple[list[_RescuedRow], list[_RescuedRow]]:
    """Best effort: the pending emergencies (oldest first) and seq counters still readable in a
    damaged store file. Never raises: what cannot be read is simply not returned."""
    by_msg_id: dict[Any, _RescuedRow] = {}
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return [], []
    try:
        for query in _RESCUE_QUERIES:
            for row in _rows_until_error(conn, query):
                by_msg_id.setdefault(row[1], row)
        seqs = _rows_until_error(conn, "SELECT stream, value FROM seqs")
    finally:
        conn.close()
    oldest_first = sorted(by_msg_id.values(), key=lambda row: row[0])
    return [row[1:] for row in oldest_first], seqs  # without the old row id


def _rows_until_error(conn: sqlite3.Connection, query: str) -> list[_RescuedRow]:
    rows: list[_RescuedRow] = []
    try:
        for row in conn.execute(query):
            rows.append(tuple(row))
    except sqlite3.Error as exc:
        logger.debug("rescue stopped after %d rows of %r: %s", len(rows), query, exc)
    return rows


def _restore(
    conn: sqlite3.Connection, emergencies: list[_RescuedRow], seqs: list[_RescuedRow]
) -> int:
    """Write rescued rows into a new store in one fsynced transaction (it is in FULL mode) and
    return how many emergencies were kept.

    ``OR IGNORE`` skips a row that a damaged page turned into something the schema refuses.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        kept = conn.executemany(
            "INSERT OR IGNORE INTO messages (msg_id, lane, topic, payload, qos, records,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            emergencies,
        ).rowcount
        conn.executemany("INSERT OR IGNORE INTO seqs (stream, value) VALUES (?, ?)", seqs)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return kept


def _check_integrity(conn: sqlite3.Connection) -> None:
    (result,) = conn.execute("PRAGMA quick_check").fetchone()
    if result != "ok":
        raise _FailedCheck(f"integrity check failed: {result}")


class _FailedCheck(sqlite3.DatabaseError):
    """The file opened but ``PRAGMA quick_check`` found damage."""

    sqlite_errorname = "SQLITE_CORRUPT"


def _error_name(exc: sqlite3.Error) -> str:
    """The primary SQLite result code name: ``SQLITE_IOERR_WRITE`` becomes ``SQLITE_IOERR``."""
    name: str = getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR"
    return "_".join(name.split("_")[:2])
