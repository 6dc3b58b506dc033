"""QoS 1 publish throughput, CPU and publish-to-PUBACK latency: ancsync's transports side by side.

Six clients publish the same messages to the same broker, which runs in its own process
(mosquitto by default, or the embedded amqtt broker in a child process), each with at most
``--window`` messages awaiting their PUBACK:

- raw paho: a paho-mqtt client with its own network thread (``loop_start``), the ceiling for
  anything built on paho;
- raw aiomqtt: ``await client.publish`` with one task per message in flight;
- PahoTransport / AiomqttTransport alone: ancsync's backend (and the aiomqtt one it replaced,
  kept in benchmarks/aiomqtt_transport.py), driven through the transport seam's ``publish`` and
  its ``on_done`` callback, no task per message;
- IoTConnection on either: the whole SDK (outbox, rate limiter raised out of the way, session
  task), ``await handle.delivered()`` in one task per message, as a user would.

Latency runs from the publish call to the PUBACK. CPU is the process's (every thread) per
message. Rounds are interleaved, each client once per round in a rotating order, so load from
elsewhere on the machine hits all alike; the median round per client is shown.

    .venv/bin/python benchmarks/bench_publish.py                  # mosquitto, ~2 minutes
    .venv/bin/python benchmarks/bench_publish.py --broker embedded --messages 2000

Prints a Markdown table (see docs/transport.md and docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import anyio
from aiomqtt_transport import AiomqttTransport
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion

from ancsync import IoTConnection
from ancsync.mqtt.paho_transport import PahoTransport
from ancsync.mqtt.transport import ConnectOptions, Transport

HOST = "127.0.0.1"
Bench = Callable[[int, int, int, bytes], Awaitable["Result"]]
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
        process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
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


def _iot_connection(make: Callable[[], Transport], window: int, port: int) -> IoTConnection:
    return IoTConnection(
        "bench-ancsync",
        HOST,
        port=port,
        tls=False,
        in_flight=window,
        rate_limit=(1e9, 1e12),
        transport_factory=make,
    )


def bench_iot_connection(name: str, make: Callable[[int], Transport]) -> Bench:
    async def bench(port: int, messages: int, window: int, payload: bytes) -> Result:
        async with _iot_connection(lambda: make(window), window, port) as iot:
            await iot.wait_connected(timeout=10)

            async def publish_one(n: int) -> None:
                handle = await iot.publish(TOPIC, payload, qos=1)
                await handle.delivered()

            await _drive(name, min(500, messages), window, publish_one)  # warm-up
            return await _drive(name, messages, window, publish_one)

    bench.__name__ = name
    return bench


async def _drive_callbacks(
    name: str, messages: int, window: int, transport: Transport, payload: bytes
) -> Result:
    """Publish through the seam with at most ``window`` awaiting ``on_done``; time each one."""
    latencies: list[float] = []
    slots = asyncio.Semaphore(window)
    done = asyncio.Event()

    def on_done_for(started: float) -> Callable[[], None]:
        def on_done() -> None:
            latencies.append(time.perf_counter() - started)
            slots.release()
            if len(latencies) == messages:
                done.set()

        return on_done

    began, cpu_began = time.perf_counter(), time.process_time()
    for _ in range(messages):
        await slots.acquire()
        transport.publish(TOPIC, payload, 1, False, on_done_for(time.perf_counter()))
    await done.wait()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    return Result(name, messages, elapsed, latencies, cpu)


def bench_transport(name: str, make: Callable[[int], Transport]) -> Bench:
    async def bench(port: int, messages: int, window: int, payload: bytes) -> Result:
        transport = make(window)
        await transport.connect(ConnectOptions(HOST, port, "bench-transport", 60, None))
        try:
            await _drive_callbacks(name, min(500, messages), window, transport, payload)
            return await _drive_callbacks(name, messages, window, transport, payload)
        finally:
            await transport.close()

    bench.__name__ = name
    return bench


async def bench_paho(port: int, messages: int, window: int, payload: bytes) -> Result:
    """paho alone, its network thread doing the I/O; the caller's thread publishes."""
    return await anyio.to_thread.run_sync(_paho_in_thread, port, messages, window, payload)


