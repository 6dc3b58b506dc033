"""``ancsync certs``, ``shadow get|update|watch``, ``simulate``, ``--help`` and bad arguments, as
a user runs them: subprocesses against the emulator running in the test's event loop."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from ancsync.cli import main
from ancsync.emulator.server import Emulator

pytestmark = pytest.mark.slow

ANCSYNC = str(Path(sys.executable).with_name("ancsync"))
THING = "anc-device-001"
TIMEOUT = 30  # a fresh interpreter per command


async def ancsync(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(TIMEOUT):
        return await anyio.run_process(
            [ANCSYNC, *args], check=False, env={**os.environ, **(env or {})}
        )


def operator_args(emulator: Emulator) -> list[str]:
    return ["--thing", THING, "--certs-dir", str(emulator.certs.root), "--port", str(emulator.port)]


def last_json(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.returncode == 0, result.stderr.decode()
    return orjson.loads(result.stdout.decode().strip().splitlines()[-1])


def error_of(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The error a failed command ended with (after any warnings it logged), never a traceback."""
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr
    return stderr[stderr.index("error: ") :]


async def test_certs_writes_the_emulator_layout_and_reuses_it(tmp_path: Path) -> None:
    certs = tmp_path / "dev"
    first = await ancsync("certs", "--certs-dir", str(certs), "--thing", "a-1", "--thing", "b-2")
    assert first.returncode == 0, first.stderr.decode()
    out = first.stdout.decode()
    assert f"IOT_CERT_PATH={(certs / 'a-1' / 'cert.pem').resolve()}" in out
    assert f"IOT_ROOT_CA_PATH={(certs / 'ca.pem').resolve()}" in out
    assert stat.S_IMODE((certs / "b-2" / "private.key").stat().st_mode) == 0o600
    assert (certs / "operator" / "cert.pem").is_file()
    before = (certs / "a-1" / "cert.pem").read_bytes()
    again = await ancsync("certs", "--certs-dir", str(certs), "--thing", "a-1")
    assert again.returncode == 0
    assert (certs / "a-1" / "cert.pem").read_bytes() == before


async def test_shadow_update_then_get(emulator: Emulator) -> None:
    updated = last_json(
        await ancsync(
            "shadow", "update", *operator_args(emulator), "anc_intensity=0.9", "anc_algorithm=fxlms"
        )
    )
    assert updated["desired"] == {"anc_intensity": 0.9, "anc_algorithm": "fxlms"}
    got = last_json(await ancsync("shadow", "get", *operator_args(emulator)))
    assert got["version"] == updated["version"] == 1
    assert got["delta"] == {"anc_intensity": 0.9, "anc_algorithm": "fxlms"}
    stored = emulator.shadows.store.shadow(THING, None)
    assert stored is not None
    assert stored.state["desired"] == {"anc_intensity": 0.9, "anc_algorithm": "fxlms"}


async def test_shadow_watch_prints_each_change(emulator: Emulator) -> None:
    command = [ANCSYNC, "shadow", "watch", *operator_args(emulator), "--count", "1"]
    with anyio.fail_after(TIMEOUT):
        async with await anyio.open_process(command) as process:
            assert process.stdout is not None
            lines = BufferedByteReceiveStream(process.stdout)
            first = orjson.loads(await lines.receive_until(b"\n", 65536))  # the current shadow
            await ancsync("shadow", "update", *operator_args(emulator), "anc_enabled=false")
            change = orjson.loads(await lines.receive_until(b"\n", 65536))
            assert await process.wait() == 0
    assert first["exists"] is False
    assert change["desired"] == {"anc_enabled": False}
    assert change["version"] == 1


async def test_shadow_get_names_the_connection_problem(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = await ancsync(
        "shadow", "get", "--thing", THING, "--port", str(port), "--no-tls", "--timeout", "1"
    )
    error = error_of(result, 1)
    assert error.startswith(f"error: not connected to 127.0.0.1:{port} within 1.0 s")
    assert "refused the TCP connection" in error


async def test_simulate_runs_a_device_against_the_emulator(emulator: Emulator) -> None:
    env = {**emulator.device_settings(THING), "TELEMETRY_BATCH_INTERVAL": "0.5"}
    result = await ancsync("simulate", "--duration", "2", "--fire-alarm-at", "0.5", env=env)
    status = last_json(result)
    assert status["running"] is False
    assert status["emergency"]["reported"] == status["emergency"]["acknowledged"] == 1
    delivered = sum(kind["delivered"] for kind in status["telemetry"]["records"].values())
    assert delivered > 0
    with anyio.fail_after(TIMEOUT):  # the sink stores each batch in a worker thread
        await emulator.rules.wait_for(lambda sink: sink.record_count(THING) >= delivered)
    assert emulator.rules.record_count(THING) == delivered
    assert len(emulator.rules.emergencies(THING)) == 1


async def test_simulate_without_settings_says_what_is_missing(tmp_path: Path) -> None:
    env = {name: "" for name in os.environ if name.startswith(("IOT_", "ANCSYNC_"))}
    result = await ancsync("simulate", "--duration", "1", env=env)
    error = error_of(result, 2)
    assert "iot.thing_name is required: set IOT_THING_NAME" in error
    assert "iot.endpoint is required: set IOT_ENDPOINT" in error


# In-process from here: parsing needs no fresh interpreter, and a subprocess costs a second.


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["ancsync", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["certs"],
        ["demo"],
        ["simulate"],
        ["emulator"],
        ["provision"],
        ["shadow"],
        ["shadow", "get"],
        ["shadow", "update"],
        ["shadow", "watch"],
    ],
)
def test_every_command_explains_itself(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main([*command, "--help"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"Usage: ancsync {' '.join(command)}".rstrip() in out
    assert len(out.splitlines()) > 5


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["demo", "--duration", "1"], "--duration"),
        (["demo", "--durration", "10"], "--durration"),
        (["shadow", "get"], "--thing"),
        (["shadow", "update", "--thing", THING, "intensity"], "KEY=VALUE"),
        (["shadow", "update", "--thing", THING], "nothing to update"),
        (["shadow", "update", "--thing", THING, "anc_intensity=2"], "anc_intensity"),
        (["shadow", "update", "--thing", THING, "--desired", "[1]"], "JSON object"),
        (["simulate", "--rate", "0"], "--rate"),
        (["certs", "--thing", "bad/name"], "bad/name"),
        (["nope"], "nope"),
    ],
)
def test_a_bad_argument_is_one_line(
    args: list[str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # certs would write to .ancsync/dev
    assert run_main(args, monkeypatch) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ")
    assert named in line
