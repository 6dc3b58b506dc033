"""What ``ancsync`` says when something is wrong, and its exit code: 2 for a usage error (a bad
argument, option, setting or config file), 1 for a failure (could not connect, refused). Each
error is one line on stderr, printed once, never a traceback, and names what the user wrote.
Subprocesses against the emulator running in the test's event loop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from ancsync.emulator.server import Emulator

pytestmark = pytest.mark.slow

ANCSYNC = str(Path(sys.executable).with_name("ancsync"))
THING = "anc-device-001"
TIMEOUT = 30  # a fresh interpreter per command
USAGE, FAILURE = 2, 1


async def ancsync(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    with anyio.fail_after(TIMEOUT):
        result = await anyio.run_process(
            [ANCSYNC, *args], check=False, env={**os.environ, **(env or {})}
        )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def the_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line on stderr, an error: the command said nothing else."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    return port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


async def shadow_get(emulator: Emulator, *args: str) -> subprocess.CompletedProcess[str]:
    """``ancsync shadow get`` of THING as the operator of ``emulator``, with ``args`` added."""
    certs_dir = str(emulator.certs.root)
    return await ancsync(
        "shadow",
        "get",
        "--thing",
        THING,
        "--port",
        str(emulator.port),
        "--certs-dir",
        certs_dir,
        *args,
    )


def device_env(emulator: Emulator, **changes: str) -> dict[str, str]:
    return {**emulator.device_settings(THING), **changes}


# --- no command: the help, once --------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["shadow"]], ids=["ancsync", "ancsync shadow"])
async def test_no_command_prints_the_help_once(command: list[str]) -> None:
    result = await ancsync(*command)
    assert result.returncode == USAGE
    assert result.stdout == ""
    assert result.stderr.count("Usage: ancsync") == 1
    assert "Commands:" in result.stderr


# --- the same kind of error has the same code in every command ------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["certs", "--thing", "bad/name"],
        ["emulator", "--port", "0", "--thing", "bad/name"],
        ["provision", "--thing", "bad/name", "--policy", "p", "--out", "out"],
    ],
    ids=["certs", "emulator", "provision"],
)
async def test_a_bad_thing_name_is_a_usage_error_everywhere(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    error = the_error(await ancsync(*args), USAGE)
    assert "thing name 'bad/name' is not allowed" in error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "id"], "--thing NAME --policy NAME, or provision by claim with --claim"),
        (["--out", "id", "--claim"], "--claim needs --claim-cert FILE, --claim-key FILE, "),
        (
            [
                *("--out", "id", "--claim", "--claim-cert", "c", "--claim-key", "k"),
                *("--template", "T", "--endpoint", "127.0.0.1", "--param", "SerialNumber"),
            ],
            "--param 'SerialNumber' is not NAME=VALUE, e.g. SerialNumber=SN123",
        ),
    ],
    ids=["neither way", "claim without its files", "a parameter without a value"],
)
async def test_provision_says_which_options_it_needs(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert message in the_error(await ancsync("provision", *args), USAGE)
    assert not (tmp_path / "id").exists()  # nothing written


async def test_a_bad_option_value_is_a_usage_error() -> None:
    error = the_error(await ancsync("demo", "--duration", "1"), USAGE)
    assert "--duration" in error


async def test_a_config_file_in_another_format_names_the_formats_that_work(tmp_path: Path) -> None:
    config = tmp_path / "device.yaml"
    config.write_text("iot:\n  port: 8883\n")
    error = the_error(await ancsync("simulate", "--config", str(config)), USAGE)
    assert "use a .toml file (TOML) or a .json file (JSON)" in error
    missing = the_error(await ancsync("simulate", "--config", str(tmp_path / "no.toml")), USAGE)
    assert "'--config'" in missing
    assert "does not exist" in missing


# --- ancsync simulate: a device that never connected fails, naming the cause ----------------


async def test_simulate_against_a_closed_port_fails_naming_it(
    emulator: Emulator, closed_port: int
) -> None:
    env = device_env(emulator, IOT_PORT=str(closed_port))
    result = await ancsync("simulate", "--duration", "1.5", "--connect-timeout", "10", env=env)
    assert result.returncode == FAILURE, result.stderr
    error = result.stderr.splitlines()[-1]  # after the device's story of its attempts
    assert error == (
        f"error: never connected to 127.0.0.1:{closed_port}; last error: 127.0.0.1:{closed_port} "
        "refused the TCP connection; is the broker running?"
    )
    assert "Traceback" not in result.stderr
    assert "0 delivered" in result.stdout  # the final status is still printed


async def test_simulate_gives_up_after_the_connect_timeout(
    emulator: Emulator, closed_port: int
) -> None:
    env = device_env(emulator, IOT_PORT=str(closed_port))
    result = await ancsync("simulate", "--connect-timeout", "1", env=env)  # no --duration
    assert result.returncode == FAILURE, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"error: not connected to 127.0.0.1:{closed_port} within 1.0 s; last error:"
    )


async def test_simulate_with_a_certificate_the_broker_refuses(emulator: Emulator) -> None:
    operator = emulator.certs.operator  # signed by the CA, but not a registered device
    env = device_env(emulator, IOT_CERT_PATH=str(operator.cert), IOT_KEY_PATH=str(operator.key))
    result = await ancsync("simulate", "--duration", "20", env=env)
    assert result.returncode == FAILURE, result.stderr
    assert (
        "error: the broker at 127.0.0.1 refused the connection: Not authorized"
        in (result.stderr.splitlines()[-1])
    )


async def test_simulate_with_a_key_of_another_certificate(emulator: Emulator) -> None:
    env = device_env(emulator, IOT_KEY_PATH=str(emulator.certs.operator.key))
    result = await ancsync("simulate", "--duration", "20", env=env)
    assert result.returncode == USAGE, result.stderr  # a setting to fix, not a broker refusal
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: ")
    assert "the private key does not belong to the certificate" in error


# --- misleading errors -----------------------------------------------------------------------


async def test_no_tls_against_a_tls_port_says_the_port_speaks_tls(emulator: Emulator) -> None:
    result = await shadow_get(emulator, "--no-tls", "--timeout", "1")
    error = the_error(result, FAILURE)  # printed once: no retry warnings before it
    assert error == (
        f"error: 127.0.0.1:{emulator.port} speaks TLS, and --no-tls asked for plain MQTT; drop "
        "--no-tls, or give the port of an emulator started with --no-tls"
    )
    assert "policy" not in error
    env = device_env(emulator, IOT_TLS="false", IOT_CERT_PATH="", IOT_KEY_PATH="")
    simulated = await ancsync("simulate", "--duration", "1", env=env)
    assert simulated.returncode == FAILURE
    assert simulated.stderr.splitlines()[-1].startswith(
        f"error: 127.0.0.1:{emulator.port} speaks TLS, and the settings ask for plain MQTT"
    )


async def test_a_refused_shadow_command_prints_its_error_once(emulator: Emulator) -> None:
    device = emulator.certs.device(THING)  # a device's certificate, not the operator's
    certificate = ["--cert", str(device.cert), "--key", str(device.key)]
    result = await shadow_get(emulator, *certificate, "--client-id", "not-the-thing")
    error = the_error(result, FAILURE)
    assert "refused the connection: Not authorized" in error


@pytest.mark.parametrize("no_tls", [False, True], ids=["tls", "no-tls"])
async def test_a_taken_port_names_the_port(no_tls: bool, taken_port: int, tmp_path: Path) -> None:
    args = ["--quiet", "emulator", "--port", str(taken_port), "--certs-dir", str(tmp_path / "dev")]
    result = await ancsync(*args, *(["--no-tls"] if no_tls else []))
    error = the_error(result, USAGE)
    assert error == (
        f"error: port {taken_port} on 127.0.0.1 is already in use (another emulator or "
        "broker?); choose a free port or 0 (any free one) with --port"
    )


async def test_a_bad_cert_option_names_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = await ancsync("shadow", "get", "--thing", THING, "--cert", str(missing))
    error = the_error(result, USAGE)
    assert "Invalid value for '--cert'" in error
    assert f"'{missing}' does not exist" in error
    assert "Settings.load" not in error
    no_certs = tmp_path / "empty"
    default = the_error(
        await ancsync("shadow", "get", "--thing", THING, "--certs-dir", str(no_certs)), USAGE
    )
    assert default == (
        f"error: no operator certificate: {no_certs / 'operator' / 'cert.pem'} does not exist; "
        "give the emulator's --certs-dir, or --cert, or create them with `ancsync certs`"
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--endpoint", "mqtts://example.com"], "'--endpoint'"),
        (["--endpoint", "example.com:8883"], "set the port with --port"),
        (["--endpoint", "example.com", "--no-tls"], "--no-tls (plain MQTT) is allowed only"),
        (["--client-id", "a/b"], "'--client-id'"),
    ],
)
async def test_a_bad_shadow_option_names_the_option(args: list[str], named: str) -> None:
    error = the_error(await ancsync("shadow", "get", "--thing", THING, *args), USAGE)
    assert named in error
    assert "Settings.load" not in error
