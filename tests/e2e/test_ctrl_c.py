"""Ctrl-C, as a user presses it: a real SIGINT to a real process, and its exit code.

A device program (the getting-started snippet, the README quick start, the examples) stops
cleanly with exit code 130 and no traceback. Commands that run until Ctrl-C (simulate, shadow
watch) end with 0; a command interrupted before its end (demo) with 130.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from ancsync.emulator.server import Emulator

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
ANCSYNC = str(Path(sys.executable).with_name("ancsync"))
THING = "anc-device-001"
TIMEOUT = 60  # a fresh interpreter, an emulator of its own for the examples, a clean stop
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
INTERRUPTED = 130


def snippet(page: Path, first_line: str) -> str:
    """The Python block of ``page`` whose text starts with ``first_line``."""
    [code] = [
        code for code in PYTHON_BLOCK.findall(page.read_text()) if code.startswith(first_line)
    ]
    return code


def without_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("IOT_", "ANCSYNC_"))}


@asynccontextmanager
async def started(
    command: list[str], env: dict[str, str], cwd: Path | None = None
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream, BufferedByteReceiveStream]]:
    """Run ``command``; yield it with its stdout and stderr, to read lines from."""
    process = await anyio.open_process(
        command, env={**env, "PYTHONUNBUFFERED": "1"}, cwd=cwd, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        yield (
            process,
            BufferedByteReceiveStream(process.stdout),
            BufferedByteReceiveStream(process.stderr),
        )
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await process.aclose()


async def wait_for_line(stream: BufferedByteReceiveStream, start: str) -> None:
    while not (await stream.receive_until(b"\n", 65536)).decode().startswith(start):
        pass


async def read_rest(stream: BufferedByteReceiveStream) -> str:
    chunks = []
    try:
        while True:
            chunks.append(await stream.receive())
    except anyio.EndOfStream:
        return b"".join(chunks).decode()


async def interrupt(process: Process, stderr: BufferedByteReceiveStream) -> tuple[int, str]:
    """Press Ctrl-C: the exit code, and all the process wrote to stderr afterwards."""
    process.send_signal(signal.SIGINT)
    rest = await read_rest(stderr)
    return await process.wait(), rest


async def test_the_getting_started_device_stops_cleanly(emulator: Emulator, tmp_path: Path) -> None:
    device = tmp_path / "device.py"
    device.write_text(snippet(ROOT / "docs" / "getting-started.md", "# device.py"))
    env = {**os.environ, **emulator.device_settings(THING), "TELEMETRY_BATCH_INTERVAL": "0.2"}
    with anyio.fail_after(TIMEOUT):
        async with started([sys.executable, str(device)], env) as (process, _, stderr):
            # Running for real: its telemetry reached the cloud side.
            await emulator.rules.wait_for(lambda sink: sink.record_count(THING) > 0)
            code, output = await interrupt(process, stderr)
    assert code == INTERRUPTED, output
    assert output == ""  # no traceback, nothing at all
    stored = emulator.shadows.store.shadow(THING, None)
    assert stored is not None
    assert stored.state["reported"]["status"] == "offline"  # it flushed and said so


async def test_the_readme_quick_start_stops_cleanly(emulator: Emulator, tmp_path: Path) -> None:
    # As written: an AWS endpoint this machine cannot reach, so it runs offline, as promised.
    (tmp_path / "quick_start.py").write_text(snippet(ROOT / "README.md", "import sys"))
    device = emulator.certs.device(THING)
    shutil.copy(device.cert, tmp_path / "cert.pem")
    shutil.copy(device.key, tmp_path / "private.key")
    command = [sys.executable, "quick_start.py"]
    with anyio.fail_after(TIMEOUT):
        async with started(command, without_settings(), tmp_path) as (process, stdout, stderr):
            await wait_for_line(stdout, "running; Ctrl-C to stop")  # the emergency is on disk
            code, output = await interrupt(process, stderr)
    assert code == INTERRUPTED, output
    assert "Traceback" not in output
    assert "KeyboardInterrupt" not in output


EMULATOR_STARTED = "no IOT_ENDPOINT set: using a local emulator"


@pytest.mark.parametrize(
    ("example", "line"),
    [
        ("basic_connection.py", EMULATOR_STARTED),
        ("shadow_sync.py", EMULATOR_STARTED),
        ("telemetry_demo.py", EMULATOR_STARTED),
        ("full_integration.py", "cloud asks for"),  # in its control loop
    ],
)
async def test_an_example_stops_cleanly(example: str, line: str, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "examples" / example)]
    with anyio.fail_after(TIMEOUT):
        async with started(command, without_settings(), tmp_path) as (process, stdout, stderr):
            await wait_for_line(stdout, line)
            code, output = await interrupt(process, stderr)
    assert code == INTERRUPTED, output
    assert "Traceback" not in output


async def test_simulate_ends_at_ctrl_c_with_its_status(emulator: Emulator) -> None:
    env = {**os.environ, **emulator.device_settings(THING)}
    with anyio.fail_after(TIMEOUT):
        async with started([ANCSYNC, "simulate"], env) as (process, stdout, stderr):
            await wait_for_line(stderr, "connected to")
            code, output = await interrupt(process, stderr)
            summary = await read_rest(stdout)
    assert code == 0, output
    assert "SIGINT: stopping" in output
    assert "Traceback" not in output
    assert summary.startswith(f"{THING} ran ")


async def test_shadow_watch_ends_at_ctrl_c(emulator: Emulator) -> None:
    command = [
        ANCSYNC,
        "shadow",
        "watch",
        "--thing",
        THING,
        "--certs-dir",
        str(emulator.certs.root),
        "--port",
        str(emulator.port),
    ]
    with anyio.fail_after(TIMEOUT):
        async with started(command, dict(os.environ)) as (process, stdout, stderr):
            await wait_for_line(stdout, f"{THING}: no classic shadow yet")
            code, output = await interrupt(process, stderr)
    assert code == 0, output
    assert output == ""


async def test_an_interrupted_demo_ends_with_130(tmp_path: Path) -> None:
    command = [ANCSYNC, "demo", "--duration", "30"]
    with anyio.fail_after(TIMEOUT):
        async with started(command, dict(os.environ), tmp_path) as (process, stdout, stderr):
            await wait_for_line(stdout, "  operator sets desired")
            code, output = await interrupt(process, stderr)
    assert code == INTERRUPTED, output
    assert output == ""  # the shell shows ^C; no traceback
