"""The SQLite durable outbox store, against real SQLite files (and a real full/read-only disk)."""

from __future__ import annotations

import errno
import fcntl
import gc
import logging
import os
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import read_only_view, tmpfs

from ancsync.durable.store import (
    LOCK_SUFFIX,
    STORE_FILE_NAME,
    DurableStore,
    StoredLane,
    StoredMessage,
)
from ancsync.errors import BufferFull, DataDirInUse, StorageError


def message(lane: StoredLane, size: int = 10, records: int = 1) -> StoredMessage:
    return StoredMessage(
        msg_id=uuid.uuid4().hex,
        lane=lane,
        topic=f"anc/test/{lane}",
        payload=os.urandom(size),
        records=records,
    )


def fill_until_error(store: DurableStore, size: int) -> tuple[list[StoredMessage], StorageError]:
    """Store emergencies of ``size`` bytes until SQLite refuses; return what was stored."""
    stored: list[StoredMessage] = []
    for _ in range(1000):
        entry = message("emergency", size)
        try:
            store.put(entry)
        except StorageError as error:
            return stored, error
        stored.append(entry)
    raise AssertionError("the store never ran out of room")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DurableStore]:
    with DurableStore.in_dir(tmp_path / "data") as opened:
        yield opened


def test_pending_lists_emergencies_first_then_each_lane_in_order(store: DurableStore) -> None:
    t1, e1, t2, e2 = (
        message(lane) for lane in ("telemetry", "emergency", "telemetry", "emergency")
    )
    for entry in (t1, e1, t2, e2):
        store.put(entry)

    assert [m.msg_id for m in store.pending()] == [e1.msg_id, e2.msg_id, t1.msg_id, t2.msg_id]
    assert [m.msg_id for m in store.pending("telemetry")] == [t1.msg_id, t2.msg_id]
    assert store.pending("emergency")[0] == e1


def test_ack_removes_only_that_message(store: DurableStore) -> None:
    first, second = message("emergency", 100), message("emergency", 50)
    store.put(first)
    store.put(second)

    assert store.ack(first.msg_id) == 1
    assert store.ack(first.msg_id) == 0
    assert store.ack("never-stored") == 0
    assert store.pending() == [second]
    assert store.stats().bytes == 50


def test_many_acknowledgements_go_in_one_call(store: DurableStore) -> None:
    entries = [message("telemetry", 10) for _ in range(5)]
    for entry in entries:
        store.put(entry)

    assert store.ack(entries[0].msg_id, entries[3].msg_id, "unknown", entries[0].msg_id) == 2
    assert store.pending() == [entries[1], entries[2], entries[4]]
    assert store.stats().bytes == 30


def test_storing_the_same_msg_id_twice_keeps_one_copy(store: DurableStore) -> None:
    entry = message("emergency")
    store.put(entry)
    store.put(entry)

    assert store.pending() == [entry]
    assert store.stats().bytes == len(entry.payload)


def count_to(store: DurableStore, stream: str, value: int) -> None:
    """Number ``value`` messages of ``stream`` sent without a safety net: the counter only."""
    for _ in range(value):
        store.put_numbered(stream, lambda seq: None, fsync=False)


def test_pending_messages_and_seq_counters_survive_reopening(tmp_path: Path) -> None:
    entry = message("emergency", 64)
    with DurableStore.in_dir(tmp_path) as store:
        count_to(store, "emergency", 1)
        assert store.put_numbered("emergency", lambda seq: entry) is entry
        count_to(store, "telemetry/anc", 41)

    with DurableStore.in_dir(tmp_path) as reopened:
        assert reopened.pending() == [entry]
        assert reopened.stats().bytes == 64
        assert reopened.last_seq("emergency") == 2
        assert reopened.last_seq("telemetry/anc") == 41
        assert reopened.last_seq("telemetry/audio") == 0


@pytest.mark.parametrize("first_use", ["open", "last_seq", "pending", "put"])
def test_a_store_not_opened_now_opens_on_open_or_first_use(tmp_path: Path, first_use: str) -> None:
    with DurableStore.in_dir(tmp_path) as earlier:
        count_to(earlier, "emergency", 3)
        kept = message("emergency", 64)
        earlier.put(kept)

    store = DurableStore.in_dir(tmp_path / "new", open_now=False)
    assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new" / STORE_FILE_NAME).exists()
    store.close()  # closing a store never opened is allowed
    assert not (tmp_path / "new" / STORE_FILE_NAME).exists()

    with DurableStore.in_dir(tmp_path, open_now=False) as store:
        if first_use == "open":
            store.open()
            store.open()  # a second open changes nothing
        elif first_use == "put":
            store.put(message("telemetry", 10))
        else:
            getattr(store, first_use)("emergency")
        # The counters and byte count are those of the file, whatever opened it.
        assert store.last_seq("emergency") == 3
        assert store.pending("emergency") == [kept]
        assert store.stats().bytes == 64 + (10 if first_use == "put" else 0)


