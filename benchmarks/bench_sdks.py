"""ancsync beside AWS's own SDK (awsiotsdk on awscrt), raw aiomqtt and paho, on one mosquitto.

Each client publishes the same ANC metrics records at QoS 1 to the same mosquitto (plain TCP on
127.0.0.1), with at most ``--window`` messages awaiting their PUBACK, in a fresh process of its
own (so CPU time and peak memory are the client's alone). Rounds are interleaved: each round runs
every client once, in turn, so they all see the same machine load.

ancsync's transports also appear alone, driven through the transport seam (``publish`` with an
``on_done`` callback, no SDK above it), which separates the transport's cost from the SDK's.
The SDK appears twice per transport (``paho``, the default, and ``crt``, awscrt under the same
SDK): ``IoTConnection.publish`` (one record per message, like the others) and ``publish_metrics``
(its telemetry path: records validated and batched, ``--batch`` records per message). Records and
messages are both counted, so batching is shown for what it is. The ratio columns compare with
raw awscrt (awsiotsdk) of the same rounds: messages/s, CPU per message, and records delivered
per CPU second.

- msgs/s and records/s: delivered (PUBACKed) over the wall time of the run;
- CPU s / 10k records: the process's user + system CPU per 10,000 records delivered;
- peak RSS MB: the process's maximum resident memory (interpreter and libraries included);
- call µs p50 / p99: what the caller's thread spends in the publish call itself (without
  waiting for the PUBACK); for aiomqtt, whose ``await publish()`` returns at the PUBACK, the time
  until the message is handed to paho.

    .venv/bin/python benchmarks/bench_sdks.py                 # ~1 minute
    .venv/bin/python benchmarks/bench_sdks.py --records 20000 --rounds 5
    .venv/bin/python benchmarks/bench_sdks.py --only crt      # raw awscrt and ancsync on crt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bench_publish import HOST, mosquitto

TOPIC = "anc/telemetry/anc-device-001/anc"
RECORD = {
    "timestamp": "2026-01-01T00:00:00.000Z",
    "latency_ms": 35.2,
    "cancellation_db": 42.5,
    "snr_improvement_db": 38.2,
}
PAYLOAD = json.dumps(RECORD).encode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else 0


def usage() -> tuple[float, float]:
    """(CPU seconds so far, peak RSS in MB) of this process."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime, own.ru_maxrss / 1024


def result(records: int, messages: int, seconds: float, cpu: float, calls: list[float]) -> dict:
    return {
        "records": records,
        "messages": messages,
        "seconds": seconds,
        "cpu": cpu,
        "rss": usage()[1],
        "call_p50": percentile(calls, 0.5),
        "call_p99": percentile(calls, 0.99),
    }


def windowed(records: int, window: int, send: Callable[[], Any], wait: Callable[[Any], None]):
    """Publish ``records`` one per message, ``window`` in flight; time each ``send()`` call."""
    calls: list[float] = []
    in_flight: deque[Any] = deque()
    began, cpu_began = time.perf_counter(), usage()[0]
    for _ in range(records):
        if len(in_flight) >= window:
            wait(in_flight.popleft())
        started = time.perf_counter_ns()
        in_flight.append(send())
        calls.append((time.perf_counter_ns() - started) / 1000)
    while in_flight:
        wait(in_flight.popleft())
    return result(records, records, time.perf_counter() - began, usage()[0] - cpu_began, calls)


def run_paho(port: int, records: int, window: int, batch: int) -> dict:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho")
    client.max_inflight_messages_set(window)
    client.connect(HOST, port)
    client.loop_start()
    try:
        return windowed(
            records,
            window,
            lambda: client.publish(TOPIC, PAYLOAD, qos=1),
            lambda info: info.wait_for_publish(30),
        )
    finally:
        client.disconnect()
        client.loop_stop()


def run_awscrt(port: int, records: int, window: int, batch: int) -> dict:
    from awscrt import io, mqtt

    bootstrap = io.ClientBootstrap(
        io.EventLoopGroup(1), io.DefaultHostResolver(io.EventLoopGroup(1))
    )
    connection = mqtt.Connection(
        client=mqtt.Client(bootstrap), host_name=HOST, port=port, client_id="bench-awscrt"
    )
    connection.connect().result(10)
    try:
        return windowed(
            records,
            window,
            lambda: connection.publish(TOPIC, PAYLOAD, mqtt.QoS.AT_LEAST_ONCE)[0],
            lambda future: future.result(30),
        )
    finally:
        connection.disconnect().result(10)


