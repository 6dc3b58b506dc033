"""Run the local emulator (`ancsync emulator`) in its own process for a benchmark.

The broker must not share the benchmarked event loop: its work would show up as the SDK's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

THING = "anc-device-001"
_READY = re.compile(rb"ready: emulator listening on 127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class EmulatorProcess:
    """Where the running emulator listens and the device files it generated."""

    port: int
    certs_dir: Path
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the emulator process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def device_files(self, thing: str = THING) -> dict[str, Path]:
        """``cert_path``, ``key_path`` and ``root_ca_path`` for :class:`ancsync.IoTConnection`."""
        return {
            "cert_path": self.certs_dir / thing / "cert.pem",
            "key_path": self.certs_dir / thing / "private.key",
            "root_ca_path": self.certs_dir / "ca.pem",
        }


@asynccontextmanager
async def running_emulator(
    workdir: Path, things: Sequence[str] = (THING,)
) -> AsyncIterator[EmulatorProcess]:
    """Start ``ancsync emulator`` for ``things`` on a free 127.0.0.1 port under ``workdir``."""
    certs_dir = workdir / "certs"
    command = [
        str(Path(sys.executable).with_name("ancsync")),
        "emulator",
        "--port",
        "0",
        "--certs-dir",
        str(certs_dir),
        "--db",
        str(workdir / "emulator.db"),
        *(argument for thing in things for argument in ("--thing", thing)),
    ]
    process = await anyio.open_process(command, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        output = BufferedByteReceiveStream(process.stdout)
        seen: deque[bytes] = deque(maxlen=30)  # shown if it never gets ready
        match = None
        with anyio.move_on_after(30):
            while match is None:
                line = await output.receive_until(b"\n", 10**5)
                seen.append(line)
                match = _READY.search(line)
        if match is None:
            raise RuntimeError("the emulator did not start:\n" + b"\n".join(seen).decode())
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, output)  # so the emulator never blocks on a full pipe
            yield EmulatorProcess(int(match.group(1)), certs_dir, process.pid)
            tg.cancel_scope.cancel()
    finally:
        process.terminate()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _drain(output: BufferedByteReceiveStream) -> None:
    try:
        while await output.receive():
            pass
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return
