"""Every example in examples/ runs to completion against its embedded emulator."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("basic_connection.py", '"acknowledged": 1'),
        ("shadow_sync.py", "'anc_intensity': 0.9"),
        ("telemetry_demo.py", "the emulator's rules sink stored 52 records"),
        ("full_integration.py", '"acknowledged": 1'),
        ("ota_update.py", "shadow reports noise_type='office-v2'"),
        ("first_boot.py", "the old one is revoked, telemetry goes on"),
    ],
)
async def test_example_runs_to_completion(example: str, expected: str, tmp_path: Path) -> None:
    # No IOT_* settings: the example starts its own emulator.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOT_", "ANCSYNC_"))}
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, str(EXAMPLES / example)], cwd=tmp_path, env=env, check=False
        )
    output = result.stdout.decode()
    assert result.returncode == 0, output + result.stderr.decode()
    assert "using a local emulator" in output
    assert expected in output
    assert "Traceback" not in result.stderr.decode()
