"""A bad data directory, with real device processes: read-only, full, corrupt, shared by two.

The rule: the device says what is wrong and how to fix it, loses nothing it accepted, and keeps
running where it can. Each test runs ``data_dir_device.py`` processes against the emulator (the
rules sink is the oracle for what reached the cloud) and looks at the data directory itself.
A read-only directory is a read-only bind mount (root ignores mode bits) and a full disk a small
tmpfs: real file systems, not mocks (see ``tests/helpers.py``).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from helpers import read_only_view, tmpfs

from ancsync.durable.store import STORE_FILE_NAME, DurableStore
from ancsync.emulator.server import Emulator

pytestmark = pytest.mark.slow

THING = "anc-device-001"
DEVICE_SCRIPT = Path(__file__).with_name("data_dir_device.py")
CANNOT_START = 3  # data_dir_device.py's exit code when the orchestrator cannot be built


class Device:
    """A running ``data_dir_device.py``: one command line in, one answer line out."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self.process = process
        self._lines = BufferedByteReceiveStream(process.stdout)

    async def line(self) -> str:
        return (await self._lines.receive_until(b"\n", 1 << 20)).decode()

    async def ask(self, command: str) -> str:
        assert self.process.stdin is not None
        await self.process.stdin.send(command.encode() + b"\n")
        return await self.line()

    async def emergency(self) -> tuple[str, int]:
        """Report one; its event_id and seq (fails the test if it was refused)."""
        answer = await self.ask("emergency")
        kind, event_id, seq = answer.split()
        assert kind == "emergency", answer
        return event_id, int(seq)

    async def stop(self) -> int:
        """End stdin (the device stops cleanly, storing what is unsent); its exit code."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        return await self.process.wait()


@asynccontextmanager
async def device(environment: dict[str, str], log: Path) -> AsyncIterator[Device]:
    """A device process, its log (stderr) appended to ``log``; killed if still running."""
    with log.open("ab") as stderr:
        process = await anyio.open_process(
            [sys.executable, str(DEVICE_SCRIPT)], env=environment, stderr=stderr
        )
    try:
        yield Device(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def environment(device_settings: dict[str, str], data_dir: Path) -> dict[str, str]:
    """A device process's environment: ``Emulator.device_settings`` and the data directory."""
    return {
        **device_settings,
        "ANCSYNC_DATA_DIR": str(data_dir),
        "PATH": os.environ.get("PATH", ""),
    }


async def emulator_gone(certs_dir: Path) -> tuple[int, dict[str, str]]:
    """Run an emulator once (creating its certificates) and stop it: its port and the device
    settings for it. ``Emulator(certs_dir, things=(THING,), port=port)`` brings it back."""
    async with Emulator(certs_dir, things=(THING,)) as emulator:
        return emulator.port, emulator.device_settings(THING)


def delivered(emulator: Emulator) -> set[str]:
    return {event.event_id for event in emulator.rules.emergencies(THING)}


def contents(directory: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(directory.iterdir())}


# -- two processes, one data directory ------------------------------------------------------


