"""``ancsync demo`` as a new user runs it: a subprocess in an empty directory."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import orjson
import pytest

pytestmark = pytest.mark.slow

ANCSYNC = str(Path(sys.executable).with_name("ancsync"))


async def test_demo_checks_out_from_a_clean_state(tmp_path: Path) -> None:
    with anyio.fail_after(60):  # 10 s of device time, plus start-up and the final checks
        result = await anyio.run_process(
            [ANCSYNC, "demo", "--duration", "10", "--json"], cwd=tmp_path, check=False
        )
    stdout = result.stdout.decode()
    assert result.returncode == 0, stdout + result.stderr.decode()
    summary = orjson.loads(stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert summary["problems"] == []
    assert summary["telemetry_records_published"] > 0
    assert summary["telemetry_records_stored"] == summary["telemetry_records_published"]
    assert summary["telemetry_dropped"] == 0
    assert summary["seq_gaps"] == 0
    assert summary["shadow_converged"] is True
    assert summary["shadow_reported"]["anc_intensity"] == 0.9
    assert summary["shadow_reported"]["anc_algorithm"] == "fxlms"
    assert summary["emergencies_reported"] >= 1
    assert (
        summary["emergencies_reported"]
        == summary["emergencies_acknowledged"]
        == summary["emergencies_cloud_acknowledged"]
        == summary["emergencies_stored"]
    )
    assert "all checks passed" in stdout
    assert (tmp_path / ".ancsync" / "demo" / "certs" / "ca.pem").exists()
