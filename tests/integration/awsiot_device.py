"""AWS's own device SDK (awsiotsdk over awscrt) connected to the emulator, as AWS's samples do.

``awsiot_connection`` builds the connection with ``mqtt_connection_builder.mtls_from_path``: MQTT
3.1.1 over TLS with a device certificate made by the emulator, the thing name as client id. Its
callbacks run on awscrt's threads; ``Events`` hands what they receive to the test through a
thread-safe queue, and ``wait`` and ``Events.next`` wait for a future or an event in a worker
thread, each bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import Any

import anyio
from awscrt import mqtt
from awsiot import mqtt_connection_builder

from ancsync.emulator.certs import CertPair
from ancsync.emulator.server import Emulator

TIMEOUT = 15


def awsiot_connection(
    emulator: Emulator, thing: str, *, clean_session: bool, pair: CertPair | None = None
) -> mqtt.Connection:
    """An unconnected awscrt connection as ``thing`` (its certificate, its name as client id).

    ``pair`` connects with another certificate (the claim one, a provisioned one) instead.
    """
    device = pair or emulator.certs.device(thing)
    return mqtt_connection_builder.mtls_from_path(
        endpoint="127.0.0.1",
        port=emulator.port,
        cert_filepath=str(device.cert),
        pri_key_filepath=str(device.key),
        ca_filepath=str(emulator.certs.ca),
        client_id=thing,
        clean_session=clean_session,
        keep_alive_secs=30,
    )


async def wait(future: Future[Any]) -> Any:
    """The result of one of awscrt's futures (connect, subscribe, publish, disconnect)."""
    return await anyio.to_thread.run_sync(future.result, TIMEOUT)


class Events:
    """What awscrt's callbacks received, in order, as ``(kind, value)``."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on(self, kind: str) -> Any:
        """A callback that records its one argument as a ``kind`` event."""
        return lambda value: self._queue.put((kind, value))

    def put(self, kind: str, value: Any) -> None:
        self._queue.put((kind, value))

    async def next(self, kind: str | None = None) -> tuple[str, Any]:
        """The next event (of ``kind``, skipping others, when given); at most ``TIMEOUT`` each."""
        while True:
            got, value = await anyio.to_thread.run_sync(self._queue.get, True, TIMEOUT)
            if kind is None or got == kind:
                return got, value

    async def received(self, kind: str) -> Any:
        """The value of the next ``kind`` event."""
        return (await self.next(kind))[1]