def run_aiomqtt(port: int, records: int, window: int, batch: int) -> dict:
    import aiomqtt

    async def main() -> dict:
        calls: list[float] = []
        slots = asyncio.Semaphore(window)
        async with aiomqtt.Client(
            HOST, port, identifier="bench-aiomqtt", max_inflight_messages=window
        ) as client:
            client.pending_calls_threshold = window + 10

            async def one() -> None:
                try:
                    await client.publish(TOPIC, PAYLOAD, qos=1)
                finally:
                    slots.release()

            began, cpu_began = time.perf_counter(), usage()[0]
            async with asyncio.TaskGroup() as tasks:
                for _ in range(records):
                    await slots.acquire()
                    started = time.perf_counter_ns()
                    tasks.create_task(one())
                    await asyncio.sleep(0)  # ok: lets publish() hand the message to paho
                    calls.append((time.perf_counter_ns() - started) / 1000)
            return result(
                records, records, time.perf_counter() - began, usage()[0] - cpu_began, calls
            )

    return asyncio.run(main())


def run_seam(port: int, records: int, window: int, batch: int, transport: str) -> dict:
    """ancsync's transport alone, through the seam (``publish`` + ``on_done``), no SDK above."""
    from ancsync.mqtt.transport import ConnectOptions
    from ancsync.mqtt.transports import transport_factory_for

    async def main() -> dict:
        seam = transport_factory_for(transport, in_flight=window)()  # type: ignore[arg-type]
        await seam.connect(ConnectOptions(HOST, port, f"bench-seam-{transport}", 60, None))
        calls: list[float] = []
        slots = asyncio.Semaphore(window)
        finished = asyncio.Event()
        acked = 0

        def on_done() -> None:
            nonlocal acked
            acked += 1
            slots.release()
            if acked == records:
                finished.set()

        try:
            began, cpu_began = time.perf_counter(), usage()[0]
            for _ in range(records):
                await slots.acquire()
                started = time.perf_counter_ns()
                seam.publish(TOPIC, PAYLOAD, 1, False, on_done)
                calls.append((time.perf_counter_ns() - started) / 1000)
            await finished.wait()
            seconds, cpu = time.perf_counter() - began, usage()[0] - cpu_began
        finally:
            await seam.close()
        return result(records, records, seconds, cpu, calls)

    return asyncio.run(main())


def run_seam_paho(port: int, records: int, window: int, batch: int) -> dict:
    return run_seam(port, records, window, batch, "paho")


def run_seam_crt(port: int, records: int, window: int, batch: int) -> dict:
    return run_seam(port, records, window, batch, "crt")


def _ancsync_connection(port: int, window: int, transport: str) -> Any:
    from ancsync import IoTConnection, Settings

    settings = Settings.load(
        thing_name="anc-device-001", endpoint=HOST, port=port, tls=False, transport=transport
    )
    return IoTConnection(settings=settings, in_flight=window, rate_limit=(1e9, 1e12))


def run_ancsync_publish(
    port: int, records: int, window: int, batch: int, transport: str = "paho"
) -> dict:
    import anyio

    async def main() -> dict:
        calls: list[float] = []
        async with _ancsync_connection(port, window, transport) as iot:
            await iot.wait_connected(timeout=10)
            handles: deque[Any] = deque()
            began, cpu_began = time.perf_counter(), usage()[0]
            for _ in range(records):
                if len(handles) >= window:
                    await handles.popleft().delivered()
                started = time.perf_counter_ns()
                handles.append(await iot.publish(TOPIC, PAYLOAD, qos=1))
                calls.append((time.perf_counter_ns() - started) / 1000)
            for handle in handles:
                await handle.delivered()
            seconds, cpu = time.perf_counter() - began, usage()[0] - cpu_began
        return result(records, records, seconds, cpu, calls)

    return anyio.run(main)


def run_ancsync_metrics(
    port: int, records: int, window: int, batch: int, transport: str = "paho"
) -> dict:
    import anyio
    import anyio.lowlevel

    from ancsync import TelemetryPublisher

    metrics = {key: value for key, value in RECORD.items() if key != "timestamp"}

    async def main() -> dict:
        calls: list[float] = []
        async with (
            _ancsync_connection(port, window, transport) as iot,
            anyio.create_task_group() as tasks,
        ):
            await iot.wait_connected(timeout=10)
            # Room for every record: the producer outruns the publisher (it offers records in a
            # burst), and records dropped from a full buffer would be CPU spent for nothing,
            # charged to the records delivered.
            telemetry = TelemetryPublisher(
                iot, batch_size=batch, batch_interval=0.05, max_buffer_size=records
            )
            await tasks.start(telemetry.start_publishing)
            began, cpu_began = time.perf_counter(), usage()[0]
            for n in range(records):
                started = time.perf_counter_ns()
                telemetry.publish_anc_metrics(metrics)
                calls.append((time.perf_counter_ns() - started) / 1000)
                if n % batch == batch - 1:
                    await anyio.lowlevel.checkpoint()  # a control loop yields between ticks
            await telemetry.stop(timeout=60)
            seconds, cpu = time.perf_counter() - began, usage()[0] - cpu_began
            status = telemetry.get_status()
            tasks.cancel_scope.cancel()
        delivered = status["records"]["anc"]["delivered"]
        return result(delivered, status["batches_sent"], seconds, cpu, calls)

    return anyio.run(main)


