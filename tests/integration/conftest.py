"""Fixtures shared by the integration tests (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
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
