"""What the SDK costs an ANC control loop running on the same event loop.

1. One ``publish_anc_metrics`` call: mean and p99 in microseconds (validation, timestamp,
   encoding, buffering), and the memory each buffered record holds.
2. A 1 kHz asyncio tick loop for a few seconds: tick lateness (p50, p99, max) alone, then with the
   SDK connected over TLS to the emulator (in its own process) and the loop publishing one
   record per tick (1,000 records/s) plus one emergency per second. Goal: p99 lateness up by
   less than 1 ms.

    .venv/bin/python benchmarks/bench_control_loop.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import anyio
from emulator_process import THING, EmulatorProcess, running_emulator

from ancsync import DurableStore, EmergencyReporter, IoTConnection, TelemetryPublisher

METRICS = {"latency_ms": 35.2, "cancellation_db": 42.5, "snr_improvement_db": 38.2}
ALARM = {
    "is_emergency": True,
    "predicted_class": "fire_alarm",
    "confidence": 0.94,
    "action": "anc_bypassed",
}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def connection(emulator: EmulatorProcess) -> IoTConnection:
    return IoTConnection(THING, "127.0.0.1", port=emulator.port, **emulator.device_files())


def call_cost(emulator: EmulatorProcess, calls: int = 50_000) -> tuple[float, float]:
    """Mean and p99 microseconds of one publish_anc_metrics (not started: pure call cost)."""
    telemetry = TelemetryPublisher(connection(emulator), batch_size=10, max_buffer_size=1000)
    timings = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        telemetry.publish_anc_metrics(METRICS)
        timings.append((time.perf_counter_ns() - started) / 1000)
    return statistics.fmean(timings), percentile(timings, 0.99)


def memory_per_record(emulator: EmulatorProcess, records: int = 20_000) -> float:
    """Bytes of memory held per buffered record (traced allocations)."""
    telemetry = TelemetryPublisher(connection(emulator), max_buffer_size=records)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(records):
        telemetry.publish_anc_metrics(METRICS)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert telemetry.get_status()["depth"] == records
    return held / records


async def tick_loop(seconds: float, on_tick: Callable[[int], None]) -> list[float]:
    """Run a 1 kHz loop; return how late each tick woke, in milliseconds."""
    period = 0.001
    started = time.perf_counter()
    lateness = []
    for tick in range(1, int(seconds / period) + 1):
        deadline = started + tick * period
        await anyio.sleep(max(0.0, deadline - time.perf_counter()))
        lateness.append((time.perf_counter() - deadline) * 1000)
        on_tick(tick)
    return lateness


async def with_sdk(emulator: EmulatorProcess, workdir: Path, seconds: float) -> list[float]:
    store = DurableStore.in_dir(workdir / "device")
    async with (
        connection(emulator) as iot,
        EmergencyReporter(iot, store=store) as reporter,
        anyio.create_task_group() as tg,
    ):
        await iot.wait_connected(timeout=10)
        telemetry = TelemetryPublisher(iot, batch_size=10, batch_interval=1.0, store=store)
        await tg.start(telemetry.start_publishing)

        def on_tick(tick: int) -> None:
            telemetry.publish_anc_metrics(METRICS)
            if tick % 1000 == 0:  # an emergency a second, as its own task: the loop never waits
                tg.start_soon(reporter.report_emergency, ALARM)

        lateness = await tick_loop(seconds, on_tick)
        await telemetry.stop()
        tg.cancel_scope.cancel()
    store.close()
    return lateness


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with running_emulator(workdir) as emulator:
            mean_us, p99_us = call_cost(emulator)
            per_record = memory_per_record(emulator)
            alone = await tick_loop(seconds, lambda tick: None)
            sdk = await with_sdk(emulator, workdir, seconds)

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs, load average {load} (other processes skew every number)")
    print("\nOne publish_anc_metrics call (validate, timestamp, encode, buffer)\n")
    print("| mean µs | p99 µs | memory per buffered record |")
    print("|---:|---:|---:|")
    print(f"| {mean_us:.1f} | {p99_us:.1f} | {per_record:.0f} bytes |")
    print(f"\n1 kHz tick loop, {seconds:.0f} s each: lateness of each tick\n")
    print("| run | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, values in (("loop alone", alone), ("loop + SDK, 1,000 records/s", sdk)):
        print(
            f"| {name} | {statistics.median(values):.3f} | {percentile(values, 0.99):.3f} "
            f"| {max(values):.3f} |"
        )
    increase = percentile(sdk, 0.99) - percentile(alone, 0.99)
    verdict = "met" if increase < 1.0 else "NOT met"
    print(f"\np99 lateness increase: {increase:.3f} ms (goal < 1 ms: {verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    anyio.run(main, parser.parse_args().seconds)
