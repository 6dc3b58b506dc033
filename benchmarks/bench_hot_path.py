"""The hot path: one ``publish_metrics`` call (validate, stamp, encode, buffer), and its profile.

A device calls ``publish_metrics`` from its control loop, so the call must stay in the tens of
microseconds. The orchestrator is not started: this is the pure cost of the call. Two cases:
the buffer has room (a connected device), and the buffer is full (offline: each call drops the
oldest record). The baseline, in the same run, is the floor of any validating client: a plain
``orjson.dumps`` of the same dict with the timestamp added.

    .venv/bin/python benchmarks/bench_hot_path.py            # ~10 s
    .venv/bin/python benchmarks/bench_hot_path.py --profile  # plus the top of cProfile

Prints a Markdown table (see docs/performance.md). Goal: p99 < 20 µs.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from ancsync import DataSyncOrchestrator
from ancsync.models import utc_now

METRICS = {"latency_ms": 35.2, "cancellation_db": 42.5, "snr_improvement_db": 38.2}
SYSTEM = {"battery_level": 87.0, "cpu_usage": 21.5}


def timings(call: Callable[[], object], calls: int) -> list[float]:
    """Microseconds of each of ``calls`` calls (the garbage collector runs as usual)."""
    spent = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        call()
        spent.append((time.perf_counter_ns() - started) / 1000)
    return spent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def orchestrator(data_dir: Path, buffer: int) -> DataSyncOrchestrator:
    return DataSyncOrchestrator(
        thing_name="anc-device-001",
        endpoint="127.0.0.1",
        port=1883,
        tls=False,
        data_dir=data_dir,
        batch_size=10,
        max_buffer_size=buffer,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    rows: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        cases: dict[str, Callable[[], object]] = {
            "orjson.dumps (baseline)": lambda: orjson.dumps({**METRICS, "timestamp": utc_now()}),
        }
        # Room for every record of every rep and of the profile: nothing is dropped.
        room = orchestrator(Path(workdir) / "room", buffer=args.calls * (args.reps + 1))
        cases["publish_metrics(anc), buffer has room"] = lambda: room.publish_metrics(METRICS)
        full = orchestrator(Path(workdir) / "full", buffer=1000)
        cases["publish_metrics(anc), buffer full"] = lambda: full.publish_metrics(METRICS)
        both = orchestrator(Path(workdir) / "both", buffer=2 * args.calls * args.reps)
        cases["publish_metrics(anc + system)"] = lambda: both.publish_metrics(METRICS, None, SYSTEM)
        for _ in range(args.reps):  # interleaved: each case sees the same machine load
            for name, call in cases.items():
                rows.setdefault(name, []).append(timings(call, args.calls))
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(lambda: [room.publish_metrics(METRICS) for _ in range(args.calls)])
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(10)
    gc.collect()
    base = statistics.median(statistics.fmean(run) for run in rows["orjson.dumps (baseline)"])
    print(f"| call ({args.calls} calls x {args.reps} reps) | mean µs | p50 µs | p99 µs | "
          "p99.9 µs | mean vs baseline |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        merged = [value for run in runs for value in run]
        mean = statistics.fmean(merged)
        print(
            f"| {name} | {mean:.1f} | {percentile(merged, 0.5):.1f} | "
            f"{percentile(merged, 0.99):.1f} | {percentile(merged, 0.999):.1f} | "
            f"{mean / base:.1f}x |"
        )
    if args.profile:
        print("\n```\n" + out.getvalue().strip() + "\n```")


if __name__ == "__main__":
    main()
