"""Test doubles for unit-testing code built on ancsync, without a broker.

:class:`FakeBroker` holds the state of an in-memory MQTT broker that a test scripts and reads;
each :class:`FakeTransport` it makes is one connection of an :class:`~ancsync.IoTConnection`
(pass ``transport_factory=broker.transport``)::

    broker = FakeBroker()
    async with IoTConnection(settings=settings, transport_factory=broker.transport) as iot:
        await iot.wait_connected()
        broker.deliver("anc/devices/dev-1/commands", b'{"command": "reboot", ...}')
        await broker.wait_until(lambda: broker.published)

Integration tests belong on a real broker (the emulator); these are for one piece at a time:
your delta handler, your command handler, your reaction to a lost connection.

:func:`start_in_task` runs any :class:`~ancsync.lifecycle.Component` (the emulator, a device
connection) where a task group cannot be held open, such as a pytest-asyncio fixture, whose
setup and teardown run in different tasks::

    @pytest.fixture
    async def emulator(tmp_path):
        started = await start_in_task(Emulator(tmp_path / "certs"))
        yield started.part
        await started.stop()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

from ancsync.errors import ConnectError
from ancsync.lifecycle import Component
from ancsync.mqtt.transport import ConnectOptions, IncomingMessage

__all__ = ["FakeBroker", "FakeTransport", "StartedPart", "start_in_task"]

PartT = TypeVar("PartT", bound=Component)


class _Ready:
    """The ``task_status`` of a part run by :func:`start_in_task`: resolves a future."""

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self._ready = ready

    def started(self, value: None = None) -> None:
        self._ready.set_result(None)


@dataclass(frozen=True)
class StartedPart(Generic[PartT]):
    """A :class:`~ancsync.lifecycle.Component` running in a task of its own (see
    :func:`start_in_task`); ``part`` is the component itself."""

    part: PartT
    _task: asyncio.Task[None]

    async def stop(self) -> None:
        """Stop the part, from any task, and return once it has shut down.

        The part's usual shutdown, bounded by its ``stop_timeout``. If the part failed while
        it ran, its error is raised here (so a fixture's teardown shows it).
        """
        await self.part.aclose()
        await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.result()


async def start_in_task(part: PartT) -> StartedPart[PartT]:
    """Run ``part`` in an asyncio task of its own; return once it is ready.

    For the places where the part's owner cannot keep a task group open around it: a
    pytest-asyncio fixture (setup and teardown run in different tasks), or a test that starts
    and stops a broker between other blocks. Anywhere else, prefer
    ``await task_group.start(part.run)`` or ``async with part:``. An error the part raises
    before it is ready is raised here; stop it with :meth:`StartedPart.stop`.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    # The one plain task of ancsync: it holds the part between two calls from any tasks.
    task = loop.create_task(part.run(task_status=_Ready(ready)), name=f"ancsync {part.name}")
    try:
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled while the part starts: stop it
        task.cancel()
        await asyncio.wait([task])
        raise
    if not ready.done():
        ready.cancel()
        task.result()  # the part's error
        raise RuntimeError(f"the {part.name} component ended before it was ready")
    return StartedPart(part, task)


@dataclass
class FakeBroker:
    """The state behind :class:`FakeTransport` instances, which a unit test scripts and reads.

    - ``connect_errors``: raised by the next connects, in order (then connects succeed).
    - ``auto_ack``: when false, QoS 1 publishes wait until :meth:`ack` is called.
    - ``attempted`` / ``published``: every publish started / completed, in order, as
      ``(topic, payload, qos, retain)``.
    - :meth:`wait_until` waits for a condition on this state, re-checked after every change.
    - ``suback``: granted code per filter (default: the requested QoS); ``SUBSCRIBE_FAILURE``
      refuses one.
    - ``denied``: topics and filters the policy denies: publishing to one, or subscribing to
      one, closes the connection, as AWS IoT Core does on MQTT 3.1.1.
    """

    connect_errors: list[ConnectError] = field(default_factory=list)
    auto_ack: bool = True
    attempted: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    published: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    subscribe_packets: list[list[str]] = field(default_factory=list)
    suback: dict[str, int] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    connects: list[ConnectOptions] = field(default_factory=list)
    current: FakeTransport | None = None
    _changed: anyio.Event | None = None

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` is true; it is checked after every change."""
        while not condition():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _note_change(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def transport(self) -> FakeTransport:
        """A transport factory for the session (one transport per connect attempt)."""
        return FakeTransport(self)

    def ack(self) -> None:
        """Acknowledge every QoS 1 publish waiting for its PUBACK (with ``auto_ack`` off)."""
        if self.current is not None:
            self.current._release()

    def deliver(self, topic: str, payload: bytes) -> None:
        """Hand an incoming message to the connected transport."""
        if self.current is None:
            raise ConnectError("fake broker: no connection to deliver to")
        self.current._incoming_send.send_nowait(IncomingMessage(topic, payload, 1, False))

    def drop(self, reason: str = "fake link dropped") -> None:
        """Lose the current connection, as a network failure would."""
        if self.current is not None:
            self.current._lose(reason)


class FakeTransport:
    """An in-memory :class:`Transport` driven by a :class:`FakeBroker`. For unit tests only."""

    def __init__(self, broker: FakeBroker) -> None:
        self._broker = broker
        self._reason: str | None = None
        self._unacked: list[tuple[Callable[[], None], tuple[str, bytes, int, bool]]] = []
        self._incoming_send, self._incoming = anyio.create_memory_object_stream[IncomingMessage](
            100
        )

    def _release(self) -> None:
        for ack, record in self._unacked:
            self._complete(ack, record)
        self._unacked.clear()

    def _lose(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason
            self._incoming_send.close()
            self._unacked.clear()  # never acknowledged, as on a real lost link
            if self._broker.current is self:
                self._broker.current = None
            self._broker._note_change()

    def _check(self) -> None:
        if self._reason is not None:
            raise ConnectError(f"connection lost: {self._reason}")

    async def connect(self, options: ConnectOptions) -> None:
        await anyio.lowlevel.checkpoint()
        self._broker.connects.append(options)
        self._broker._note_change()
        if self._broker.connect_errors:
            raise self._broker.connect_errors.pop(0)
        self._broker.current = self

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, on_done: Callable[[], None]
    ) -> None:
        self._check()
        record = (topic, payload, qos, retain)
        self._broker.attempted.append(record)
        self._broker._note_change()
        if topic in self._broker.denied:
            self._lose(f"the broker closed the connection after a publish to {topic}")
        elif qos and not self._broker.auto_ack:
            self._unacked.append((on_done, record))
        else:
            self._complete(on_done, record)

    def _complete(self, on_done: Callable[[], None], record: tuple[str, bytes, int, bool]) -> None:
        self._broker.published.append(record)
        self._broker._note_change()
        on_done()

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        self._check()
        await anyio.lowlevel.checkpoint()
        self._broker.subscribe_packets.append([f for f, _ in filters])
        if any(f in self._broker.denied for f, _ in filters):
            self._lose("the broker closed the connection after a SUBSCRIBE")
            self._check()
        self._broker.subscribed.extend(f for f, _ in filters)
        self._broker._note_change()
        return [self._broker.suback.get(f, qos) for f, qos in filters]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        self._check()
        await anyio.lowlevel.checkpoint()
        for f in filters:
            self._broker.subscribed.remove(f)
        self._broker._note_change()

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        async for message in self._incoming:
            yield message
        self._check()

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()
        self._lose("closed by the client")
