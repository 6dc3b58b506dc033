"""A broker-side log of every accepted client publish, in arrival order, that tests can wait on."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ancsync.emulator.auth import ClientIdentity


class PublishLog:
    """Pass to ``EmbeddedBroker.add_publish_listener``; ``topics``/``payloads`` grow in order.

    Registered before the broker starts, it sees a device's very first publish, which a
    subscribing client racing the device's reconnect could miss.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._changed = anyio.Event()

    async def __call__(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self._changed.set()
        self._changed = anyio.Event()

    def on(self, topic_prefix: str) -> list[bytes]:
        """Payloads published on topics starting with ``topic_prefix``, in order."""
        return [payload for topic, payload in self.messages if topic.startswith(topic_prefix)]

    async def wait_for(self, done: Callable[[PublishLog], bool]) -> None:
        """Wait until ``done(self)`` is true (wrap the call in ``anyio.fail_after``)."""
        while not done(self):
            await self._changed.wait()
