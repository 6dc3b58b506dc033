"""Build an :class:`~ancsync.IoTConnection` for a dev-certificate device against a local broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ancsync import IoTConnection, OperatorCredentials, ShadowDocument, ShadowOperator
from ancsync.emulator.certs import DevCerts
from ancsync.emulator.server import Emulator
from ancsync.mqtt.backoff import BackoffPolicy

HOST = "127.0.0.1"
THING = "anc-device-001"


def device_connection(
    certs: DevCerts, port: int, thing: str = THING, **options: Any
) -> IoTConnection:
    """An IoTConnection for ``thing`` with its dev certificate, over TLS to ``127.0.0.1:port``.

    ``options`` go to :class:`IoTConnection` (``keep_alive``, ``reconnect``, ``rate_limit``...);
    ``cert_path``, ``key_path`` and ``root_ca_path`` may be overridden to test bad files.
    """
    pair = certs.device(thing)
    return IoTConnection(
        thing,
        HOST,
        cert_path=options.pop("cert_path", pair.cert),
        key_path=options.pop("key_path", pair.key),
        root_ca_path=options.pop("root_ca_path", certs.ca),
        port=port,
        **options,
    )


def orchestrator_options(emulator: Emulator, tmp_path: Path, **options: Any) -> dict[str, Any]:
    """Arguments for a DataSyncOrchestrator (async or blocking) of ``THING`` on ``emulator``,
    with short batches, fast reconnects and its data in ``tmp_path``; ``options`` win."""
    pair = emulator.certs.device(THING)
    return {
        "thing_name": THING,
        "endpoint": HOST,
        "port": emulator.port,
        "cert_path": pair.cert,
        "key_path": pair.key,
        "root_ca_path": emulator.certs.ca,
        "batch_size": 5,
        "batch_interval": 0.2,
        "data_dir": tmp_path / "device-data",
        "firmware_version": "1.2.3",
        "connection_options": {"reconnect": BackoffPolicy(base=0.02, cap=0.1)},
        **options,
    }


@asynccontextmanager
async def cloud(emulator: Emulator, thing: str = THING) -> AsyncIterator[ShadowOperator]:
    """The cloud side of ``thing``'s shadow: a running ShadowOperator with the operator
    certificate (its ``connection`` also publishes commands)."""
    credentials = OperatorCredentials.from_certs_dir(emulator.certs.root, port=emulator.port)
    reconnect = BackoffPolicy(base=0.02, cap=0.1)
    async with ShadowOperator(credentials.connection(reconnect=reconnect), thing) as operator:
        yield operator


async def until(documents: Any, holds: Any) -> ShadowDocument:
    """The first document of an ``operator.watch()`` stream for which ``holds``."""
    async for document in documents:
        if holds(document):
            return document  # type: ignore[no-any-return]
    raise AssertionError("the watch ended")
