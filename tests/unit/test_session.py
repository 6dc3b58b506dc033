"""MqttSession against the in-memory FakeTransport: the connect sequence, requeue on loss,
permanent errors, subscriptions, hooks and shutdown. (Real-broker behaviour: tests/integration.)"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio.abc import ObjectReceiveStream

from ancsync.codec import decode, decode_model
from ancsync.errors import (
    ConnectError,
    ConnectTimeout,
    NotAuthorized,
    PublishTimeout,
    TLSError,
    TopicNotAllowed,
)
from ancsync.models import DeviceStatus
from ancsync.mqtt.backoff import Backoff, BackoffPolicy
from ancsync.mqtt.outbox import Lane, Outbox, OutgoingMessage, PublishHandle
from ancsync.mqtt.ratelimit import RateLimiter
from ancsync.mqtt.router import TopicRouter
from ancsync.mqtt.session import ConnectionEvent, MqttSession
from ancsync.mqtt.transport import SUBSCRIBE_FAILURE
from ancsync.status import SessionStatus
from ancsync.testing import FakeBroker

THING = "anc-device-001"
STATUS = f"anc/devices/{THING}/status"


class Rig:
    """A session on a fake broker, with its outbox and router, running in a task group."""

    def __init__(self, broker: FakeBroker, **options: Any) -> None:
        self.broker = broker
        self.outbox = Outbox()
        self.router = TopicRouter()
        options.setdefault("backoff", Backoff(BackoffPolicy(base=0.001, cap=0.002)))
        options.setdefault("rate_limiter", RateLimiter(10_000, 10_000_000))
        self.session = MqttSession(
            thing_name=THING,
            host="127.0.0.1",
            port=8883,
            outbox=self.outbox,
            router=self.router,
            ssl_context_factory=None,
            transport_factory=broker.transport,
            **options,
        )

    def put(self, topic: str, n: int, lane: Lane = Lane.TELEMETRY) -> PublishHandle:
        handle = PublishHandle(f"m{n}")
        self.outbox.put(
            OutgoingMessage(topic, b'{"n":%d}' % n, 1, False, lane, f"m{n}", None, handle)
        )
        return handle


@contextlib.asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[Rig]:
    """Run the router and the session for the block, then cancel them."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(rig.router.run)
            await tg.start(rig.session.run)
            yield rig
            tg.cancel_scope.cancel()


async def test_connect_sequence() -> None:
    """Last will offline, subscriptions (8 per SUBSCRIBE), then retained status online."""
    rig = Rig(FakeBroker())
    for n in range(10):
        rig.router.add_route(f"anc/in/{n}", lambda topic, payload: None)
    async with running(rig):
        await rig.session.wait_connected()

    options = rig.broker.connects[0]
    assert (options.client_id, options.clean_session) == (THING, True)
    assert options.will is not None
    will = decode_model(options.will.payload, DeviceStatus)
    assert (options.will.topic, will.status, options.will.retain) == (STATUS, "offline", True)

    assert [len(packet) for packet in rig.broker.subscribe_packets] == [8, 2]
    topic, payload, qos, retain = rig.broker.published[0]
    online = decode_model(payload, DeviceStatus)
    assert (topic, online.status, qos, retain) == (STATUS, "online", 1, True)
    assert online.session_id == will.session_id


async def test_a_client_that_is_not_a_device_announces_no_status() -> None:
    """announce_status=False: no last will, no status online after connect nor offline on stop."""
    rig = Rig(FakeBroker(), announce_status=False)
    async with running(rig):
        await rig.session.wait_connected()
        await rig.put("anc/ops/request", 1).delivered()
        await rig.session.aclose(timeout=1)
    assert rig.broker.connects[0].will is None
    assert [topic for topic, *_ in rig.broker.attempted] == ["anc/ops/request"]


async def test_unacknowledged_messages_are_requeued_with_their_ids() -> None:
    async with running(Rig(FakeBroker())) as rig:
        await rig.session.wait_connected()
        rig.broker.auto_ack = False
        handles = [rig.put(f"anc/t/{n}", n) for n in range(3)]
        await rig.broker.wait_until(lambda: len(rig.broker.attempted) == 1 + 3)
        assert rig.session.status()["in_flight"] == 3

        with rig.session.events() as events:
            rig.broker.auto_ack = True
            rig.broker.drop("cable pulled")
            lost = await _next(events, "disconnected")
            assert "cable pulled" in str(lost.error)
            for handle in handles:
                await handle.delivered()
        # Resent after the reconnect, in order, once each (each alone: see mqtt/refusals.py).
        resent = [topic for topic, *_ in rig.broker.published if topic != STATUS]
        assert resent == ["anc/t/0", "anc/t/1", "anc/t/2"]
        assert rig.outbox.stats()["telemetry"]["requeued"] == 3
        assert rig.session.status()["reconnect_count"] == 1


