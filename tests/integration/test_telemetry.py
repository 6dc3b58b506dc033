"""TelemetryPublisher against the embedded broker over real TLS: batching, offline bounds, order."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from device import THING, device_connection
from faultproxy import FaultProxy
from publish_log import PublishLog

from ancsync import EmergencyReporter, InvalidPayload, TelemetryPublisher
from ancsync.codec import decode_model
from ancsync.durable.store import DurableStore
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import DevCerts
from ancsync.models import AncMetrics, EmergencyEvent, TelemetryBatch
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.topics import emergency_topic, status_topic, telemetry_topic

FAST_RECONNECT = BackoffPolicy(base=0.05, cap=0.2)
ANC_TOPIC = telemetry_topic(THING, "anc")


def anc(n: float) -> dict[str, float]:
    return {"latency_ms": n, "cancellation_db": 42.5, "snr_improvement_db": 38.2}


@asynccontextmanager
async def publishing(
    certs: DevCerts, server: EmbeddedBroker, **options: Any
) -> AsyncIterator[TelemetryPublisher]:
    """A device connected to ``server`` with a started TelemetryPublisher (the test stops it)."""
    async with device_connection(certs, server.port) as iot, anyio.create_task_group() as tg:
        telemetry = TelemetryPublisher(iot, **options)
        await tg.start(telemetry.start_publishing)
        yield telemetry


def batches(log: PublishLog, topic: str = ANC_TOPIC) -> list[TelemetryBatch]:
    return [decode_model(payload, TelemetryBatch) for payload in log.on(topic)]


async def test_a_batch_goes_out_when_batch_size_records_wait(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog]
) -> None:
    server, log = broker
    with anyio.fail_after(10):
        async with publishing(dev_certs, server, batch_size=3, batch_interval=3600) as telemetry:
            for n in range(7):
                telemetry.publish_anc_metrics(anc(n))

            await log.wait_for(lambda log: len(log.on(ANC_TOPIC)) == 2)
            first, second = batches(log)
            assert [r.latency_ms for r in first.records] == [0, 1, 2]
            assert [r.latency_ms for r in second.records] == [3, 4, 5]
            assert (first.device_id, first.kind, first.seq, second.seq) == (THING, "anc", 1, 2)
            assert first.msg_id != second.msg_id
            assert telemetry.get_status()["depth"] == 1  # record 6 waits for two more

            await telemetry.stop()
            # stop() flushed the last record (the broker acks before it hands it on)
            await log.wait_for(lambda log: len(log.on(ANC_TOPIC)) == 3)
            assert [r.latency_ms for r in batches(log)[2].records] == [6]
            status = telemetry.get_status()
            assert status["records"]["anc"]["delivered"] == 7
            assert status["batches_acknowledged"] == 3


async def test_a_batch_goes_out_when_the_oldest_record_has_waited_batch_interval(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog]
) -> None:
    server, log = broker
    system_topic = telemetry_topic(THING, "system")
    with anyio.fail_after(10):
        async with (
            device_connection(dev_certs, server.port) as iot,
            anyio.create_task_group() as tg,
        ):
            telemetry = TelemetryPublisher(iot, batch_size=100, batch_interval=0.3)
            await tg.start(telemetry.start_publishing)
            await iot.wait_connected()
            started = time.monotonic()
            telemetry.publish_system_metrics({"battery_level": 85, "cpu_usage": 45.2})
            telemetry.publish_system_metrics({"battery_level": 84, "cpu_usage": 44.0})

            await log.wait_for(lambda log: bool(log.on(system_topic)))
            waited = time.monotonic() - started
            (batch,) = batches(log, system_topic)
            assert [r.battery_level for r in batch.records] == [85, 84]
            assert waited >= 0.3  # not before the interval: nothing else could have sent it
            await telemetry.stop()


async def test_every_kind_goes_to_its_own_topic_as_its_own_model(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog]
) -> None:
    server, log = broker
    with anyio.fail_after(10):
        async with publishing(dev_certs, server, batch_size=1) as telemetry:
            telemetry.publish_anc_metrics(AncMetrics(timestamp="2025-11-16T14:30:00Z", **anc(35.2)))
            telemetry.publish_audio_metrics(
                {"noise_type": "office", "confidence": 0.94, "rms": 0.45}
            )
            telemetry.publish_system_metrics({"battery_level": 85, "cpu_usage": 45.2})
            telemetry.publish_error({"component": "dsp", "message": "buffer underrun"})

            await log.wait_for(lambda log: len(log.on("anc/telemetry/")) == 4)
            kinds = {
                batch.kind: batch
                for batch in map(
                    lambda p: decode_model(p, TelemetryBatch), log.on("anc/telemetry/")
                )
            }
            assert set(kinds) == {"anc", "audio", "system", "errors"}
            assert kinds["anc"].records[0].timestamp == "2025-11-16T14:30:00Z"
            assert [t for t, _ in log.messages if t.startswith("anc/telemetry/")] == [
                telemetry_topic(THING, kind) for kind in ("anc", "audio", "system", "errors")
            ]
            await telemetry.stop()


async def test_bad_records_are_refused_by_name_and_the_rest_still_go_out(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog]
) -> None:
    server, log = broker
    with anyio.fail_after(10):
        async with publishing(dev_certs, server, batch_size=2) as telemetry:
            telemetry.publish_anc_metrics(anc(1))
            with pytest.raises(InvalidPayload, match="latency_ms"):
                telemetry.publish_anc_metrics({**anc(2), "latency_ms": "fast"})
            with pytest.raises(InvalidPayload, match="battery_level"):
                telemetry.publish_system_metrics({"battery_level": 140, "cpu_usage": 1})
            with pytest.raises(InvalidPayload, match="mapping"):
                telemetry.publish_anc_metrics([1, 2, 3])  # type: ignore[arg-type]
            telemetry.publish_anc_metrics(anc(3))

            await log.wait_for(lambda log: bool(log.on(ANC_TOPIC)))
            assert [r.latency_ms for r in batches(log)[0].records] == [1, 3]
            assert telemetry.get_status()["records"]["anc"]["accepted"] == 2
            await telemetry.stop()


async def test_publish_calls_return_at_once_while_no_broker_is_reachable(
    dev_certs: DevCerts, tmp_path: Path
) -> None:
    # Nothing listens on this port: the connection keeps failing in the background.
    async with EmbeddedBroker(dev_certs) as probe:
        port = probe.port
    with anyio.fail_after(10):
        async with device_connection(dev_certs, port, reconnect=FAST_RECONNECT) as iot:
            telemetry = TelemetryPublisher(iot, batch_size=10, max_buffer_size=50)
            async with anyio.create_task_group() as tg:
                await tg.start(telemetry.start_publishing)
                started = time.perf_counter()
                for n in range(200):
                    telemetry.publish_anc_metrics(anc(n))
                per_call = (time.perf_counter() - started) / 200
                status = telemetry.get_status()
                assert (status["depth"], status["dropped"]) == (50, 150)
                assert per_call < 0.001  # generous: microseconds in practice (see benchmarks)
                await telemetry.stop(timeout=0.2)
            assert telemetry.get_status()["unsent"] == 50


async def test_offline_the_newest_records_are_kept_and_after_reconnect_emergencies_go_first(
    dev_certs: DevCerts, tmp_path: Path
) -> None:
    """Broker down: 1000 records (buffer 200) and 3 emergencies. Broker back: the 3 emergencies
    first, then the newest 200 records in order, and exactly 800 drops counted."""
    with anyio.fail_after(20):
        first = EmbeddedBroker(dev_certs)
        await first.start()
        port = first.port
        store = DurableStore.in_dir(tmp_path / "data")
        async with (
            device_connection(dev_certs, port, reconnect=FAST_RECONNECT) as iot,
            EmergencyReporter(iot, store=store) as reporter,
            anyio.create_task_group() as tg,
        ):
            telemetry = TelemetryPublisher(iot, batch_size=10, max_buffer_size=200)
            await tg.start(telemetry.start_publishing)
            await iot.wait_connected()
            with iot.events() as events:
                await first.stop()
                async for event in events:
                    if event.kind == "disconnected":
                        break

            for n in range(1000):
                telemetry.publish_anc_metrics(anc(n))
            reported = [
                await reporter.report_emergency(
                    {
                        "is_emergency": True,
                        "predicted_class": f"alarm-{i}",
                        "confidence": 0.9,
                        "action": "anc_bypassed",
                    }
                )
                for i in range(3)
            ]
            assert telemetry.get_status()["dropped"] == 800
            assert reporter.get_status()["pending"] == 3

            log = PublishLog()
            second = EmbeddedBroker(dev_certs, port=port)
            second.add_publish_listener(log)
            async with second:
                await log.wait_for(lambda log: len(log.on(ANC_TOPIC)) == 20)

                topics = [topic for topic, _ in log.messages if topic != status_topic(THING)]
                assert topics[:3] == [emergency_topic(THING)] * 3
                assert set(topics[3:]) == {ANC_TOPIC}
                sent = [decode_model(p, EmergencyEvent) for p in log.on(emergency_topic(THING))]
                assert [e.event_id for e in sent] == [e.event_id for e in reported]
                assert [e.seq for e in sent] == [1, 2, 3]

                received = batches(log)
                assert [b.seq for b in received] == list(range(1, 21))
                values = [r.latency_ms for batch in received for r in batch.records]
                assert values == [float(n) for n in range(800, 1000)]

                await telemetry.stop()
                status = telemetry.get_status()
                assert status["records"]["anc"] == {
                    "accepted": 1000,
                    "waiting": 0,
                    "delivered": 200,
                    "dropped": 800,
                    "failed": 0,
                    "unsent": 0,
                    "unconfirmed": 0,
                    "stored": 0,
                }
                await reporter.wait_acknowledged()
                assert store.pending() == []
        store.close()


async def test_durable_batches_survive_a_restart_and_keep_their_msg_id(
    dev_certs: DevCerts, tmp_path: Path
) -> None:
    """stop() while offline stores the batches; the next run sends them with the same ids."""
    async with EmbeddedBroker(dev_certs) as probe:
        port = probe.port
    data = tmp_path / "data"
    with anyio.fail_after(15):
        with DurableStore.in_dir(data) as store:
            async with device_connection(dev_certs, port, reconnect=FAST_RECONNECT) as iot:
                telemetry = TelemetryPublisher(iot, batch_size=5, store=store)
                async with anyio.create_task_group() as tg:
                    await tg.start(telemetry.start_publishing)
                    for n in range(12):
                        telemetry.publish_anc_metrics(anc(n))
                    await telemetry.stop(timeout=0.2)
            stored = store.pending("telemetry")
            assert [m.records for m in stored] == [5, 5, 2]
            assert (telemetry.get_status()["unsent"], telemetry.get_status()["stored"]) == (0, 12)

        log = PublishLog()
        server = EmbeddedBroker(dev_certs, port=port)
        server.add_publish_listener(log)
        async with server, device_connection(dev_certs, port) as iot:
            with DurableStore.in_dir(data) as store:
                telemetry = TelemetryPublisher(iot, batch_size=5, store=store)
                async with anyio.create_task_group() as tg:
                    await tg.start(telemetry.start_publishing)
                    await log.wait_for(lambda log: len(log.on(ANC_TOPIC)) == 3)
                    received = batches(log)
                    assert [b.msg_id for b in received] == [m.msg_id for m in stored]
                    values = [r.latency_ms for b in received for r in b.records]
                    assert values == [float(n) for n in range(12)]
                    # numbering continues where the first run stopped
                    telemetry.publish_anc_metrics(anc(12))
                    await telemetry.stop()
                    assert batches(log)[-1].seq == 4
                assert store.pending() == []


OUTCOMES = ("delivered", "dropped", "failed", "unsent", "unconfirmed", "stored", "waiting")


def assert_every_record_is_counted(status: dict[str, Any]) -> None:
    """accepted == the sum of the outcomes, per kind and in total (DESIGN 1.3)."""
    assert status["in_flight_records"] == 0  # stopped: nothing is in between
    for kind, counts in status["records"].items():
        assert counts["accepted"] == sum(counts[outcome] for outcome in OUTCOMES), kind


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
@pytest.mark.parametrize("first", ["telemetry", "connection"], ids=lambda f: f"{f}-stops-first")
async def test_batches_without_puback_at_stop_are_counted(
    dev_certs: DevCerts,
    broker: tuple[EmbeddedBroker, PublishLog],
    tmp_path: Path,
    durable: bool,
    first: str,
) -> None:
    """A half-open link: 4 batches go out, no PUBACK comes back, stop() gives up. Every record
    is still counted: ``unconfirmed`` (or ``failed`` when the connection failed the batch) in
    memory, ``stored`` (and still in the store) when durable."""
    server, _ = broker
    store = DurableStore.in_dir(tmp_path / "data") if durable else None
    with anyio.fail_after(10):
        async with FaultProxy(server.port) as proxy, anyio.create_task_group() as tg:
            async with device_connection(dev_certs, proxy.port) as iot:
                telemetry = TelemetryPublisher(iot, batch_size=5, store=store)
                await tg.start(telemetry.start_publishing)
                await iot.wait_connected()
                proxy.swallow()  # still "connected" for a keep-alive: the batches go out
                for n in range(20):
                    telemetry.publish_anc_metrics(anc(n))
                if first == "telemetry":
                    await telemetry.stop(timeout=0.3)
                else:
                    # The batches must be on the connection before it stops. No event tells
                    # that: wait until every task (the batcher too) is blocked, and look again.
                    while telemetry.get_status()["batches_sent"] < 4:
                        await anyio.wait_all_tasks_blocked()
                # Stop the connection quickly: no flushing into (or reconnecting past) the void.
                proxy.refuse = True
                await proxy.cut()
                await iot.stop(timeout=0.1)
            await telemetry.stop(timeout=0.3)

    status = telemetry.get_status()
    assert (status["batches_sent"], status["batches_acknowledged"]) == (4, 0)
    assert_every_record_is_counted(status)
    anc_counts = status["records"]["anc"]
    assert (anc_counts["accepted"], anc_counts["delivered"]) == (20, 0)
    if durable:
        assert store is not None
        assert anc_counts["stored"] == 20
        assert sum(m.records for m in store.pending("telemetry")) == 20
        store.close()
    elif first == "telemetry":
        assert anc_counts["unconfirmed"] == 20
    else:  # failed by the stopping connection: unconfirmed if it was sent, failed if requeued
        assert anc_counts["unconfirmed"] + anc_counts["failed"] == 20


async def test_seq_keeps_counting_across_a_restart_when_only_the_counter_is_stored(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog], tmp_path: Path
) -> None:
    # Not durable: batches live in memory, but their seq is saved, so the cloud never sees a
    # seq again after a restart (it would take the new batch for a duplicate).
    server, log = broker
    with anyio.fail_after(10):
        for run in range(2):
            store = DurableStore.in_dir(tmp_path)
            try:
                async with publishing(
                    dev_certs, server, batch_size=1, store=store, durable=False
                ) as telemetry:
                    telemetry.publish_anc_metrics(anc(run))
                    await log.wait_for(lambda log, n=run + 1: len(log.on(ANC_TOPIC)) == n)
                    await telemetry.stop()
            finally:
                store.close()
    assert [batch.seq for batch in batches(log)] == [1, 2]
