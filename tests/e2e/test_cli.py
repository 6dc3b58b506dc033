"""``ancsync certs``, ``shadow get|update|watch``, ``simulate``, the global options, ``--help`` and
bad arguments, as a user runs them: subprocesses against the emulator running in the test's event
loop. Errors and exit codes: test_cli_errors.py; Ctrl-C: test_ctrl_c.py."""

from __future__ import annotations

import importlib.metadata
import os
import re
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
from ancsync.config import ENV_VARS, Settings
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
            "shadow",
            "update",
            *operator_args(emulator),
            "anc_intensity=0.9",
            "anc_algorithm=fxlms",
            "--json",
        )
    )
    assert updated["desired"] == {"anc_intensity": 0.9, "anc_algorithm": "fxlms"}
    got = last_json(await ancsync("shadow", "get", *operator_args(emulator), "--json"))
    assert got["version"] == updated["version"] == 1
    assert got["delta"] == {"anc_intensity": 0.9, "anc_algorithm": "fxlms"}
    stored = emulator.shadows.store.shadow(THING, None)
    assert stored is not None
    assert stored.state["desired"] == {"anc_intensity": 0.9, "anc_algorithm": "fxlms"}


async def test_shadow_watch_prints_each_change(emulator: Emulator) -> None:
    command = [ANCSYNC, "shadow", "watch", *operator_args(emulator), "--count", "1", "--json"]
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


async def test_shadow_prints_for_people_unless_asked_for_json(emulator: Emulator) -> None:
    missing = await ancsync("shadow", "get", *operator_args(emulator))
    assert missing.stdout.decode() == f"{THING}: no classic shadow yet\n"
    updated = await ancsync(
        "shadow", "update", *operator_args(emulator), "anc_enabled=true", "anc_intensity=0.9"
    )
    assert updated.returncode == 0, updated.stderr.decode()
    assert updated.stdout.decode().splitlines() == [
        f"{THING}, classic shadow, version 1: not in sync",
        "  desired  anc_enabled=true anc_intensity=0.9",
        "  reported -",
        "  delta    anc_enabled=true anc_intensity=0.9",
    ]


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
    result = await ancsync(
        "simulate", "--duration", "2", "--fire-alarm-at", "0.5", "--json", env=env
    )
    status = last_json(result)
    assert status["running"] is False
    assert status["emergency"]["reported"] == status["emergency"]["acknowledged"] == 1
    delivered = sum(kind["delivered"] for kind in status["telemetry"]["records"].values())
    assert delivered > 0
    with anyio.fail_after(TIMEOUT):  # the sink stores each batch in a worker thread
        await emulator.rules.wait_for(lambda sink: sink.record_count(THING) >= delivered)
    assert emulator.rules.record_count(THING) == delivered
    assert len(emulator.rules.emergencies(THING)) == 1


async def test_simulate_prints_a_summary_for_people(emulator: Emulator) -> None:
    env = {**emulator.device_settings(THING), "TELEMETRY_BATCH_INTERVAL": "0.5"}
    result = await ancsync("simulate", "--duration", "1", env=env)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith(f"{THING} ran ")
    assert re.fullmatch(r"telemetry +(\d+) records accepted, \1 delivered, 0 dropped", lines[1])
    assert lines[3].startswith("shadow      version ")
    assert f"connected to 127.0.0.1:{emulator.port}" in result.stderr.decode()


