"""Fixtures shared by every test directory."""

from __future__ import annotations

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
