"""Crash safety: a device process killed with SIGKILL loses no emergency it reported.

And a job it was running when killed, between progress() and succeed(), is resumed by the next
process and ends SUCCEEDED, the service having seen every status update once, in order.

A child process reports emergencies while the broker is down and is killed mid-stream. A new
process on the same data directory (and the emulator, back up) must deliver every event whose
``report_emergency`` had returned: the rules sink shows each ``event_id`` (stored once).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from ancsync.emulator.rules import RulesSink
from ancsync.emulator.server import Emulator

pytestmark = pytest.mark.slow

THING = "anc-device-001"
DEVICE_SCRIPT = Path(__file__).with_name("crash_device.py")
KILL_AFTER = 20  # events reported (returned) before the SIGKILL


def device_environment(certs_dir: Path, port: int, data_dir: Path) -> dict[str, str]:
    device = certs_dir / THING
    return {
        **os.environ,
        "IOT_ENDPOINT": "127.0.0.1",
        "IOT_PORT": str(port),
        "IOT_THING_NAME": THING,
        "IOT_CERT_PATH": str(device / "cert.pem"),
        "IOT_KEY_PATH": str(device / "private.key"),
        "IOT_ROOT_CA_PATH": str(certs_dir / "ca.pem"),
        "ANCSYNC_DATA_DIR": str(data_dir),
    }


async def start_device(
    environment: dict[str, str], count: int, script: Path = DEVICE_SCRIPT
) -> Process:
    return await anyio.open_process(
        [sys.executable, str(script), str(count)],
        env=environment,
        stderr=None,  # the device's log goes to the test output
    )


async def read_lines(process: Process, until: int | None = None) -> list[str]:
    """Lines of the device's stdout: ``until`` of them, or all of them up to EOF."""
    assert process.stdout is not None
    stream = BufferedByteReceiveStream(process.stdout)
    lines: list[str] = []
    while until is None or len(lines) < until:
        try:
            line = await stream.receive_until(b"\n", 1000)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            break  # killed: a half-written last line is no promise
        lines.append(line.decode())
    return lines


def delivered(rules: RulesSink) -> set[str]:
    return {event.event_id for event in rules.emergencies(THING)}


# The same device written with the blocking API (ancsync.blocking) keeps the same promise.
@pytest.mark.parametrize(
    "script",
    [DEVICE_SCRIPT, DEVICE_SCRIPT.with_name("blocking_crash_device.py")],
    ids=["async", "blocking"],
)
async def test_every_reported_emergency_survives_a_sigkill(tmp_path: Path, script: Path) -> None:
    certs_dir, data_dir = tmp_path / "certs", tmp_path / "data"
    with anyio.fail_after(60):
        async with Emulator(certs_dir, things=(THING,)) as probe:
            port = probe.port  # the emulator comes back on this port later; down until then
        environment = device_environment(certs_dir, port, data_dir)

        first = await start_device(environment, count=-1, script=script)
        killed = False
        try:
            assert await read_lines(first, until=1) == ["ready"]
            reported = await read_lines(first, until=KILL_AFTER)
            first.send_signal(signal.SIGKILL)
            killed = True
            reported += await read_lines(first)  # whatever it printed before dying
        finally:
            # Not kill() once it is dead: Popen.send_signal polls first and would reap the child
            # before asyncio's watcher does, which then reports exit status 255.
            if not killed:
                first.kill()
            await first.wait()
        assert first.returncode == -signal.SIGKILL
        assert len(reported) >= KILL_AFTER

        async with Emulator(certs_dir, things=(THING,), port=port) as emulator:
            second = await start_device(environment, count=0, script=script)
            try:
                await emulator.rules.wait_for(lambda rules: set(reported) <= delivered(rules))
            finally:
                second.terminate()
                await second.wait()

            stored = emulator.rules.emergencies(THING)
            assert len({event.event_id for event in stored}) == len(stored)  # stored once
            # Every seq from the first to the last arrived (a killed, unreturned call may add
            # one more event at the end, never a hole).
            assert emulator.rules.gaps(THING) == []


JOBS_DEVICE_SCRIPT = Path(__file__).with_name("crash_jobs_device.py")


async def start_jobs_device(environment: dict[str, str]) -> Process:
    return await anyio.open_process([sys.executable, str(JOBS_DEVICE_SCRIPT)], env=environment)


async def test_a_job_killed_mid_way_resumes_and_succeeds(tmp_path: Path) -> None:
    certs_dir, data_dir = tmp_path / "certs", tmp_path / "data"
    with anyio.fail_after(60):
        async with Emulator(certs_dir, things=(THING,)) as emulator:
            environment = device_environment(certs_dir, emulator.port, data_dir)
            await emulator.jobs.create_job(
                "nm-1", [THING], {"operation": "update_noise_model", "model": "office-v2"}
            )
            first = await anyio.open_process(
                [sys.executable, str(JOBS_DEVICE_SCRIPT)], env=environment
            )
            try:
                assert await read_lines(first, until=2) == ["ready", "progressed"]
            finally:
                first.send_signal(signal.SIGKILL)
                await first.wait()
            assert first.returncode == -signal.SIGKILL

            second = await anyio.open_process(
                [sys.executable, str(JOBS_DEVICE_SCRIPT)], env=environment
            )
            try:
                assert await read_lines(second, until=3) == ["ready", "resumed", "succeeded"]
                await emulator.jobs.wait_for_status("nm-1", THING, "SUCCEEDED")
            finally:
                second.terminate()
                await second.wait()

            history = emulator.jobs.store.execution("nm-1", THING).history
            assert [(h["status"], h["statusDetails"].get("step")) for h in history] == [
                ("IN_PROGRESS", None),
                ("IN_PROGRESS", "download"),
                ("IN_PROGRESS", "apply"),
                ("SUCCEEDED", None),
            ]
            assert [h["versionNumber"] for h in history] == [2, 3, 4, 5]