def run_ancsync_publish_crt(port: int, records: int, window: int, batch: int) -> dict:
    return run_ancsync_publish(port, records, window, batch, transport="crt")


def run_ancsync_metrics_crt(port: int, records: int, window: int, batch: int) -> dict:
    return run_ancsync_metrics(port, records, window, batch, transport="crt")


CLIENTS: dict[str, Callable[[int, int, int, int], dict]] = {
    "paho-mqtt (thread)": run_paho,
    "awsiotsdk / awscrt": run_awscrt,
    "raw aiomqtt": run_aiomqtt,
    "ancsync transport alone (paho)": run_seam_paho,
    "ancsync transport alone (crt)": run_seam_crt,
    "ancsync IoTConnection.publish (paho)": run_ancsync_publish,
    "ancsync IoTConnection.publish (crt)": run_ancsync_publish_crt,
    "ancsync publish_metrics (batched, paho)": run_ancsync_metrics,
    "ancsync publish_metrics (batched, crt)": run_ancsync_metrics_crt,
}
#: The baseline of the ratio columns, from the same rounds.
BASELINE = "awsiotsdk / awscrt"


def _child(name: str, args: tuple[int, int, int, int], out: Any) -> None:
    out.send(CLIENTS[name](*args))


def measure(name: str, args: tuple[int, int, int, int]) -> dict:
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(name, args, sending))
    process.start()
    try:
        if not receiving.poll(300):
            raise SystemExit(f"{name} did not finish within 300 s")
        return receiving.recv()
    finally:
        process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000, help="per client and round")
    parser.add_argument("--window", type=int, default=20, help="QoS 1 messages in flight")
    parser.add_argument("--batch", type=int, default=10, help="ancsync records per message")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", action="append", help="run only the clients whose name contains this"
    )
    args = parser.parse_args()
    names = [n for n in CLIENTS if not args.only or any(o in n for o in args.only)]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with mosquitto() as port:
        for _ in range(args.rounds):
            for name in names:
                runs[name].append(measure(name, (port, args.records, args.window, args.batch)))
    # Medians over the rounds; the baseline is raw awscrt of the same rounds.
    summary = {name: _medians(results) for name, results in runs.items()}
    base = summary[BASELINE]
    print(
        f"{args.records} records per client and round, {args.rounds} interleaved rounds, QoS 1, "
        f"{args.window} in flight, mosquitto on 127.0.0.1; medians\n"
    )
    print(
        "| client | records/msg | msgs/s | records/s | CPU s / 10k records | peak RSS MB | "
        "call µs p50 / p99 | msgs/s vs awscrt | CPU/msg vs awscrt | "
        "records per CPU-s vs awscrt |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in summary.items():
        print(
            f"| {name} | {row['per_message']:.0f} | {row['msgs_s']:,.0f} | {row['records_s']:,.0f} "
            f"| {row['cpu_10k']:.2f} | {row['rss']:.0f} | {row['call_p50']:.1f} / "
            f"{row['call_p99']:.1f} | {row['msgs_s'] / base['msgs_s']:.2f}x | "
            f"{row['cpu_msg'] / base['cpu_msg']:.2f}x | {base['cpu_10k'] / row['cpu_10k']:.2f}x |"
        )


def _medians(results: list[dict]) -> dict[str, float]:
    def median(key: Callable[[dict], float]) -> float:
        return statistics.median(key(r) for r in results)

    return {
        "per_message": median(lambda r: r["records"] / max(1, r["messages"])),
        "msgs_s": median(lambda r: r["messages"] / r["seconds"]),
        "records_s": median(lambda r: r["records"] / r["seconds"]),
        "cpu_10k": median(lambda r: r["cpu"] / max(1, r["records"]) * 10_000),
        "cpu_msg": median(lambda r: r["cpu"] / max(1, r["messages"])),
        "rss": median(lambda r: r["rss"]),
        "call_p50": median(lambda r: r["call_p50"]),
        "call_p99": median(lambda r: r["call_p99"]),
    }


if __name__ == "__main__":
    main()