def _paho_in_thread(port: int, messages: int, window: int, payload: bytes) -> Result:
    client = Client(CallbackAPIVersion.VERSION2, client_id="bench-paho")
    client.max_inflight_messages_set(window)
    slots = threading.Semaphore(window)
    latencies: list[float] = []
    all_acked = threading.Event()
    lock = threading.Lock()  # the PUBACK may come back before publish() returns the mid
    noted: dict[int, float] = {}  # mid -> its publish or PUBACK time, whichever came first
    expected = 0

    def on_publish(client: Client, userdata: Any, mid: int, *_: Any) -> None:
        _pair(mid, time.perf_counter())
        slots.release()

    def _pair(mid: int, moment: float) -> None:
        """Note a message's publish or PUBACK time; the second one noted gives its latency."""
        with lock:
            first = noted.pop(mid, None)
            if first is None:
                noted[mid] = moment
                return
        latencies.append(abs(moment - first))
        if len(latencies) == expected:
            all_acked.set()

    client.on_publish = on_publish
    client.connect(HOST, port, 60)
    client.loop_start()
    try:

        def run(count: int) -> Result:
            nonlocal expected
            latencies.clear()
            all_acked.clear()
            expected = count
            began, cpu_began = time.perf_counter(), time.process_time()
            for _ in range(count):
                slots.acquire()
                sent = time.perf_counter()
                _pair(client.publish(TOPIC, payload, 1).mid, sent)
            all_acked.wait(60)
            elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
            return Result("raw paho", count, elapsed, list(latencies), cpu)

        run(min(500, messages))  # warm-up
        return run(messages)
    finally:
        client.disconnect()
        client.loop_stop()


def table(rounds: list[list[Result]]) -> str:
    """One row per client: its median round, and the spread of its rounds."""
    medians = [_median_round(results) for results in rounds]
    baseline = medians[0]
    lines = [
        "| client | msgs/s (median) | msgs/s (rounds) | p50 ms | p99 ms | CPU µs/msg "
        "| CPU µs/msg (rounds) | vs raw paho msgs/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, results in zip(medians, rounds, strict=True):
        rates = [x.rate for x in results]
        cpus = [x.cpu_us_per_message for x in results]
        lines.append(
            f"| {r.client} | {r.rate:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | "
            f"{r.percentile(50):.2f} | {r.percentile(99):.2f} | {r.cpu_us_per_message:.0f} | "
            f"{min(cpus):.0f}-{max(cpus):.0f} | {r.rate / baseline.rate:.2f}x |"
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
    benches = [
        bench_paho,
        bench_aiomqtt,
        bench_transport("PahoTransport", lambda w: PahoTransport(max_inflight=w)),
        bench_transport("AiomqttTransport (old)", lambda w: AiomqttTransport(max_inflight=w)),
        bench_iot_connection(
            "IoTConnection on PahoTransport", lambda w: PahoTransport(max_inflight=w)
        ),
        bench_iot_connection(
            "IoTConnection on AiomqttTransport (old)", lambda w: AiomqttTransport(max_inflight=w)
        ),
    ]
    results: dict[Bench, list[Result]] = {bench: [] for bench in benches}
    with broker() as port:
        for n in range(args.rounds):
            # Rotate the order each round so no client always runs first (or last).
            for bench in benches[n % len(benches) :] + benches[: n % len(benches)]:
                result = anyio.run(bench, port, args.messages, args.window, payload)
                results[bench].append(result)
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[0]
    print(
        f"broker: {args.broker} (own process), QoS 1, window {args.window}, "
        f"payload {args.payload_bytes} B, plain TCP on {HOST}; {args.rounds} rounds of "
        f"{args.messages} messages per client, median round shown; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), load average {load}\n"
    )
    print(table(list(results.values())))


def _median_round(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


if __name__ == "__main__":
    main()
