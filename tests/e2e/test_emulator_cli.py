"""``ancsync emulator`` as a user runs it: a subprocess, its printed settings, a device, signals."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import anyio
import orjson
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from helpers import client_tls_context

from ancsync.config import Settings
from ancsync.topics import ShadowTopics

pytestmark = pytest.mark.slow

ANCSYNC = str(Path(sys.executable).with_name("ancsync"))
TIMEOUT = 30  # a fresh interpreter importing amqtt, plus certificate generation


@asynccontextmanager
async def running_emulator(tmp_path: Path, *args: str) -> AsyncIterator[tuple[Process, list[str]]]:
    """Start ``ancsync emulator --port 0 ...``; yield it with its stdout lines up to ``ready``."""
    command = [ANCSYNC, "emulator", "--port", "0", "--certs-dir", str(tmp_path / "dev"), *args]
    process = await anyio.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        stdout = BufferedByteReceiveStream(process.stdout)
        lines: list[str] = []
        while not lines or not lines[-1].startswith("ready"):
            lines.append((await stdout.receive_until(b"\n", 65536)).decode())
        yield process, lines
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await process.aclose()


def printed_settings(lines: list[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if line.startswith("IOT_"))


async def test_a_device_round_trips_a_shadow_update_with_the_printed_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_emulator(tmp_path, "--db", str(tmp_path / "rules.db")) as (
            process,
            lines,
        ):
            printed = printed_settings(lines)
            [claim] = [line for line in lines if line.startswith("claim ")]
            assert "claim/cert.pem" in claim
            assert "anc-fleet" in claim
            assert set(printed) == {
                "IOT_ENDPOINT",
                "IOT_PORT",
                "IOT_THING_NAME",
                "IOT_CERT_PATH",
                "IOT_KEY_PATH",
                "IOT_ROOT_CA_PATH",
            }
            for name, value in printed.items():
                monkeypatch.setenv(name, value)
            iot = Settings.load().iot  # the SDK accepts exactly what was printed
            assert iot.thing_name == "anc-device-001"
            assert iot.cert_path is not None
            assert iot.key_path is not None
            assert iot.root_ca_path is not None
            tls = client_tls_context(iot.root_ca_path, None)
            tls.load_cert_chain(iot.cert_path, iot.key_path)
            topics = ShadowTopics(iot.thing_name)
            async with aiomqtt.Client(
                iot.endpoint, iot.port, identifier=iot.thing_name, tls_context=tls
            ) as device:
                await device.subscribe(topics.update_accepted, qos=1)
                update = {"state": {"reported": {"anc_enabled": True}}, "clientToken": "e2e"}
                await device.publish(topics.update, orjson.dumps(update), qos=1)
                message = await anext(aiter(device.messages))
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert isinstance(message.payload, bytes)
    accepted = orjson.loads(message.payload)
    assert (accepted["state"], accepted["version"], accepted["clientToken"]) == (
        update["state"],
        1,
        "e2e",
    )
    assert (tmp_path / "rules.db").is_file()


async def read_all(stream: anyio.abc.ByteReceiveStream) -> str:
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
    return b"".join(chunks).decode()


async def test_sigint_stops_it_cleanly_and_certificates_are_reused(tmp_path: Path) -> None:
    certificates = []
    with anyio.fail_after(TIMEOUT):
        for _ in range(2):
            async with running_emulator(tmp_path, "--thing", "left", "--thing", "right") as (
                process,
                lines,
            ):
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 0
                assert process.stderr is not None
                stderr = await read_all(process.stderr)
            assert "Traceback" not in stderr
            things = [line for line in lines if line.startswith("IOT_THING_NAME=")]
            assert things == ["IOT_THING_NAME=left", "IOT_THING_NAME=right"]
            certificates.append((tmp_path / "dev" / "left" / "cert.pem").read_bytes())
    assert certificates[0] == certificates[1]
    assert (tmp_path / "emulator.db").is_file()  # default: next to the certificates directory


def run_to_the_end(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``ancsync emulator ARGS`` that is expected to exit by itself; capture its output."""
    command = [ANCSYNC, "emulator", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)


def test_no_tls_on_a_public_address_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_to_the_end("--no-tls", "--host", "0.0.0.0", "--certs-dir", str(tmp_path))
    assert result.returncode == 2
    [error] = result.stderr.strip().splitlines()
    assert "not a loopback address" in error
    assert "use TLS or a loopback host" in error


def test_a_taken_port_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_the_end("--port", str(port), "--certs-dir", str(tmp_path / "dev"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]  # after the certificate generation log
    assert error.startswith("error:")
    assert f"port {port}" in error
    assert "choose a free port or 0" in error


def test_an_unwritable_rules_database_is_refused_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_to_the_end(
        "--port", "0", "--certs-dir", str(tmp_path / "dev"), "--db", str(blocker / "rules.db")
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: cannot open the rules database")
    assert "choose a writable --db path" in error


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def test_console_serves_the_page_and_stops_with_the_emulator(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_emulator(tmp_path, "--console", "--console-port", "0") as (
            process,
            lines,
        ):
            [url] = [line.split()[1] for line in lines if line.startswith("console ")]
            assert url.startswith("http://127.0.0.1:")
            page = await anyio.to_thread.run_sync(http_get, url)
            assert "ancsync emulator console" in page
            snapshot = orjson.loads(await anyio.to_thread.run_sync(http_get, url + "api/snapshot"))
            assert [thing["name"] for thing in snapshot["things"]] == ["anc-device-001"]
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
            assert process.stderr is not None
            assert "Traceback" not in await read_all(process.stderr)


def test_console_on_a_public_address_needs_the_flag_and_a_token(tmp_path: Path) -> None:
    certs = ["--certs-dir", str(tmp_path / "dev")]
    result = run_to_the_end("--console", "--console-host", "0.0.0.0", *certs)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert "not a loopback address" in error
    assert "--console-allow-remote" in error
    flagged = ["--console", "--console-host", "0.0.0.0", "--console-allow-remote", *certs]
    result = run_to_the_end(*flagged)
    assert result.returncode == 2
    assert "needs a token" in result.stderr.strip().splitlines()[-1]


def test_a_taken_console_port_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_the_end(
            "--port", "0", "--console", "--console-port", str(port), "--certs-dir", str(tmp_path)
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in error
    assert "--console-port" in error


async def test_session_expiry_up_to_aws_seven_days_is_accepted_and_shown(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_emulator(tmp_path, "--session-expiry", "604800") as (process, lines):
            [sessions] = [line for line in lines if line.startswith("sessions ")]
            assert "kept 604800 s after a disconnect" in sessions
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        ("604801", "longer than AWS IoT Core allows: at most 604800 s (7 days)"),
        ("0", "not a duration; use seconds > 0"),
        ("-5", "not a duration; use seconds > 0"),
    ],
)
def test_a_session_expiry_out_of_range_is_refused_in_one_line(
    tmp_path: Path, seconds: str, expected: str
) -> None:
    result = run_to_the_end("--session-expiry", seconds, "--certs-dir", str(tmp_path / "dev"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = result.stderr.strip().splitlines()
    assert error.startswith("error:")
    assert "--session-expiry" in error
    assert expected in error
    assert not (tmp_path / "dev").exists()  # refused before anything was started or written