async def test_emergency_lane_drains_first() -> None:
    rig = Rig(FakeBroker())
    rig.put("anc/t/0", 0)
    rig.put("anc/t/1", 1)
    rig.put("anc/e", 2, Lane.EMERGENCY)
    async with running(rig):
        await rig.broker.wait_until(lambda: len(rig.broker.published) == 4)
    # Then status "offline", published by the stop.
    assert [topic for topic, *_ in rig.broker.published[1:4]] == ["anc/e", "anc/t/0", "anc/t/1"]


class ManualClock:
    """A clock for the rate limiter that moves only when the test calls :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeping = anyio.Event()  # set once something sleeps on this clock
        self._moved = anyio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        self.sleeping.set()
        while self.now < until:
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()
        self._moved = anyio.Event()


@pytest.mark.parametrize(
    ("messages_per_second", "bytes_per_second"),
    [(5, 10_000_000), (10_000, 35)],  # 5 messages/s; 35 bytes/s with 7-byte payloads
    ids=["message-limit", "byte-limit"],
)
async def test_emergency_goes_before_telemetry_waiting_for_the_rate_limit(
    messages_per_second: float, bytes_per_second: float
) -> None:
    """At the rate limit, the writer waits before choosing: an emergency queued during the wait
    is the next message out, not the telemetry that was first in line when the wait began."""
    clock = ManualClock()
    limiter = RateLimiter(messages_per_second, bytes_per_second, clock=clock, sleep=clock.sleep)
    rig = Rig(FakeBroker(), rate_limiter=limiter, stop_timeout=0.3)  # the stop cannot finish
    for n in range(10):
        rig.put(f"anc/t/{n}", n)
    async with running(rig):
        # The buckets hold one second's worth: that goes at once, then the writer waits.
        await clock.sleeping.wait()
        sent = len(rig.broker.published)
        assert sent in range(2, 10)  # some went at once, not all ten
        rig.put("anc/e", 99, Lane.EMERGENCY)
        clock.advance(0.2)  # room for one more message
        await rig.broker.wait_until(lambda: len(rig.broker.published) == sent + 1)
    topics = [topic for topic, *_ in rig.broker.published[1 : sent + 1]]  # the stop flushes more
    assert topics == [f"anc/t/{n}" for n in range(sent - 1)] + ["anc/e"]


async def test_incoming_messages_reach_the_router() -> None:
    got = anyio.Event()
    seen: list[Any] = []

    def handler(topic: str, payload: Any) -> None:
        seen.append((topic, payload))
        got.set()

    rig = Rig(FakeBroker())
    rig.router.add_route("anc/devices/+/commands", handler)
    async with running(rig):
        await rig.session.wait_connected()
        rig.broker.deliver(f"anc/devices/{THING}/commands", b'{"command":"reboot"}')
        await got.wait()
    assert seen == [(f"anc/devices/{THING}/commands", {"command": "reboot"})]


async def test_subscription_changes_follow_the_router() -> None:
    async with running(Rig(FakeBroker())) as rig:
        await rig.session.wait_connected()
        route = rig.router.add_route("anc/a/#", lambda topic, payload: None)
        rig.session.subscriptions_changed()
        await rig.broker.wait_until(lambda: rig.broker.subscribed == ["anc/a/#"])
        rig.router.remove_route(route)
        rig.session.subscriptions_changed()
        await rig.broker.wait_until(lambda: rig.broker.subscribed == [])


async def test_wait_subscribed_returns_once_the_broker_answered_the_subscribe() -> None:
    broker = FakeBroker()
    async with running(Rig(broker)) as rig:
        await rig.session.wait_connected()
        rig.router.add_route("anc/replies/+", lambda topic, payload: None)
        rig.session.subscriptions_changed()
        await rig.session.wait_subscribed(["anc/replies/+"])
        assert broker.subscribe_packets[-1] == ["anc/replies/+"]
        await rig.session.wait_subscribed([])  # nothing to wait for while connected


async def test_reconnect_connects_again_at_once_and_resends_what_was_unacknowledged() -> None:
    broker = FakeBroker()
    # A backoff of a minute: only a reconnect that skips it ends within the test's deadline.
    rig = Rig(broker, backoff=Backoff(BackoffPolicy(base=60, cap=60)))
    async with running(rig):
        await rig.session.wait_connected()
        broker.auto_ack = False
        handle = rig.put("anc/t/1", 1)
        await broker.wait_until(lambda: len(broker.attempted) == 2)  # status, message
        broker.auto_ack = True
        kinds = []
        with rig.session.events() as events:
            rig.session.reconnect()
            async for event in events:
                kinds.append(event.kind)
                if event.kind == "connected":
                    break
        await handle.delivered()
        assert len(broker.connects) == 2
        assert kinds == ["disconnected", "connecting", "connected"]
        assert rig.session.status()["reconnect_count"] == 1
    assert [topic for topic, *_ in broker.published].count("anc/t/1") == 1


async def test_after_reconnect_wait_connected_waits_for_the_new_attempt() -> None:
    """A refused certificate replaced on disk: the old error must not answer for the new one."""
    broker = FakeBroker(connect_errors=[TLSError("certificate revoked")])
    rig = Rig(broker, backoff=Backoff(BackoffPolicy(base=60, cap=60)))
    async with running(rig):
        with pytest.raises(TLSError):
            await rig.session.wait_connected()
        rig.session.reconnect()  # the files were fixed
        await rig.session.wait_connected()
    assert len(broker.connects) == 2


async def test_refused_subscription_is_reported() -> None:
    rig = Rig(FakeBroker(suback={"anc/secret/#": SUBSCRIBE_FAILURE}))
    rig.router.add_route("anc/secret/#", lambda topic, payload: None)
    rig.router.add_route("anc/ok", lambda topic, payload: None)
    async with running(rig):
        await rig.session.wait_connected()
        assert rig.session.status()["failed_subscriptions"] == ["anc/secret/#"]


async def test_a_subscription_the_broker_answers_by_disconnecting_is_given_up() -> None:
    """AWS IoT closes the connection on a denied SUBSCRIBE: the session isolates the filter,
    stops subscribing to it, says so, and keeps the rest of the connection."""
    rig = Rig(FakeBroker(denied={"anc/secret/#"}))
    for n in range(3):
        rig.router.add_route(f"anc/ok/{n}", lambda topic, payload: None)
    rig.router.add_route("anc/secret/#", lambda topic, payload: None)
    with rig.session.events() as events:
        async with running(rig):
            refused = await _next(events, "refused")
            await rig.session.wait_connected()
            await rig.broker.wait_until(lambda: "anc/ok/2" in rig.broker.subscribed)
            status = rig.session.status()
    assert isinstance(refused.error, TopicNotAllowed)
    assert refused.error.topic == "anc/secret/#"
    assert "iot:Subscribe on topicfilter/anc/secret/#" in str(refused.error)
    assert status["failed_subscriptions"] == ["anc/secret/#"]
    # One SUBSCRIBE with all four, then the suspect alone twice: three lost connections.
    assert [p for p in rig.broker.subscribe_packets if "anc/secret/#" in p][1:] == [
        ["anc/secret/#"],
        ["anc/secret/#"],
    ]
    assert len(rig.broker.connects) == 4


async def test_a_publish_the_broker_answers_by_disconnecting_fails_and_the_rest_goes() -> None:
    rig = Rig(FakeBroker(denied={"anc/forbidden"}))
    async with running(rig):
        await rig.session.wait_connected()
        with rig.session.events() as events:
            before = [rig.put(f"anc/t/{n}", n) for n in range(3)]
            denied = rig.put("anc/forbidden", 99)
            after = [rig.put(f"anc/t/{n}", n) for n in range(3, 6)]
            refused = await _next(events, "refused")
        with pytest.raises(TopicNotAllowed, match="iot:Publish on topic/anc/forbidden"):
            await denied.delivered()
        for handle in before + after:
            await handle.delivered()  # nothing else is lost
        assert rig.session.status()["refused_topics"] == ["anc/forbidden"]
    assert refused.error is not None
    assert "anc/forbidden" in str(refused.error)
    sent = [topic for topic, *_ in rig.broker.published]
    assert [t for t in sent if t.startswith("anc/t/")] == [f"anc/t/{n}" for n in range(6)]


async def test_a_message_in_flight_at_an_ordinary_loss_is_sent_again_alone_and_delivered() -> None:
    rig = Rig(FakeBroker())
    async with running(rig):
        await rig.session.wait_connected()
        rig.broker.auto_ack = False
        handles = [rig.put(f"anc/t/{n}", n) for n in range(3)]
        await rig.broker.wait_until(lambda: len(rig.broker.attempted) == 1 + 3)
        rig.broker.auto_ack = True
        rig.broker.drop("cable pulled")
        for handle in handles:
            await handle.delivered()
        assert rig.session.status()["refused_topics"] == []


@pytest.mark.parametrize("error", [TLSError("bad certificate"), NotAuthorized("no policy")])
async def test_permanent_error_is_raised_and_retried_slowly(error: ConnectError) -> None:
    backoff = Backoff(BackoffPolicy(base=0.001, cap=0.01), random=lambda: 1.0)
    rig = Rig(FakeBroker(connect_errors=[error]), backoff=backoff)
    with rig.session.events() as events:
        async with running(rig):
            with pytest.raises(type(error)):
                await rig.session.wait_connected()
            status = rig.session.status()
            assert status["last_error"]["permanent"] is True
            assert status["last_error"]["type"] == type(error).__name__
            failed = await _next(events, "disconnected")
            assert failed.retry_in == 0.01  # the cap, not the base
            # It keeps trying: once the cloud side is fixed it connects by itself.
            await _next(events, "connected")
            assert rig.session.permanent_error is None
            await rig.session.wait_connected()


async def test_wait_connected_times_out_naming_the_last_error() -> None:
    refused = ConnectError("127.0.0.1:8883 refused the TCP connection")
    broker = FakeBroker(connect_errors=[refused] * 1000)
    rig = Rig(broker, backoff=Backoff(BackoffPolicy(base=10, cap=10)))
    async with running(rig):
        with pytest.raises(ConnectTimeout, match="refused the TCP connection"):
            await rig.session.wait_connected(timeout=0.05)


async def test_connect_hooks_run_after_every_connect() -> None:
    rig = Rig(FakeBroker())
    runs, ran = anyio.create_memory_object_stream[str](10)

    async def hook() -> None:
        runs.send_nowait(rig.session.link_state.value)

    rig.session.add_connect_hook(hook)
    async with running(rig):
        assert await ran.receive() == "connected"
        rig.broker.drop()
        assert await ran.receive() == "connected"
    assert rig.session.connections == 2


async def test_a_failing_hook_does_not_affect_the_connection() -> None:
    async def broken() -> None:
        raise RuntimeError("hook bug")

    rig = Rig(FakeBroker())
    rig.session.add_connect_hook(broken)
    async with running(rig):
        await rig.session.wait_connected()
        await rig.put("anc/after-hook", 1).delivered()
        assert rig.session.status()["reconnect_count"] == 0


async def test_stop_flushes_then_publishes_offline() -> None:
    rig = Rig(FakeBroker())
    async with running(rig):
        await rig.session.wait_connected()
        handles = [rig.put(f"anc/t/{n}", n) for n in range(5)]
        await rig.session.aclose(timeout=2)
        assert rig.session.link_state.value == "stopped"
    for handle in handles:
        await handle.delivered()
    topics = [topic for topic, *_ in rig.broker.published]
    assert topics == [STATUS] + [f"anc/t/{n}" for n in range(5)] + [STATUS]
    assert decode(rig.broker.published[-1][1])["status"] == "offline"


async def test_stop_fails_the_handles_it_could_not_flush() -> None:
    """After the flush deadline, sent-but-unacknowledged and never-sent messages fail, each
    with an error saying which it was, instead of leaving delivered() waiting forever."""
    rig = Rig(FakeBroker(), in_flight=2, announce_status=False)
    async with running(rig):
        await rig.session.wait_connected()
        rig.broker.auto_ack = False
        handles = [rig.put(f"anc/t/{n}", n) for n in range(3)]
        await rig.broker.wait_until(lambda: len(rig.broker.attempted) == 2)
        await rig.session.aclose(timeout=0.05)
    with anyio.fail_after(1):
        for handle in handles[:2]:
            with pytest.raises(PublishTimeout, match="may or may not have it"):
                await handle.delivered()
        with pytest.raises(ConnectError, match="never sent"):
            await handles[2].delivered()


async def test_cancelled_run_fails_the_handles_left() -> None:
    rig = Rig(FakeBroker(auto_ack=False), announce_status=False, stop_timeout=0.3)
    async with running(rig):
        await rig.session.wait_connected()
        handle = rig.put("anc/t/0", 0)
        await rig.broker.wait_until(lambda: len(rig.broker.attempted) == 1)
    with anyio.fail_after(1), pytest.raises(PublishTimeout):
        await handle.delivered()


async def test_a_permanent_error_is_forgotten_after_an_ordinary_failure() -> None:
    """A TLS error followed by network failures: wait_connected() reports the network, not TLS."""
    refused = ConnectError("127.0.0.1:8883 refused the TCP connection")
    broker = FakeBroker(connect_errors=[TLSError("bad certificate")] + [refused] * 100)
    backoff = Backoff(BackoffPolicy(base=0.01, cap=0.01), random=lambda: 1.0)
    rig = Rig(broker, backoff=backoff)
    with rig.session.events() as events:
        async with running(rig):
            assert isinstance((await _next(events, "disconnected")).error, TLSError)
            assert (await _next(events, "disconnected")).error is refused
            assert rig.session.permanent_error is None
            with pytest.raises(ConnectTimeout, match="refused the TCP connection"):
                await rig.session.wait_connected(timeout=0.05)


async def test_wait_connected_raises_once_run_has_ended() -> None:
    refused = ConnectError("127.0.0.1:8883 refused the TCP connection")
    broker = FakeBroker(connect_errors=[refused] * 10)
    rig = Rig(broker, backoff=Backoff(BackoffPolicy(base=10, cap=10)))
    failures: list[BaseException] = []

    async def wait() -> None:
        try:
            await rig.session.wait_connected()
        except ConnectError as exc:
            failures.append(exc)

    async with running(rig) as rig, anyio.create_task_group() as waiters:
        waiters.start_soon(wait)  # already waiting when run() ends
        await rig.broker.wait_until(lambda: len(rig.broker.connects) == 1)
        await rig.session.aclose()
    assert len(failures) == 1
    assert "has stopped" in str(failures[0])
    with anyio.fail_after(1), pytest.raises(ConnectError, match="has stopped"):
        await rig.session.wait_connected()  # and after


async def _next(events: ObjectReceiveStream[ConnectionEvent], kind: str) -> ConnectionEvent:
    async for event in events:
        if event.kind == kind:
            return event
    raise AssertionError(f"no {kind!r} event")


async def test_the_session_status_has_the_documented_fields_and_the_last_error() -> None:
    broker = FakeBroker(connect_errors=[ConnectError("refused: broker busy")])
    rig = Rig(broker)
    async with running(rig):
        await rig.session.wait_connected()
        rig.put("anc/t/1", 1)
        await broker.wait_until(lambda: len(broker.published) == 2)  # status, message
        status = rig.session.status()
    assert set(status) == set(SessionStatus.__annotations__)
    assert status["state"] == "connected"
    assert status["connect_attempts"] == 2
    assert status["reconnect_count"] == 0
    assert status["connected_since"] is not None
    error = status["last_error"]
    assert error is not None
    assert error["type"] == "ConnectError"
    assert error["message"] == "refused: broker busy"
    assert error["permanent"] is False
    assert error["at"] is not None
    assert (status["published"], status["acknowledged"]) == (1, 1)  # the outbox's message
    assert status["in_flight"] == 0


async def test_wait_not_connected_returns_at_once_when_not_connected() -> None:
    rig = Rig(FakeBroker(connect_errors=[ConnectError("down")] * 1000))
    with anyio.fail_after(5):
        await rig.session.wait_not_connected()  # never started
        async with running(rig):
            await rig.session.wait_not_connected()


async def test_a_removed_connect_hook_does_not_run_and_removing_twice_is_harmless() -> None:
    broker = FakeBroker()
    rig = Rig(broker)
    calls: list[str] = []

    async def hook() -> None:
        calls.append("hook")

    remove = rig.session.add_connect_hook(hook)
    remove()
    remove()
    async with running(rig):
        await rig.session.wait_connected()
        broker.drop()
        await rig.session.wait_connected()
    assert calls == []
