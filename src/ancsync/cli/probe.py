"""Why a plain MQTT connection failed: does the port speak TLS?

A TLS port that gets a plain MQTT CONNECT just closes the connection, and the broker's silence
reads like a refusal by the policy. After such a failure, the commands ask the port directly.
"""

from __future__ import annotations

import contextlib
import ssl

import anyio

# The first bytes of a TLS record: content type handshake (22) or alert (21), version 3.x.
_TLS_RECORD_TYPES = (21, 22)
_TLS_MAJOR_VERSION = 3


async def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:  # noqa: ASYNC109
    """Whether ``host:port`` answers a TLS ClientHello with a TLS record (a ServerHello or an
    alert). Nothing is verified or sent beyond the hello: no handshake is completed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    outgoing = ssl.MemoryBIO()
    hello = context.wrap_bio(ssl.MemoryBIO(), outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):  # the ClientHello is written, then it waits
        hello.do_handshake()
    with anyio.move_on_after(timeout):
        try:
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(outgoing.read())
                reply = await stream.receive(5)
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            return False
        return len(reply) >= 2 and reply[0] in _TLS_RECORD_TYPES and reply[1] == _TLS_MAJOR_VERSION
    return False
