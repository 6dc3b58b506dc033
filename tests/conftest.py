"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import MosquittoBroker, running_mosquitto

from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import DevCerts, ensure_dev_certs
from ancsync.emulator.server import Emulator
from ancsync.testing import start_in_task

TEST_THINGS = ("anc-device-001", "anc-device-002")


@pytest.fixture
def dev_certs(tmp_path: Path) -> DevCerts:
    """A fresh dev CA with server, operator and two device certificates (TEST_THINGS)."""
    return ensure_dev_certs(tmp_path / "certs", TEST_THINGS)


@pytest.fixture
async def tls_broker(dev_certs: DevCerts) -> AsyncIterator[EmbeddedBroker]:
    """A running embedded broker: TLS with client certificates required, plus a plain port."""
    # pytest-asyncio sets a fixture up and tears it down in different tasks: no `async with`.
    started = await start_in_task(EmbeddedBroker(dev_certs, plain_port=0))
    yield started.part
    await started.stop()


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    """The whole local emulator over TLS for TEST_THINGS: broker, shadows, policy, rules sink."""
    started = await start_in_task(Emulator(tmp_path / "emulator-certs", TEST_THINGS))
    yield started.part
    await started.stop()


@pytest.fixture
def mosquitto_broker(dev_certs: DevCerts, tmp_path: Path) -> Iterator[MosquittoBroker]:
    """mosquitto (apt) as a subprocess with the dev certificates; mark tests ``mosquitto``.

    ``.port`` is TLS (client certificate required, CN used as username), ``.plain_port`` plain.
    """
    with running_mosquitto(dev_certs, tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(autouse=True)
def _private_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own ``$XDG_STATE_HOME``: the default durable outbox of an
    orchestrator without ``data_dir`` must not carry emergencies from one test to another."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


MOTO_SERVER = Path(sys.executable).parent / "moto_server"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A moto_server (AWS's control plane, faked) on an ephemeral port of 127.0.0.1, for the
    whole module: for the tests that call AWS IoT from another process."""
    process = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[int] = []
    listening = threading.Event()

    def read_log() -> None:
        # Werkzeug prints the port the OS chose once it listens; keep reading after that so
        # the pipe never fills and blocks the server.
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(r"Running on http://127\.0\.0\.1:(\d+)", line)
            if match and not found:
                found.append(int(match.group(1)))
                listening.set()
        listening.set()  # the server exited: stop waiting

    threading.Thread(target=read_log, daemon=True).start()
    if not listening.wait(timeout=30) or not found:
        process.kill()
        pytest.fail("moto_server did not start listening within 30 s")
    port = found[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials only; nothing from the machine's AWS config, no instance metadata."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "ANCSYNC_CONFIG",
        *(k for k in os.environ if k.startswith("IOT_")),
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
