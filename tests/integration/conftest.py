"""Fixtures shared by the integration tests (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import MosquittoBroker, running_mosquitto
from publish_log import PublishLog

from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import DevCerts
from ancsync.testing import start_in_task


@pytest.fixture
async def broker(dev_certs: DevCerts) -> AsyncIterator[tuple[EmbeddedBroker, PublishLog]]:
    """A running TLS broker and the log of every publish it accepted (wait on the log)."""
    log = PublishLog()
    broker = EmbeddedBroker(dev_certs)
    broker.add_publish_listener(log)
    started = await start_in_task(broker)  # setup and teardown run in different tasks
    yield broker, log
    await started.stop()


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
async def any_broker(
    request: pytest.FixtureRequest, dev_certs: DevCerts, tmp_path: Path
) -> AsyncIterator[EmbeddedBroker | MosquittoBroker]:
    """The embedded broker, then mosquitto with the same certificates."""
    if request.param == "amqtt":
        started = await start_in_task(EmbeddedBroker(dev_certs, plain_port=0))
        yield started.part
        await started.stop()
    else:
        with running_mosquitto(dev_certs, tmp_path / "mosquitto") as mosquitto:
            yield mosquitto


@pytest.fixture(params=["paho", "crt"])
def each_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per transport backend, chosen the way a user does: ``IOT_TRANSPORT``.

    Every IoTConnection the test builds from settings picks it up. Use it with
    ``@pytest.mark.usefixtures("each_transport")`` (or take it, to adapt an expectation).
    """
    monkeypatch.setenv("IOT_TRANSPORT", request.param)
    return str(request.param)
