"""EmergencyReporter on the in-memory FakeBroker, with a real durable store in tmp_path.

The same promises as against the emulator (tests/integration/test_emergency.py), one piece at a
time and fast enough for mutation testing: stored before ``report_emergency`` returns, numbered
in order, forgotten only on PUBACK, re-sent by the next run, kept when refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import fake_connection

from ancsync import DurableStore, EmergencyReporter, IoTConnection
from ancsync.codec import decode_model
from ancsync.errors import BufferFull, ConnectError, InvalidPayload, PublishTimeout
from ancsync.models import EmergencyEvent, EmergencyInput
from ancsync.mqtt.outbox import DEFAULT_LIMITS, Lane, LaneLimits
from ancsync.testing import FakeBroker

THING = "anc-device-001"
TOPIC = f"anc/devices/{THING}/emergency"
TIMEOUT = 5


def siren(action: str = "anc_bypassed") -> dict[str, Any]:
    return {"is_emergency": True, "predicted_class": "siren", "confidence": 0.9, "action": action}


def sent_events(broker: FakeBroker, *, acknowledged: bool = True) -> list[EmergencyEvent]:
    records = broker.published if acknowledged else broker.attempted
    return [decode_model(body, EmergencyEvent) for topic, body, _, _ in records if topic == TOPIC]


@asynccontextmanager
async def reporter(
    broker: FakeBroker,
    store: DurableStore,
    *,
    lane_limits: dict[Lane, LaneLimits] | None = None,
    **options: Any,
) -> AsyncIterator[EmergencyReporter]:
    """A connection on ``broker`` and a reporter on ``store``, both running for the block."""
    connection = fake_connection(broker, THING, lane_limits=lane_limits or DEFAULT_LIMITS)
    options.setdefault("retry_interval", 0.01)
    async with connection, EmergencyReporter(connection, store=store, **options) as part:
        await connection.wait_connected(TIMEOUT)
        yield part


@pytest.fixture
def store(tmp_path: Path) -> DurableStore:
    return DurableStore.in_dir(tmp_path)


async def test_events_are_stored_before_the_call_returns_sent_in_order_and_then_forgotten(
    store: DurableStore,
) -> None:
    broker = FakeBroker(auto_ack=False)
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, store) as part:
            events = [await part.report_emergency(siren(f"a{n}")) for n in range(3)]
            assert [m.msg_id for m in store.pending("emergency")] == [e.event_id for e in events]
            assert part.get_status()["pending"] == 3
            assert part.get_status()["oldest_pending_age_s"] is not None
            await broker.wait_until(lambda: len(broker.attempted) == 3)
            broker.ack()
            await part.wait_acknowledged()
            assert store.pending() == []
            status = part.get_status()
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.action for e in events] == ["a0", "a1", "a2"]
    assert {e.device_id for e in events} == {THING}
    assert len({e.event_id for e in events}) == 3
    assert sent_events(broker) == events  # in seq order, exactly as returned
    assert [qos for topic, _, qos, _ in broker.published if topic == TOPIC] == [1, 1, 1]
    assert status["reported"] == 3
    assert status["acknowledged"] == 3
    assert status["pending"] == 0
    assert status["resent_from_store"] == 0
    assert status["oldest_pending_age_s"] is None
    assert status["last_error"] is None
    assert status["running"] is True


async def test_an_emergency_input_model_and_its_severity_are_sent_as_given(
    store: DurableStore,
) -> None:
    """Also: an event acknowledged right before the stop is not left in the store (a stop that
    cancelled the follower between the PUBACK and the delete used to leave it, sent twice)."""
    broker = FakeBroker()
    given = EmergencyInput(
        is_emergency=True,
        predicted_class="fire_alarm",
        confidence=0.75,
        action="stop",
        severity="warning",
    )
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, store) as part:
            event = await part.report_emergency(given, wait_for_ack=True)
    assert (event.predicted_class, event.confidence) == ("fire_alarm", 0.75)
    assert event.severity == "warning"
    assert sent_events(broker) == [event]
    assert store.pending() == []


async def test_a_bad_event_is_refused_with_its_field_named_and_uses_no_number(
    store: DurableStore,
) -> None:
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, store) as part:
            with pytest.raises(InvalidPayload, match="confidence"):
                await part.report_emergency({**siren(), "confidence": 7})
            with pytest.raises(InvalidPayload, match="mapping or an EmergencyInput, not list"):
                await part.report_emergency([1, 2])  # type: ignore[arg-type]
            assert store.pending() == []
            event = await part.report_emergency(siren(), wait_for_ack=True)
            assert part.get_status()["reported"] == 1
    assert event.seq == 1


async def test_what_a_run_left_unacknowledged_is_resent_by_the_next_with_the_same_ids(
    store: DurableStore,
) -> None:
    first = FakeBroker(auto_ack=False)  # nothing is acknowledged during the first run
    with anyio.fail_after(TIMEOUT):
        async with reporter(first, store, stop_timeout=0.2) as part:
            left = [await part.report_emergency(siren(f"a{n}")) for n in range(2)]
        assert part.get_status()["acknowledged"] == 0
        assert [m.msg_id for m in store.pending("emergency")] == [e.event_id for e in left]

        second = FakeBroker()
        async with reporter(second, store) as again:
            await again.wait_acknowledged()
            later = await again.report_emergency(siren("later"), wait_for_ack=True)
            await again.wait_acknowledged()
            status = again.get_status()
    assert sent_events(second) == [*left, later]
    assert later.seq == 3  # numbering goes on across runs
    assert status["resent_from_store"] == 2
    assert status["acknowledged"] == 3
    assert status["reported"] == 1
    assert store.pending() == []


async def test_an_event_unacknowledged_at_a_lost_connection_is_sent_again_and_kept_once(
    store: DurableStore,
) -> None:
    broker = FakeBroker(auto_ack=False)
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, store) as part:
            event = await part.report_emergency(siren())
            await broker.wait_until(lambda: any(t == TOPIC for t, *_ in broker.attempted))
            broker.drop()
            await broker.wait_until(lambda: len(broker.connects) == 2)
            await broker.wait_until(lambda: sum(t == TOPIC for t, *_ in broker.attempted) == 2)
            broker.ack()
            await part.wait_acknowledged()
            assert part.get_status()["acknowledged"] == 1
    assert sent_events(broker) == [event]
    assert store.pending() == []


async def test_an_event_whose_topic_is_refused_stays_stored_and_is_not_retried(
    store: DurableStore,
) -> None:
    broker = FakeBroker(denied={TOPIC})  # the broker disconnects on every publish to it
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, store) as part:
            event = await part.report_emergency(siren())
            await broker.wait_until(lambda: part.get_status()["last_error"] is not None)
            refused_after = len(broker.attempted)
            status = part.get_status()
            # Refused for good: a second report is refused at the call, nothing is sent.
            await part.report_emergency(siren("second"))
            await broker.wait_until(lambda: part.get_status()["reported"] == 2)
            assert len(broker.attempted) == refused_after
    assert "not allow iot:Publish" in str(status["last_error"])
    assert status["pending"] == 1
    assert status["acknowledged"] == 0
    first, _second = store.pending("emergency")  # both kept for a start with a fixed policy
    assert first.msg_id == event.event_id


async def test_waiting_for_the_ack_times_out_with_the_event_still_stored(
    store: DurableStore,
) -> None:
    broker = FakeBroker(auto_ack=False)
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, store, stop_timeout=0.2) as part:
            with pytest.raises(PublishTimeout):
                await part.report_emergency(siren(), wait_for_ack=True, timeout=0.05)
            assert len(store.pending("emergency")) == 1
            broker.ack()
            await part.wait_acknowledged()
    assert store.pending() == []


async def test_a_full_store_refuses_the_report_and_says_so(tmp_path: Path) -> None:
    broker = FakeBroker(auto_ack=False)
    tiny = DurableStore.in_dir(tmp_path, max_bytes=600)
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, tiny, stop_timeout=0.2) as part:
            with pytest.raises(BufferFull, match="emergencies are never evicted"):  # noqa: PT012
                for n in range(10):  # each ~230 bytes: the third cannot fit
                    await part.report_emergency(siren(f"event {n}"))
            status = part.get_status()
    assert status["reported"] == len(tiny.pending("emergency")) == 2
    assert "durable outbox is full" in str(status["last_error"])


async def test_a_stop_forgets_what_was_acknowledged_and_keeps_the_rest(
    store: DurableStore,
) -> None:
    broker = FakeBroker(auto_ack=False)
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, store, stop_timeout=0.3) as part:
            await part.report_emergency(siren("acked"))
            await broker.wait_until(lambda: any(t == TOPIC for t, *_ in broker.attempted))
            broker.ack()
            kept = await part.report_emergency(siren("not acked"))
            await broker.wait_until(lambda: sum(t == TOPIC for t, *_ in broker.attempted) == 2)
    assert [m.msg_id for m in store.pending("emergency")] == [kept.event_id]
    assert part.running is False


def test_a_device_id_must_be_a_valid_thing_name(store: DurableStore) -> None:
    connection = IoTConnection(THING, "127.0.0.1", tls=False)
    assert EmergencyReporter(connection, store=store).device_id == THING
    assert EmergencyReporter(connection, "other-1", store=store).device_id == "other-1"
    with pytest.raises(ValueError, match="thing"):
        EmergencyReporter(connection, "bad/name", store=store)


async def test_an_event_the_full_emergency_lane_refused_is_queued_once_there_is_room(
    store: DurableStore,
) -> None:
    """Offline for long: the lane is at its hard limit; a new event is stored and waits."""
    broker = FakeBroker()
    one = {**DEFAULT_LIMITS, Lane.EMERGENCY: LaneLimits(max_messages=1, max_bytes=1 << 20)}
    with anyio.fail_after(TIMEOUT):
        async with reporter(broker, store, lane_limits=one) as part:
            broker.connect_errors.extend(ConnectError("network down") for _ in range(10**6))
            broker.drop()
            first = await part.report_emergency(siren("first"))
            second = await part.report_emergency(siren("second"))  # the lane is full
            assert "full" in str(part.get_status()["last_error"])
            assert len(store.pending("emergency")) == 2  # both safe on disk
            with pytest.raises(PublishTimeout, match="could not be queued within"):
                await part.report_emergency(siren("third"), wait_for_ack=True, timeout=0.05)
            broker.connect_errors.clear()  # back online
            await part.wait_acknowledged()
            status = part.get_status()
    assert {e.event_id for e in sent_events(broker)} >= {first.event_id, second.event_id}
    assert len(sent_events(broker)) == 3
    assert status["acknowledged"] == 3
    assert store.pending() == []
