"""QoS 1 publish throughput and publish-to-PUBACK latency: IoTConnection against raw aiomqtt.

Both clients publish the same messages to the same broker, which runs in its own process
(mosquitto by default, or the embedded amqtt broker in a child process), with the same in-flight
window: at most ``--window`` messages awaiting their PUBACK at any time. Latency is measured from
the publish call to the PUBACK (``await client.publish`` for aiomqtt, ``await handle.delivered()``
for ancsync, so it includes the outbox and the session task). ancsync's rate limit is raised so
the broker, not the AWS quota, sets the pace.

    .venv/bin/python benchmarks/bench_publish.py                  # mosquitto, ~1 minute
    .venv/bin/python benchmarks/bench_publish.py --broker embedded --messages 2000

Prints a Markdown table (see docs/performance.md). The goal: ancsync >= 0.85x raw aiomqtt msgs/s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import anyio

from ancsync import IoTConnection

HOST = "127.0.0.1"
TOPIC = "bench/anc-device-001/telemetry"


@dataclass(frozen=True)
class Result:
    client: str
    messages: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.messages * 1e6

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise SystemExit(f"the broker did not listen on {HOST}:{port} within {timeout} s")


@contextmanager
def mosquitto() -> Iterator[int]:
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        raise SystemExit(
            "mosquitto is not installed (apt-get install mosquitto); or --broker embedded"
        )
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "mosquitto.conf"
        config.write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n")
        process = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
        try:
            _wait_listening(port)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=5)


def _run_embedded(port: int) -> None:
    from ancsync.emulator.broker import EmbeddedBroker

    async def serve() -> None:
        async with EmbeddedBroker(None, plain_port=port):
            await anyio.sleep_forever()

    anyio.run(serve)


@contextmanager
def embedded() -> Iterator[int]:
    port = _free_port()
    process = multiprocessing.get_context("spawn").Process(target=_run_embedded, args=(port,))
    process.start()
    try:
        _wait_listening(port)
        yield port
    finally:
        process.terminate()
        process.join(timeout=5)


async def _drive(
    name: str, messages: int, window: int, publish_one: Callable[[int], Awaitable[None]]
) -> Result:
    """Publish ``messages`` with at most ``window`` awaiting PUBACK; time each one."""
    latencies: list[float] = []
    slots = anyio.Semaphore(window)

    async def one(n: int) -> None:
        started = time.perf_counter()
        await publish_one(n)
        latencies.append(time.perf_counter() - started)
        slots.release()

    began, cpu_began = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for n in range(messages):
            await slots.acquire()
            tg.start_soon(one, n)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    return Result(name, messages, elapsed, latencies, cpu)


async def bench_aiomqtt(port: int, messages: int, window: int, payload: bytes) -> Result:
    client = aiomqtt.Client(
        HOST, port, identifier="bench-raw", max_inflight_messages=window, timeout=30
    )
    client.pending_calls_threshold = window + 10  # the same quiet logging as ancsync's transport
    async with client:

        async def publish_one(n: int) -> None:
            await client.publish(TOPIC, payload, qos=1)

        await _drive("raw aiomqtt", min(500, messages), window, publish_one)  # warm-up
        return await _drive("raw aiomqtt", messages, window, publish_one)


async def bench_ancsync(port: int, messages: int, window: int, payload: bytes) -> Result:
    iot = IoTConnection(
        "bench-ancsync",
        HOST,
        port=port,
        tls=False,
        in_flight=window,
        rate_limit=(1e9, 1e12),
    )
    async with iot:
        await iot.wait_connected(timeout=10)

        async def publish_one(n: int) -> None:
            handle = await iot.publish(TOPIC, payload, qos=1)
            await handle.delivered()

        await _drive("ancsync IoTConnection", min(500, messages), window, publish_one)
        return await _drive("ancsync IoTConnection", messages, window, publish_one)


def table(results: list[Result], baseline: Result) -> str:
    lines = [
        "| client | messages | msgs/s | p50 ms | p99 ms | client CPU µs/msg | vs raw msgs/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.client} | {r.messages} | {r.rate:,.0f} | {r.percentile(50):.2f} | "
            f"{r.percentile(99):.2f} | {r.cpu_us_per_message:.0f} | "
            f"{r.rate / baseline.rate:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["mosquitto", "embedded"], default="mosquitto")
    parser.add_argument("--messages", type=int, default=5_000, help="per client and round")
    parser.add_argument("--window", type=int, default=20, help="in-flight QoS 1 messages")
    parser.add_argument("--payload-bytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=9, help="rounds, each client once per round")
    args = parser.parse_args()
    payload = b"x" * args.payload_bytes

    broker = mosquitto if args.broker == "mosquitto" else embedded
    raws: list[Result] = []
    ours_all: list[Result] = []
    with broker() as port:
        # Alternating rounds, and in alternating order, so that load from elsewhere on the
        # machine (which varies over seconds) hits both clients alike; each round is a pair.
        for n in range(args.rounds):
            pair = [bench_aiomqtt, bench_ancsync] if n % 2 == 0 else [bench_ancsync, bench_aiomqtt]
            for bench in pair:
                result = anyio.run(bench, port, args.messages, args.window, payload)
                (raws if bench is bench_aiomqtt else ours_all).append(result)
    ratios = sorted(o.rate / r.rate for o, r in zip(ours_all, raws, strict=True))
    raw = _median_round(raws)
    ours = _median_round(ours_all)
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[0]
    print(
        f"broker: {args.broker} (own process), QoS 1, window {args.window}, "
        f"payload {args.payload_bytes} B, plain TCP on {HOST}; {args.rounds} rounds of "
        f"{args.messages} messages per client, median round shown; load average {load}\n"
    )
    print(table([raw, ours], raw))
    print(
        "\nancsync / raw aiomqtt msgs/s, per round: "
        + ", ".join(f"{ratio:.2f}" for ratio in ratios)
        + f"; median {statistics.median(ratios):.2f} (goal >= 0.85)"
    )


def _median_round(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


if __name__ == "__main__":
    main()
