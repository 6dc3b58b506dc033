"""Provisioning and rotation killed (SIGKILL) at every step, then restarted: one working identity.

A real device process provisions itself by claim against the emulator and SIGKILLs itself the
moment a step has reached the disk; the next process must finish with exactly one registered
certificate in use. A running device that reported emergencies is killed at every step of a
certificate rotation; the next process must connect (with the old or the new certificate, a pair
that belongs together) and deliver every emergency it had stored.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from ancsync.emulator.certificates import CertificateStatus
from ancsync.emulator.server import Emulator
from ancsync.provisioning.keys import certificate_id

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("provisioning_device.py")
THING = "anc-SN0042"
TIMEOUT = 60


def environment(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    claim = emulator.certs.claim
    assert claim is not None
    return {
        **os.environ,
        "CLAIM_CERT": str(claim.cert),
        "CLAIM_KEY": str(claim.key),
        "ROOT_CA": str(emulator.certs.ca),
        "ENDPOINT": "127.0.0.1",
        "PORT": str(emulator.port),
        "TEMPLATE": "anc-fleet",
        "SERIAL": "SN0042",
        "IDENTITY_DIR": str(tmp_path / "identity"),
        "DATA_DIR": str(tmp_path / "data"),
    }


async def device(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """Run the device script to its end: its exit code and its stdout lines."""
    result = await anyio.run_process(
        [sys.executable, str(SCRIPT), *args], env=env, check=False, stderr=None
    )
    return result.returncode, result.stdout.decode().splitlines()


def registered(emulator: Emulator) -> list[str]:
    """The certificates attached to the thing and ACTIVE."""
    return [
        record.certificate_id
        for record in emulator.list_certificates()
        if record.thing_name == THING and record.status is CertificateStatus.ACTIVE
    ]


@pytest.mark.parametrize("kill_at", ["key", "certificate", "registered", "saved", "verified"])
async def test_provisioning_killed_at_any_step_ends_with_one_identity(
    emulator: Emulator, tmp_path: Path, kill_at: str
) -> None:
    env = environment(emulator, tmp_path)
    with anyio.fail_after(TIMEOUT):
        code, _ = await device(env, "provision", kill_at)
        assert code == -signal.SIGKILL
        code, lines = await device(env, "provision")
        assert code == 0
        [line] = lines
        _, thing, cert_id = line.split()
        code, lines = await device(env, "run")  # and it works
    assert code == 0
    assert thing == THING
    assert lines == [f"running {cert_id}"]
    assert registered(emulator) == [cert_id]  # no second identity was made
    assert certificate_id((tmp_path / "identity" / "cert.pem").read_bytes()) == cert_id


@pytest.mark.parametrize("kill_at", ["key", "certificate", "registered", "switched", "connected"])
async def test_a_rotation_killed_at_any_step_loses_nothing_and_connects(
    emulator: Emulator, tmp_path: Path, kill_at: str
) -> None:
    env = environment(emulator, tmp_path)
    with anyio.fail_after(TIMEOUT):
        code, lines = await device(env, "provision")
        assert code == 0
        first_id = lines[0].split()[2]
        code, lines = await device(env, "rotate", kill_at)
        assert code == -signal.SIGKILL
        reported = [line.split()[1] for line in lines if line.startswith("emergency ")]
        assert len(reported) == 3
        code, lines = await device(env, "run")
        assert code == 0
        [line] = lines
        in_use = line.split()[1]
        await emulator.rules.wait_for(
            lambda sink: {e.event_id for e in sink.emergencies(THING)} >= set(reported)
        )
    # Before the switch the old certificate is kept; from the switch on, the new one is used.
    switched = kill_at in ("switched", "connected")
    assert (in_use != first_id) is switched
    assert in_use in registered(emulator)