def numbered(seq: int, size: int = 10) -> StoredMessage:
    """An emergency whose payload carries its ``seq``, as the reporter builds it."""
    return StoredMessage(
        msg_id=uuid.uuid4().hex,
        lane="emergency",
        topic="anc/test/emergency",
        payload=seq.to_bytes(4, "big") + bytes(size - 4),
    )


def test_a_seq_is_used_only_by_a_committed_message(tmp_path: Path) -> None:
    with DurableStore.in_dir(tmp_path, max_bytes=25) as store:
        first = store.put_numbered("emergency", numbered)
        second = store.put_numbered("emergency", numbered)
        with pytest.raises(BufferFull):
            store.put_numbered("emergency", numbered)  # refused: its number is not used
        store.max_bytes = 100
        third = store.put_numbered("emergency", numbered)

    with DurableStore.in_dir(tmp_path) as reopened:
        assert [m.msg_id for m in reopened.pending()] == [m.msg_id for m in (first, second, third)]
        assert [int.from_bytes(m.payload[:4], "big") for m in reopened.pending()] == [1, 2, 3]
        assert reopened.put_numbered("emergency", numbered).payload[:4] == (4).to_bytes(4, "big")


def test_messages_numbered_from_many_threads_are_stored_in_seq_order(store: DurableStore) -> None:
    def report_many() -> None:
        for _ in range(25):
            store.put_numbered("emergency", numbered)

    threads = [threading.Thread(target=report_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    seqs = [int.from_bytes(m.payload[:4], "big") for m in store.pending()]
    assert seqs == list(range(1, 201))  # row order (the restart re-send order) is seq order


def test_over_max_bytes_the_oldest_telemetry_is_evicted_never_an_emergency(tmp_path: Path) -> None:
    with DurableStore(tmp_path / "s.sqlite3", max_bytes=1000) as store:
        emergency = message("emergency", 300)
        old, middle, new = (message("telemetry", 200, records=10) for _ in range(3))
        for entry in (emergency, old, middle, new):
            assert store.put(entry) == 0  # 900 bytes: everything fits

        late_emergency = message("emergency", 300)
        evicted = store.put(late_emergency)

        # 900 + 300 - 1000 = 200 bytes had to go: exactly the oldest telemetry batch.
        assert evicted == 10
        assert [m.msg_id for m in store.pending()] == [
            emergency.msg_id,
            late_emergency.msg_id,
            middle.msg_id,
            new.msg_id,
        ]
        stats = store.stats()
        assert (stats.bytes, stats.evicted_messages, stats.evicted_records) == (1000, 1, 10)


def test_evictions_add_up_and_one_insert_may_evict_several_batches(tmp_path: Path) -> None:
    with DurableStore(tmp_path / "s.sqlite3", max_bytes=1000) as store:
        batches = [message("telemetry", 250, records=5 + n) for n in range(4)]  # 1000 bytes
        for entry in batches:
            store.put(entry)
        # 600 more bytes: the three oldest batches (5 + 6 + 7 records) make room.
        assert store.put(message("emergency", 600)) == 18
        assert store.put(message("telemetry", 250, records=3)) == 8  # then the fourth
        stats = store.stats()
        assert (stats.evicted_messages, stats.evicted_records) == (4, 26)
        assert stats.bytes == 850


def test_storing_a_stored_msg_id_again_evicts_nothing(tmp_path: Path) -> None:
    with DurableStore(tmp_path / "s.sqlite3", max_bytes=100) as store:
        entry = message("telemetry", 90, records=4)
        store.put(entry)
        assert store.put(entry) == 0
        assert store.stats().bytes == 90


def test_a_data_dir_is_created_with_its_parents(tmp_path: Path) -> None:
    with DurableStore.in_dir(tmp_path / "a" / "b" / "c") as store:
        store.put(message("emergency"))
    assert (tmp_path / "a" / "b" / "c" / STORE_FILE_NAME).exists()


@pytest.mark.parametrize("max_bytes", [0, -1])
def test_max_bytes_must_be_positive(tmp_path: Path, max_bytes: int) -> None:
    with pytest.raises(ValueError, match=f"max_bytes must be positive, got {max_bytes}"):
        DurableStore(tmp_path / "s.sqlite3", max_bytes=max_bytes)
    with DurableStore(tmp_path / "s.sqlite3", max_bytes=1) as tiny:  # one byte is a size
        assert tiny.max_bytes == 1


def test_when_only_emergencies_are_left_a_new_message_is_refused_not_dropped(
    tmp_path: Path,
) -> None:
    with DurableStore(tmp_path / "s.sqlite3", max_bytes=1000) as store:
        kept = [message("emergency", 400), message("emergency", 400)]
        telemetry = message("telemetry", 150)
        for entry in (*kept, telemetry):
            store.put(entry)

        with pytest.raises(BufferFull, match="emergencies are never evicted"):
            store.put(message("emergency", 400))
        with pytest.raises(BufferFull):
            store.put(message("telemetry", 300))

        # Refusing evicted nothing: the telemetry that could not make room is still there.
        assert store.pending() == [*kept, telemetry]
        assert store.stats().evicted_messages == 0


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_new_store_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / STORE_FILE_NAME
    garbage = b"this is not an SQLite database\n" * 200
    path.write_bytes(garbage)

    with (
        caplog.at_level(logging.ERROR, logger="ancsync.durable.store"),
        DurableStore(path) as store,
    ):
        assert store.pending() == []
        entry = message("emergency")
        store.put(entry)
        assert store.pending() == [entry]

    moved = list(tmp_path.glob(f"{STORE_FILE_NAME}.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes() == garbage
    assert "moved it to" in caplog.text
    assert str(moved[0]) in caplog.text


def test_a_damaged_database_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / STORE_FILE_NAME
    with DurableStore(path) as store:
        for _ in range(50):
            store.put(message("telemetry", 2000))
    # Fold the WAL into the main file, then scribble over its b-tree pages (keep page 1's header).
    subprocess.run(["sqlite3", str(path), "PRAGMA wal_checkpoint(TRUNCATE);"], check=False)
    data = bytearray(path.read_bytes())
    assert len(data) > 20_000
    data[4096:20_000] = os.urandom(20_000 - 4096)
    path.write_bytes(bytes(data))

    with (
        caplog.at_level(logging.ERROR, logger="ancsync.durable.store"),
        DurableStore(path) as store,
    ):
        assert store.pending() == []
        store.put(message("emergency"))

    assert len(list(tmp_path.glob(f"{STORE_FILE_NAME}.corrupt-*Z"))) == 1  # and its -wal, -shm
    assert "is corrupt" in caplog.text


def test_a_damaged_store_keeps_the_emergencies_and_counters_it_can_still_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / STORE_FILE_NAME
    emergencies = [message("emergency", 100) for _ in range(3)]
    with DurableStore(path) as store:
        for entry in emergencies:
            store.put_numbered("emergency", lambda seq, entry=entry: entry)
        count_to(store, "telemetry/anc", 77)
        for _ in range(40):
            store.put(message("telemetry", 1500))
    assert not path.with_name(f"{STORE_FILE_NAME}-wal").exists()  # closing folded the WAL in
    # Scribble over the last three pages: telemetry rows, stored after the emergencies, so the
    # file fails its integrity check while the emergency rows and the counters stay readable.
    data = bytearray(path.read_bytes())
    assert len(data) > 20 * 4096
    data[-3 * 4096 :] = os.urandom(3 * 4096)
    path.write_bytes(bytes(data))

    with (
        caplog.at_level(logging.ERROR, logger="ancsync.durable.store"),
        DurableStore(path) as store,
    ):
        assert store.pending() == emergencies
        assert store.stats().bytes == 300
        assert store.last_seq("emergency") == 3
        assert store.last_seq("telemetry/anc") == 77

    assert len(list(tmp_path.glob(f"{STORE_FILE_NAME}.corrupt-*Z"))) == 1  # and its -wal, -shm
    assert "holding the 3 pending emergencies and 2 seq counters" in caplog.text
    with DurableStore(path) as reopened:  # the rescue itself was committed
        assert reopened.pending() == emergencies


@contextmanager
def as_user_nobody() -> Iterator[None]:
    """Run the block as user nobody (real and effective ids), keeping root as the saved id."""
    if os.geteuid() != 0:
        pytest.fail("needs root, to create a file that another user then cannot open: run as root")
    os.setresgid(65534, 65534, 0)
    os.setresuid(65534, 65534, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)


@pytest.mark.parametrize("mode", [0o600, 0o644], ids=["unreadable", "read-only"])
def test_a_store_file_of_another_user_is_an_error_and_is_left_untouched(mode: int) -> None:
    # A device run once under sudo: a root-owned file in a directory the device may write to.
    # (tmp_path's parents are private to root, so nobody needs a directory of its own.)
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o777)
        path = Path(directory, STORE_FILE_NAME)
        kept = message("emergency")
        with DurableStore(path) as store:
            count_to(store, "emergency", 6)
            store.put_numbered("emergency", lambda seq: kept)
        path.chmod(mode)

        with as_user_nobody(), pytest.raises(StorageError) as caught:
            DurableStore(path)

        assert f"{str(path)!r} cannot be read and written by this user (uid 65534)" in str(
            caught.value
        )
        assert f"chown 65534 {path}" in str(caught.value)
        # Nothing moved aside or created (the lock file is root's, from the first open).
        assert sorted(os.listdir(directory)) == [STORE_FILE_NAME, STORE_FILE_NAME + LOCK_SUFFIX]
        with DurableStore(path) as store:
            assert store.pending() == [kept]
            assert store.last_seq("emergency") == 7


def test_a_data_dir_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")

    with pytest.raises(StorageError, match="data_dir"):
        DurableStore.in_dir(blocker / "data")


def test_sqlite_running_out_of_room_is_a_storage_error(tmp_path: Path) -> None:
    with DurableStore(tmp_path / "s.sqlite3") as store:
        kept = message("emergency", 100)
        store.put(kept)
        # SQLite's own size cap reports SQLITE_FULL exactly like a full disk does.
        store._conn.execute("PRAGMA max_page_count = 8")
        stored, error = fill_until_error(store, 4000)

        assert "disk is full" in str(error)
        assert store.pending() == [kept, *stored]


# -- a real tiny file system: needs root (mount); the container running CI has it ---------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "tiny", "256k") as mount_point:
        yield mount_point


def test_a_full_disk_is_a_clear_error_and_nothing_stored_is_lost(tiny_disk: Path) -> None:
    store = DurableStore.in_dir(tiny_disk)
    try:
        stored, error = fill_until_error(store, 16_000)

        assert "disk is full" in str(error)
        assert str(tiny_disk) in str(error)
        assert len(stored) > 3
        assert store.pending() == stored
    finally:
        store.close()


def test_a_read_only_file_system_is_a_clear_error(tiny_disk: Path, tmp_path: Path) -> None:
    with DurableStore.in_dir(tiny_disk) as store:
        store.put(message("emergency"))
    with read_only_view(tiny_disk, tmp_path / "read-only") as read_only:
        with pytest.raises(StorageError, match="read-only file system"):
            DurableStore.in_dir(read_only)
        # Nothing was moved aside or deleted: the file still holds its emergency.
        with DurableStore.in_dir(tiny_disk) as store:
            assert len(store.pending("emergency")) == 1


def test_a_second_store_on_the_same_file_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = DurableStore.in_dir(tmp_path)
    try:
        with pytest.raises(DataDirInUse) as caught:
            DurableStore.in_dir(tmp_path)
        assert f"data directory {str(tmp_path)!r} is in use" in str(caught.value)
        assert f"process {os.getpid()}" in str(caught.value)
        assert "one device process per data_dir" in str(caught.value)
        assert caught.value.holder == os.getpid()
        first.put(message("emergency"))  # the first store is unaffected
    finally:
        first.close()
    with DurableStore.in_dir(tmp_path) as second:
        assert len(second.pending()) == 1


def test_a_store_dropped_without_close_releases_its_lock(tmp_path: Path) -> None:
    store = DurableStore.in_dir(tmp_path)
    del store
    gc.collect()
    with DurableStore.in_dir(tmp_path) as reopened:
        assert reopened.pending() == []


def test_a_file_system_without_locks_is_a_warning_not_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with (
        caplog.at_level(logging.WARNING, logger="ancsync.durable.store"),
        DurableStore.in_dir(tmp_path) as store,
    ):
        store.put(message("emergency"))
        assert len(store.pending()) == 1
    assert "cannot lock" in caplog.text
    assert "run one device process per data_dir" in caplog.text
