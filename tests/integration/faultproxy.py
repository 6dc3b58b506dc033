"""A fault-injecting TCP proxy on 127.0.0.1 for connection tests.

It sits between a client and the broker and forwards bytes unchanged (TLS passes through, so the
client still verifies the broker). Faults:

- :meth:`FaultProxy.cut`: close every open connection at once (both sides), like a broker crash
  or a NAT reset.
- :attr:`FaultProxy.refuse`: accept new connections and close them at once (broker down).
- :meth:`FaultProxy.swallow`: keep every open connection up but silently discard its traffic in
  both directions: a half-open link. New connections forward normally.
- :attr:`FaultProxy.delay`: seconds added before forwarding each chunk.

:attr:`FaultProxy.accepted` counts accepted connections; :meth:`wait_accepted` waits for a count.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import anyio
from anyio.abc import SocketStream, TaskGroup

HOST = "127.0.0.1"


class _Link:
    """One proxied connection: the client side, the broker side, and whether it is swallowed."""

    def __init__(self, client: SocketStream, upstream: SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.swallowed = False
        self.scope = anyio.CancelScope()


async def _close(link: _Link) -> None:
    with anyio.CancelScope(shield=True):
        await link.client.aclose()
        await link.upstream.aclose()


class FaultProxy:
    """``async with FaultProxy(broker_port) as proxy:`` then connect to ``proxy.port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.refuse = False
        self.delay = 0.0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._changed = anyio.Event()
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        # Close every link, swallowed ones too, so the broker sees the connections end.
        await self.cut()
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def cut(self) -> None:
        """Close every open connection."""
        for link in list(self._links):
            link.scope.cancel()
            await _close(link)

    def swallow(self) -> None:
        """Make every open connection half-open: traffic is read and dropped both ways."""
        for link in self._links:
            link.swallowed = True

    async def wait_accepted(self, count: int) -> None:
        """Wait until at least ``count`` connections have been accepted in total."""
        while self.accepted < count:
            await self._changed.wait()

    def _note_accepted(self) -> None:
        self.accepted += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def _handle(self, client: SocketStream) -> None:
        self._note_accepted()
        if self.refuse:
            await client.aclose()
            return
        try:
            upstream = await anyio.connect_tcp(HOST, self.upstream_port)
        except OSError:
            await client.aclose()
            return
        link = _Link(client, upstream)
        self._links.add(link)
        try:
            with link.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, link, client, upstream, tg)
                    tg.start_soon(self._pump, link, upstream, client, tg)
        finally:
            self._links.discard(link)
            await _close(link)

    async def _pump(
        self, link: _Link, source: SocketStream, sink: SocketStream, tg: TaskGroup
    ) -> None:
        try:
            async for chunk in source:
                if link.swallowed:
                    continue
                if self.delay:
                    await anyio.sleep(self.delay)  # ok: the injected delay is the fault
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        # One side closed: close the other, as a TCP proxy does (unless half-open on purpose).
        if not link.swallowed:
            tg.cancel_scope.cancel()