async def test_a_second_process_on_a_data_dir_is_refused_naming_it(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "device.log"
    with anyio.fail_after(60):
        async with Emulator(tmp_path / "certs", things=(THING,)) as emulator:
            settings = environment(emulator.device_settings(THING), data_dir)
            async with device(settings, log) as first:
                assert await first.line() == "ready"
                async with device(settings, log) as second:
                    refusal = await second.line()
                    assert refusal.startswith("error DataDirInUse: "), refusal
                    assert await second.process.wait() == CANNOT_START
                # The first device carries on, and its emergencies get through.
                event_id, seq = await first.emergency()
                await emulator.rules.wait_for(lambda _: event_id in delivered(emulator))
                # A holder that dies (even by SIGKILL) leaves no stale lock behind.
                first.process.send_signal(signal.SIGKILL)
                assert await first.process.wait() == -signal.SIGKILL
            async with device(settings, log) as third:
                assert await third.line() == "ready"
                later_id, later_seq = await third.emergency()
                await emulator.rules.wait_for(lambda _: later_id in delivered(emulator))
                assert await third.stop() == 0

    assert f"the data directory {str(data_dir)!r} is in use" in refusal
    assert f"already open in process {first.process.pid}" in refusal
    assert "Run one device process per data_dir" in refusal
    assert "ANCSYNC_DATA_DIR" in refusal
    assert (seq, later_seq) == (1, 2)  # one counter, never used by two processes at once


# -- a read-only data directory -------------------------------------------------------------


async def test_a_read_only_data_dir_is_a_clear_error_and_its_emergencies_wait(
    tmp_path: Path,
) -> None:
    certs_dir, data_dir, log = tmp_path / "certs", tmp_path / "data", tmp_path / "device.log"
    with anyio.fail_after(60):
        port, offline = await emulator_gone(certs_dir)
        # A device reports an emergency while offline and stops: it waits in the store.
        async with device(environment(offline, data_dir), log) as first:
            assert await first.line() == "ready"
            event_id, _ = await first.emergency()
            assert await first.stop() == 0
        before = contents(data_dir)
        assert STORE_FILE_NAME in before

        with read_only_view(data_dir, tmp_path / "read-only") as read_only:
            async with device(environment(offline, read_only), log) as refused:
                error = await refused.line()
                assert error.startswith("error StorageError: "), error
                assert await refused.process.wait() == CANNOT_START
        assert contents(data_dir) == before  # nothing moved aside, written or deleted

        # Writable again: the next start sends the emergency that waited.
        async with (
            Emulator(certs_dir, things=(THING,), port=port) as emulator,
            device(environment(emulator.device_settings(THING), data_dir), log) as again,
        ):
            assert await again.line() == "ready"
            await emulator.rules.wait_for(lambda _: event_id in delivered(emulator))
            assert await again.stop() == 0

    assert str(read_only / STORE_FILE_NAME) in error
    assert "read-only file system" in error
    assert "point data_dir (env ANCSYNC_DATA_DIR) at a writable directory" in error


async def test_a_fresh_device_on_a_read_only_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    empty, log = tmp_path / "empty", tmp_path / "device.log"
    empty.mkdir()
    with anyio.fail_after(60):
        _, offline = await emulator_gone(tmp_path / "certs")
        with read_only_view(empty, tmp_path / "read-only") as read_only:
            async with device(environment(offline, read_only), log) as refused:
                error = await refused.line()
                assert error.startswith("error StorageError: "), error
                assert await refused.process.wait() == CANNOT_START
    assert list(empty.iterdir()) == []  # no lock file, no store: nothing could be written
    assert str(read_only / STORE_FILE_NAME) in error
    assert "read-only file system" in error
    assert "point data_dir (env ANCSYNC_DATA_DIR) at a writable directory" in error


# -- a full disk ----------------------------------------------------------------------------


@contextmanager
def filled(directory: Path) -> Iterator[Path]:
    """Fill the file system holding ``directory`` to the last page; free it on leaving."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            with pytest.raises(OSError, match="No space left") as full:  # noqa: PT012
                while True:
                    os.write(fd, chunk)
            assert full.value.errno == errno.ENOSPC
        yield filler
    finally:
        os.close(fd)
        filler.unlink()


async def test_a_full_disk_refuses_new_emergencies_clearly_and_keeps_the_accepted(
    tmp_path: Path,
) -> None:
    certs_dir, log = tmp_path / "certs", tmp_path / "device.log"
    with tmpfs(tmp_path / "disk", "2m") as disk, anyio.fail_after(90):
        data_dir = disk / "data"
        port, offline = await emulator_gone(certs_dir)
        async with device(environment(offline, data_dir), log) as running:
            assert await running.line() == "ready"
            accepted = [await running.emergency() for _ in range(3)]
            with filled(disk):
                answer = await running.ask("emergency")
                refusals = 1 if answer.startswith("refused ") else 0
                for _ in range(50):  # SQLite may still have room in pages it holds
                    if refusals:
                        break
                    accepted.append(await running.emergency())
                    answer = await running.ask("emergency")
                    refusals += answer.startswith("refused ")
                assert await running.ask("metrics 30") == "queued 30"
                status = await running.ask("status")

                # The broker comes back while the disk is still full: every accepted
                # emergency is delivered, and telemetry goes without the store's safety net.
                async with Emulator(certs_dir, things=(THING,), port=port) as emulator:
                    accepted_ids = {event_id for event_id, _ in accepted}
                    await emulator.rules.wait_for(lambda _: accepted_ids <= delivered(emulator))
                    await emulator.rules.wait_for(
                        lambda sink: sink.record_count(THING, "anc") == 30
                    )
                    after_full = await running.ask("emergency")
            # Space again: the same process (no restart) stores and sends emergencies.
            async with Emulator(certs_dir, things=(THING,), port=port) as emulator:
                event_id, seq = await running.emergency()
                await emulator.rules.wait_for(lambda _: event_id in delivered(emulator))
                gaps = emulator.rules.gaps(THING)
            assert await running.stop() == 0
        with DurableStore.in_dir(data_dir) as store:
            left = store.pending("emergency")

    assert answer.startswith("refused StorageError: ")
    assert str(data_dir / STORE_FILE_NAME) in answer
    assert "the disk is full; free space on the device" in answer
    assert '"last_error":"durable outbox' in status
    assert "disk is full" in status
    assert after_full.startswith("refused StorageError: ")  # still full: still refused
    # A refused emergency used no seq: the numbers go on from the last accepted one.
    assert [seq for _, seq in accepted] == list(range(1, len(accepted) + 1))
    assert seq == len(accepted) + 1
    assert gaps == []
    device_log = log.read_text()
    assert "NOT reported" in device_log
    # The deletes that failed on the full disk were retried once it had room: the next start
    # will not send those emergencies again.
    assert left == []
    assert "stay stored for now (deleting them is retried" in device_log


async def test_a_device_started_on_a_full_disk_says_so_and_sends_its_emergency_later(
    tmp_path: Path,
) -> None:
    certs_dir, log = tmp_path / "certs", tmp_path / "device.log"
    with tmpfs(tmp_path / "disk", "256k") as disk, anyio.fail_after(60):
        data_dir = disk / "data"
        port, offline = await emulator_gone(certs_dir)
        async with device(environment(offline, data_dir), log) as first:
            assert await first.line() == "ready"
            event_id, _ = await first.emergency()
            assert await first.stop() == 0
        with filled(disk):
            async with device(environment(offline, data_dir), log) as refused:
                error = await refused.line()
                assert error.startswith("error StorageError: "), error
                assert await refused.process.wait() == CANNOT_START
        # Room again: the next start sends the emergency that waited.
        async with (
            Emulator(certs_dir, things=(THING,), port=port) as emulator,
            device(environment(emulator.device_settings(THING), data_dir), log) as again,
        ):
            assert await again.line() == "ready"
            await emulator.rules.wait_for(lambda _: event_id in delivered(emulator))
            assert await again.stop() == 0

    assert str(data_dir / STORE_FILE_NAME) in error
    # (SQLite says "disk I/O error": it cannot grow its shared-memory file)
    assert "the disk is full; free space on the device or lower the store's max_bytes" in error
    assert "check the storage device" not in error


# -- a corrupt store file -------------------------------------------------------------------


async def test_a_damaged_store_is_moved_aside_and_its_emergencies_still_sent(
    tmp_path: Path,
) -> None:
    certs_dir, data_dir, log = tmp_path / "certs", tmp_path / "data", tmp_path / "device.log"
    store = data_dir / STORE_FILE_NAME
    with anyio.fail_after(60):
        port, offline = await emulator_gone(certs_dir)
        async with device(environment(offline, data_dir), log) as first:
            assert await first.line() == "ready"
            events = [await first.emergency() for _ in range(3)]
            assert await first.ask("metrics 400") == "queued 400"
            assert await first.stop() == 0  # the telemetry batches are stored behind them
        # Garbage over the last pages (telemetry stored after the emergencies): the file
        # fails its integrity check, the emergency rows stay readable.
        data = bytearray(store.read_bytes())
        assert len(data) > 12 * 4096
        data[-3 * 4096 :] = os.urandom(3 * 4096)
        store.write_bytes(bytes(data))
        damaged = bytes(data)

        async with (
            Emulator(certs_dir, things=(THING,), port=port) as emulator,
            device(environment(emulator.device_settings(THING), data_dir), log) as second,
        ):
            assert await second.line() == "ready"
            ids = {event_id for event_id, _ in events}
            await emulator.rules.wait_for(lambda _: ids <= delivered(emulator))
            later_id, later_seq = await second.emergency()
            await emulator.rules.wait_for(lambda _: later_id in delivered(emulator))
            gaps = emulator.rules.gaps(THING)
            assert await second.stop() == 0

    (moved,) = data_dir.glob(f"{STORE_FILE_NAME}.corrupt-*Z")
    assert moved.read_bytes() == damaged  # kept for inspection, as it was
    device_log = log.read_text()
    assert f"durable outbox {store} is corrupt" in device_log
    assert f"moved it to {moved}" in device_log
    assert "holding the 3 pending emergencies" in device_log
    assert later_seq == 4  # the counter was rescued too
    assert gaps == []


async def test_a_store_that_is_not_a_database_is_moved_aside_and_the_device_runs(
    tmp_path: Path,
) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "device.log"
    data_dir.mkdir()
    garbage = b"\x89not an sqlite file\x00\xff" * 500
    (data_dir / STORE_FILE_NAME).write_bytes(garbage)
    with anyio.fail_after(60):
        async with (
            Emulator(tmp_path / "certs", things=(THING,)) as emulator,
            device(environment(emulator.device_settings(THING), data_dir), log) as running,
        ):
            assert await running.line() == "ready"
            event_id, seq = await running.emergency()
            await emulator.rules.wait_for(lambda _: event_id in delivered(emulator))
            assert await running.stop() == 0

    (moved,) = data_dir.glob(f"{STORE_FILE_NAME}.corrupt-*Z")
    assert moved.read_bytes() == garbage
    assert seq == 1
    device_log = log.read_text()
    assert "is corrupt" in device_log
    assert "holding the 0 pending emergencies" in device_log
