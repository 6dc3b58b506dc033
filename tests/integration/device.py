"""Build an :class:`~ancsync.IoTConnection` for a dev-certificate device against a local broker."""

from __future__ import annotations

from typing import Any

from ancsync import IoTConnection
from ancsync.emulator.certs import DevCerts

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
