"""Emergency delivery latency (report to PUBACK) while telemetry floods at 1,000 records/s.

Against the local emulator in its own process, over TLS, with the default AWS rate limit
(100 publishes/s): the telemetry flood (batches of 10) uses all of it, so anything that queues
behind telemetry waits. Three ways to send the same emergency payload, in one run:

* ``EmergencyReporter``: durable store (fsynced SQLite commit) + emergency lane;
* ``emergency lane``: ``iot.publish(..., lane=Lane.EMERGENCY)``, no store;
* ``single FIFO``: the baseline, the same payload queued behind telemetry on its lane.

    .venv/bin/python benchmarks/bench_emergency.py [--events 40] [--rate 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from emulator_process import THING, running_emulator

from ancsync import (
    DurableStore,
    EmergencyInput,
    EmergencyReporter,
    IoTConnection,
    Lane,
    TelemetryPublisher,
)
from ancsync.codec import encode
from ancsync.models import new_id
from ancsync.topics import emergency_topic

ALARM = EmergencyInput(
    is_emergency=True, predicted_class="fire_alarm", confidence=0.94, action="anc_bypassed"
)


async def flood(telemetry: TelemetryPublisher, rate: float) -> None:
    """Publish ``rate`` records per second, evenly, until cancelled."""
    started, sent = time.perf_counter(), 0
    while True:
        due = int((time.perf_counter() - started) * rate)
        for n in range(sent, due):
            telemetry.publish_anc_metrics(
                {"latency_ms": n % 50, "cancellation_db": 42.5, "snr_improvement_db": 38.2}
            )
        sent = due
        await anyio.sleep(0.002)


async def measure(send: Callable[[], Awaitable[None]], events: int) -> list[float]:
    """Milliseconds from the call to the PUBACK, one event every 50 ms."""
    latencies = []
    for _ in range(events):
        started = time.perf_counter()
        await send()
        latencies.append((time.perf_counter() - started) * 1000)
        await anyio.sleep(0.05)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def main(events: int, rate: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with running_emulator(workdir) as emulator:
            iot = IoTConnection(THING, "127.0.0.1", port=emulator.port, **emulator.device_files())
            store = DurableStore.in_dir(workdir / "device")
            async with (
                iot,
                EmergencyReporter(iot, store=store) as reporter,
                anyio.create_task_group() as tg,
            ):
                await iot.wait_connected(timeout=10)
                telemetry = TelemetryPublisher(iot, batch_size=10, batch_interval=1.0)
                await tg.start(telemetry.start_publishing)
                tg.start_soon(flood, telemetry, rate)
                await anyio.sleep(2)  # let the telemetry lane fill up

                topic = emergency_topic(THING)

                async def durable() -> None:
                    await reporter.report_emergency(ALARM, wait_for_ack=True)

                def on_lane(lane: Lane) -> Callable[[], Awaitable[None]]:
                    async def send() -> None:
                        event = ALARM.to_event(device_id=THING, event_id=new_id(), seq=0)
                        handle = await iot.publish(topic, encode(event), lane=lane)
                        await handle.delivered()

                    return send

                modes = {
                    "EmergencyReporter (store + emergency lane)": durable,
                    "emergency lane, no store": on_lane(Lane.EMERGENCY),
                    "single FIFO (behind telemetry), baseline": on_lane(Lane.TELEMETRY),
                }
                results = {name: await measure(send, events) for name, send in modes.items()}
                status = telemetry.get_status()
                tg.cancel_scope.cancel()

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs, load average {load} (other processes skew every number)")
    print(f"\nEmergency report -> PUBACK while telemetry floods at {rate:.0f} records/s")
    print(f"({events} events per row, TLS to the emulator in its own process, 100 msg/s limit)\n")
    print("| path | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, values in results.items():
        print(
            f"| {name} | {statistics.median(values):.1f} | {percentile(values, 0.99):.1f} "
            f"| {max(values):.1f} |"
        )
    print(
        f"\ntelemetry during the run: {status['records']['anc']['delivered']} records delivered, "
        f"{status['dropped']} dropped at the buffer bound"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--rate", type=float, default=1000)
    arguments = parser.parse_args()
    anyio.run(main, arguments.events, arguments.rate)
