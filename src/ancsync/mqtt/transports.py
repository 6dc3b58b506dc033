"""Which :class:`~ancsync.mqtt.transport.Transport` backend a device uses: the one place the
``transport`` setting (``IOT_TRANSPORT``, ``iot.transport``) becomes a transport factory.

``"paho"`` (the default) is :class:`~ancsync.mqtt.paho_transport.PahoTransport`; ``"crt"`` is
:class:`~ancsync.mqtt.crt_transport.CrtTransport`, imported only when chosen, since awscrt is
an optional extra (``pip install ancsync[crt]``). docs/transports.md compares the two.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Literal

from ancsync.errors import ConfigError
from ancsync.mqtt.transport import Transport

__all__ = ["TransportName", "transport_factory_for"]

#: The values of the ``transport`` setting.
TransportName = Literal["paho", "crt"]


def transport_factory_for(name: TransportName, *, in_flight: int) -> Callable[[], Transport]:
    """A factory of fresh transports of backend ``name``, ``in_flight`` QoS 1 messages on the wire.

    Raises:
        ConfigError: ``name`` is ``"crt"`` and awscrt is not installed, or ``name`` is unknown.
    """
    if name == "paho":
        from ancsync.mqtt.paho_transport import PahoTransport

        return lambda: PahoTransport(max_inflight=in_flight)
    if name == "crt":
        if importlib.util.find_spec("awscrt") is None:
            raise ConfigError(
                'transport="crt" needs awscrt, which is not installed: '
                '`pip install ancsync[crt]`, or use the default transport "paho"'
            )
        from ancsync.mqtt.crt_transport import CrtTransport

        return lambda: CrtTransport(max_inflight=in_flight)
    raise ConfigError(f'unknown transport {name!r}; use "paho" or "crt"')
