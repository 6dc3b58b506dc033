"""report_emergency returns only once the event is on disk: the kernel sees the fsync.

A real process builds an orchestrator and reports one emergency under ``strace``, which logs
every ``fsync``/``fdatasync`` the process makes after a marker; the same process queuing one
metrics record instead is the baseline (telemetry is not fsynced; both sync alike at exit).
Without the emergency's own fsync, a power cut right after ``report_emergency`` returned could
lose the event.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEVICE_SCRIPT = Path(__file__).with_name("fsync_device.py")
MARKER = "--- measured from here ---"


def disk_syncs_after_marker(tmp_path: Path, what: str) -> int:
    """The fsync and fdatasync calls a device process makes after the marker."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed: `apt-get install strace` (make test does it)")
    trace = tmp_path / f"{what}.strace"
    subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=write,fsync,fdatasync",
            "-o",
            str(trace),
            sys.executable,
            str(DEVICE_SCRIPT),
            str(tmp_path / f"{what}-data"),
            what,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    lines = trace.read_text().splitlines()
    [start] = [i for i, line in enumerate(lines) if MARKER in line]
    return sum("fsync(" in line or "fdatasync(" in line for line in lines[start:])


def test_an_emergency_is_fsynced_before_report_emergency_returns(tmp_path: Path) -> None:
    baseline = disk_syncs_after_marker(tmp_path, "metrics")
    emergency = disk_syncs_after_marker(tmp_path, "emergency")
    # Both processes sync the same at exit (SQLite's checkpoint on close); the emergency's
    # commit must add its own.
    assert emergency > baseline, "the emergency's commit was not fsynced"
