"""Where the jobs component keeps status updates until the service has answered them.

The one place that knows how updates are persisted, so that moving them onto another outbox is
a change to this file only. Today it is a :class:`~ancsync.durable.DurableStore` of its own
(``jobs.sqlite3`` in the device's data directory), on the never-evicted, fsynced lane: an
update is on disk before :meth:`UpdateJournal.put` returns and leaves it only when the service
accepted (or finally rejected) it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio

from ancsync.durable.store import DurableStore, StoredMessage

__all__ = ["JOURNAL_FILE_NAME", "PendingUpdate", "UpdateJournal"]

JOURNAL_FILE_NAME = "jobs.sqlite3"


@dataclass(frozen=True)
class PendingUpdate:
    """One UpdateJobExecution request as it will be published: its token, topic and bytes."""

    token: str
    topic: str
    payload: bytes


class UpdateJournal:
    """The persisted, ordered status updates of one device (see the module docstring)."""

    def __init__(self, data_dir: Path | str) -> None:
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self._store = DurableStore(directory / JOURNAL_FILE_NAME)

    async def put(self, update: PendingUpdate) -> None:
        """Write ``update`` to disk (fsynced) after every update already in the journal."""
        message = StoredMessage(update.token, "emergency", update.topic, update.payload)
        await anyio.to_thread.run_sync(self._store.put, message)

    async def done(self, token: str) -> None:
        """Forget the update ``token``: the service answered it."""
        await anyio.to_thread.run_sync(self._store.ack, token)

    async def pending(self) -> list[PendingUpdate]:
        """The updates not yet answered, oldest first."""
        stored = await anyio.to_thread.run_sync(self._store.pending)
        return [PendingUpdate(m.msg_id, m.topic, m.payload) for m in stored]

    def close(self) -> None:
        """Close the file."""
        self._store.close()
