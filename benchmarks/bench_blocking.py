"""What a ``publish_metrics`` call costs through ancsync.blocking, next to the async call.

The blocking call hands the call to the SDK's event loop thread and waits for it to return: the
price of calling from a plain thread. Both orchestrators run offline (nothing listens on the
port; publish_metrics never waits for the network), with a buffer big enough for every record.
Rounds alternate between the two, and the table shows the median round's p50 and p99.

    .venv/bin/python benchmarks/bench_blocking.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from ancsync import DataSyncOrchestrator
from ancsync.blocking import DataSyncOrchestrator as BlockingOrchestrator

METRICS = {"latency_ms": 35.2, "cancellation_db": 42.5, "snr_improvement_db": 38.2}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def options(data_dir: Path, calls: int) -> dict[str, Any]:
    return {
        "thing_name": "anc-device-001",
        "endpoint": "127.0.0.1",
        "port": closed_port(),
        "tls": False,
        "data_dir": data_dir,
        "max_buffer_size": calls + 1,
        "batch_interval": 3600,
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def blocking_round(data_dir: Path, calls: int) -> list[float]:
    costs = []
    with BlockingOrchestrator(**options(data_dir, calls)) as device:
        for _ in range(calls):
            started = time.perf_counter()
            device.publish_metrics(anc_metrics=METRICS)
            costs.append((time.perf_counter() - started) * 1e6)
    return costs


async def async_round(data_dir: Path, calls: int) -> list[float]:
    costs = []
    async with DataSyncOrchestrator(**options(data_dir, calls)) as device:
        for _ in range(calls):
            started = time.perf_counter()
            device.publish_metrics(anc_metrics=METRICS)
            costs.append((time.perf_counter() - started) * 1e6)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"async": [], "blocking": []}
    with tempfile.TemporaryDirectory() as workdir:
        for round_number in range(args.rounds):
            for name in ("async", "blocking") if round_number % 2 else ("blocking", "async"):
                data_dir = Path(workdir) / f"{name}-{round_number}"
                if name == "async":
                    costs = anyio.run(async_round, data_dir, args.calls)
                else:
                    costs = blocking_round(data_dir, args.calls)
                results[name].append((percentile(costs, 0.5), percentile(costs, 0.99)))
    base = statistics.median(p50 for p50, _ in results["async"])
    print(f"publish_metrics, {args.calls} calls x {args.rounds} interleaved rounds (µs per call)")
    print(f"{'API':<10} {'p50':>8} {'p99':>8} {'p50 vs async':>14}")
    for name, rounds in results.items():
        p50 = statistics.median(p50 for p50, _ in rounds)
        p99 = statistics.median(p99 for _, p99 in rounds)
        print(f"{name:<10} {p50:>8.1f} {p99:>8.1f} {p50 / base:>13.1f}x")


if __name__ == "__main__":
    main()