async def test_simulate_reads_a_toml_config_file(emulator: Emulator, tmp_path: Path) -> None:
    settings = emulator.device_settings(THING)
    config = tmp_path / "device.toml"
    config.write_text(
        f'[iot]\nthing_name = "{THING}"\nendpoint = "127.0.0.1"\nport = {emulator.port}\n'
        f'cert_path = "{settings["IOT_CERT_PATH"]}"\nkey_path = "{settings["IOT_KEY_PATH"]}"\n'
        f'root_ca_path = "{settings["IOT_ROOT_CA_PATH"]}"\n'
    )
    no_env = {name: "" for name in os.environ if name.startswith(("IOT_", "ANCSYNC_"))}
    result = await ancsync("simulate", "--config", str(config), "--duration", "1", env=no_env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith(f"{THING} ran ")


async def test_simulate_without_settings_says_what_is_missing(tmp_path: Path) -> None:
    env = {name: "" for name in os.environ if name.startswith(("IOT_", "ANCSYNC_"))}
    result = await ancsync("simulate", "--duration", "1", env=env)
    error = error_of(result, 2)
    assert "iot.thing_name is required: set IOT_THING_NAME" in error
    assert "iot.endpoint is required: set IOT_ENDPOINT" in error


async def test_version_is_the_package_version() -> None:
    result = await ancsync("--version")
    assert result.returncode == 0
    assert result.stdout.decode() == f"ancsync {importlib.metadata.version('ancsync')}\n"


async def test_shell_completion_completes_commands_and_options() -> None:
    commands = await ancsync(
        env={"_ANCSYNC_COMPLETE": "complete_bash", "COMP_WORDS": "ancsync sh", "COMP_CWORD": "1"}
    )
    assert commands.stdout.decode().split() == ["shadow"]
    options = await ancsync(
        env={
            "_ANCSYNC_COMPLETE": "complete_bash",
            "COMP_WORDS": "ancsync demo --du",
            "COMP_CWORD": "2",
        }
    )
    assert options.stdout.decode().split() == ["--duration"]
    # The script is for the shell ancsync runs in, found among its parents: here bash, kept as
    # the parent by a second command (alone, bash would exec ancsync in its place).
    with anyio.fail_after(TIMEOUT):
        script = await anyio.run_process(["bash", "-c", f"{ANCSYNC} --show-completion; exit $?"])
    assert "_ANCSYNC_COMPLETE=complete_bash" in script.stdout.decode()


async def test_log_level_and_quiet_apply_to_every_command(tmp_path: Path) -> None:
    default = await ancsync("certs", "--certs-dir", str(tmp_path / "a"))
    assert "generating a new dev CA" in default.stderr.decode()  # certs logs INFO by default
    quiet = await ancsync("--quiet", "certs", "--certs-dir", str(tmp_path / "b"))
    assert quiet.returncode == 0
    assert quiet.stderr == b""
    assert "IOT_CERT_PATH=" in quiet.stdout.decode()  # the result is still printed
    warning = await ancsync("--log-level", "WARNING", "certs", "--certs-dir", str(tmp_path / "c"))
    assert warning.stderr == b""
    debug = await ancsync(
        "--log-level",
        "debug",
        "shadow",
        "get",
        "--thing",
        THING,
        "--no-tls",
        "--port",
        "1",
        "--timeout",
        "0.5",
    )
    assert "DEBUG" in debug.stderr.decode()  # shadow shows no logs by default, here it does


async def test_certs_json_is_one_object_with_each_device(tmp_path: Path) -> None:
    certs = tmp_path / "dev"
    result = await ancsync("certs", "--certs-dir", str(certs), "--thing", "a-1", "--json")
    [line] = result.stdout.decode().splitlines()
    printed = orjson.loads(line)
    assert printed["root_ca"] == str((certs / "ca.pem").resolve())
    assert printed["devices"]["a-1"]["IOT_KEY_PATH"] == str(
        (certs / "a-1" / "private.key").resolve()
    )


async def test_emulator_json_is_one_line_a_script_can_use(tmp_path: Path) -> None:
    command = [ANCSYNC, "emulator", "--port", "0", "--certs-dir", str(tmp_path / "dev"), "--json"]
    with anyio.fail_after(TIMEOUT):
        async with await anyio.open_process(command) as process:
            assert process.stdout is not None
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 65536)
            ready = orjson.loads(line)
            settings = Settings.load(
                **{ENV_VARS[name][-1]: value for name, value in ready["devices"][THING].items()}
            )
            assert settings.iot.port == ready["port"] > 0
            assert ready["tls"] is True
            assert ready["session_expiry"] == 3600
            process.terminate()
            assert await process.wait() == 0


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
        ["certs", "create"],
        ["certs", "list"],
        ["certs", "describe"],
        ["certs", "revoke"],
        ["certs", "deactivate"],
        ["certs", "activate"],
        ["certs", "rotate"],
        ["demo"],
        ["simulate"],
        ["emulator"],
        ["provision"],
        ["shadow"],
        ["shadow", "get"],
        ["shadow", "update"],
        ["shadow", "watch"],
        ["jobs"],
        ["jobs", "create"],
        ["jobs", "list"],
        ["jobs", "describe"],
        ["jobs", "cancel"],
    ],
)
def test_every_command_explains_itself(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main([*command, "--help"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"Usage: ancsync {' '.join(command)}".rstrip() in out
    assert len(out.splitlines()) > 5
    assert not re.search(r"<\w", out), out  # no type labels such as <bool> or <str>
    assert not [line for line in out.splitlines() if line != line.rstrip()], out
    cut_short = [line for line in out.splitlines()[1:] if line.endswith("...")]
    assert not cut_short  # a command's description shortened by click


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
