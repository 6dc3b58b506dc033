"""Fleet scale on one machine: the emulator serving N devices, beside mosquitto serving the same.

``--clients ancsync`` (the default): the devices are ``ancsync simulate --devices N --processes
<cores>``, each a real DataSyncOrchestrator (batched telemetry at ``--rate`` records/s, QoS 1, a
shadow report every 5 s, plain TCP), against the emulator only (mosquitto has no shadow service).
An operator client subscribed to ``anc/telemetry/#`` receives every batch and times it from its
``sent_at`` (milliseconds) to its delivery; "sent" is the batches the devices published.

``--clients raw``: each simulated device is an MQTT client (raw aiomqtt, plain TCP on
127.0.0.1, client id = its thing name) that publishes a telemetry batch at ``--rate``
messages/s (QoS 1) and a shadow ``update`` of its reported state every 5 s, against mosquitto
and the emulator. The devices run in one process per core, not one per device, either way. An
operator client subscribed to ``anc/telemetry/#`` receives every batch and measures its
end-to-end latency (publish call to delivery; both clocks are this machine's).

For each N, each broker runs ``--seconds`` of traffic; then the operator waits 2 s for the last
messages. Printed per row: messages sent and received, lost (sent, not received), end-to-end
p50/p99, and the broker process's CPU (% of one core) and peak RSS. The knee is the first N where
p99 or loss jumps.

    make bench-fleet                                           # 10 to 200 ancsync devices
    .venv/bin/python benchmarks/bench_fleet.py --devices 10 100 500 1000
    .venv/bin/python benchmarks/bench_fleet.py --clients raw --devices 10 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from bench_publish import HOST, mosquitto

_READY = re.compile(r"ready: emulator listening on 127\.0\.0\.1:(\d+)")


def thing(n: int) -> str:
    return f"anc-fleet-{n:04d}"


ANCSYNC = str(Path(sys.executable).with_name("ancsync"))
SIM_PREFIX = "anc-sim-"


def sim_things(devices: int) -> list[str]:
    """The thing names ``ancsync simulate --devices N`` uses (its ``device_names``)."""
    from ancsync.tools.fleet import device_names

    return device_names(SIM_PREFIX, devices)


@contextmanager
def emulator(devices: int, names: list[str] | None = None) -> Iterator[tuple[int, int]]:
    """``ancsync emulator --no-tls`` with ``devices`` things (or ``names``); yields (port, pid)."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [ANCSYNC, "emulator", "--no-tls"]
        command += ["--port", "0", "--certs-dir", f"{workdir}/certs", "--db", f"{workdir}/r.db"]
        for name in names or [thing(n) for n in range(devices)]:
            command += ["--thing", name]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                match = _READY.search(line)
                if match:
                    break
            else:
                raise SystemExit("the emulator did not start")
            yield int(match.group(1)), process.pid
        finally:
            process.terminate()
            process.wait(10)


@contextmanager
def mosquitto_broker(devices: int) -> Iterator[tuple[int, int]]:
    with mosquitto() as port:
        [pid] = [p.pid for p in psutil.process_iter(["name"]) if _listens(p, port)]
        yield port, pid


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.laddr.port == port for c in process.net_connections("tcp"))
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return False


def run_devices(port: int, names: list[str], rate: float, seconds: float, out: Any) -> None:
    """One process: ``names`` devices publishing for ``seconds``; sends back how many sent."""
    import aiomqtt

    async def device(name: str) -> int:
        sent = 0
        topic = f"anc/telemetry/{name}/anc"
        shadow = f"$aws/things/{name}/shadow/update"
        async with aiomqtt.Client(HOST, port, identifier=name, timeout=30) as client:
            started = time.monotonic()
            next_shadow = started
            while (now := time.monotonic()) < started + seconds:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                record = {"timestamp": stamp, "latency_ms": 4.2, "cancellation_db": 30.0,
                          "snr_improvement_db": 20.0}  # fmt: skip
                body = {"device_id": name, "kind": "anc", "msg_id": f"{name}-{sent}",
                        "seq": sent, "sent_at": stamp, "sent": time.time(),
                        "records": [record]}  # fmt: skip
                await client.publish(topic, json.dumps(body), qos=1)
                sent += 1
                if now >= next_shadow:
                    state = {"state": {"reported": {"anc_intensity": 0.7, "seq": sent}}}
                    await client.publish(shadow, json.dumps(state), qos=1)
                    next_shadow += 5.0
                await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
        return sent

    async def main() -> int:
        counts = await asyncio.gather(*(device(name) for name in names))
        return sum(counts)

    out.send(asyncio.run(main()))


async def operator(port: int, subscribed: asyncio.Event, latencies: list[float]) -> None:
    """Receive every telemetry message until cancelled; record its end-to-end latency (from
    ``sent``, the raw devices' float, or ``sent_at``, the ancsync batch's ISO timestamp)."""
    import aiomqtt

    async with aiomqtt.Client(HOST, port, identifier="fleet-operator", timeout=30) as client:
        await client.subscribe("anc/telemetry/#", qos=1)
        subscribed.set()
        async for message in client.messages:
            body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            sent = body.get("sent")
            if sent is None:
                sent = datetime.fromisoformat(body["sent_at"]).timestamp()
            latencies.append(time.time() - sent)


def step(broker: str, devices: int, rate: float, seconds: float) -> dict[str, Any]:
    opened = emulator if broker == "emulator" else mosquitto_broker
    with opened(devices) as (port, pid):
        watched = psutil.Process(pid)
        cpu_before = sum(watched.cpu_times()[:2])
        latencies: list[float] = []
        context = multiprocessing.get_context("spawn")
        cores = max(1, min(os.cpu_count() or 1, devices))
        names = [thing(n) for n in range(devices)]
        pipes, processes = [], []

        async def run() -> None:
            subscribed = asyncio.Event()
            listening = asyncio.ensure_future(operator(port, subscribed, latencies))
            await asyncio.wait_for(subscribed.wait(), 30)
            for core in range(cores):
                receiving, sending = context.Pipe(duplex=False)
                share = names[core::cores]
                process = context.Process(
                    target=run_devices, args=(port, share, rate, seconds, sending)
                )
                process.start()
                pipes.append(receiving)
                processes.append(process)
            for process in processes:
                await asyncio.to_thread(process.join)
            await asyncio.sleep(2.0)  # ok: the messages still in flight arrive
            listening.cancel()

        began = time.monotonic()
        asyncio.run(run())
        elapsed = time.monotonic() - began
        sent = sum(pipe.recv() for pipe in pipes)
        cpu = sum(watched.cpu_times()[:2]) - cpu_before
        rss = watched.memory_info().rss / 2**20
    ordered = sorted(latencies)

    def pct(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000 if ordered else 0

    return {
        "broker": broker,
        "devices": devices,
        "sent": sent,
        "received": len(latencies),
        "lost": max(0, sent - len(latencies)),
        "p50": pct(0.5),
        "p99": pct(0.99),
        "cpu": cpu / elapsed * 100,
        "rss": rss,
    }


def step_ancsync(devices: int, rate: float, seconds: float) -> dict[str, Any]:
    """``ancsync simulate --devices N`` against the emulator; the same row as :func:`step`."""
    names = sim_things(devices)
    with emulator(devices, names) as (port, pid), tempfile.TemporaryDirectory() as state:
        watched = psutil.Process(pid)
        cpu_before = sum(watched.cpu_times()[:2])
        latencies: list[float] = []
        cores = max(1, min(os.cpu_count() or 1, devices))
        env = {**os.environ, "IOT_ENDPOINT": HOST, "IOT_PORT": str(port), "IOT_TLS": "false"}
        env["XDG_STATE_HOME"] = state  # each device's durable outbox, thrown away after
        command = [ANCSYNC, "simulate", "--devices", str(devices), "--processes", str(cores)]
        command += ["--rate", f"{rate:g}", "--duration", f"{seconds:g}", "--json"]

        async def run() -> dict[str, Any]:
            subscribed = asyncio.Event()
            listening = asyncio.ensure_future(operator(port, subscribed, latencies))
            await asyncio.wait_for(subscribed.wait(), 30)
            simulated = await asyncio.create_subprocess_exec(
                *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            output, _ = await simulated.communicate()
            await asyncio.sleep(2.0)  # ok: the messages still in flight arrive
            listening.cancel()
            summary: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
            return summary

        began = time.monotonic()
        summary = asyncio.run(run())
        elapsed = time.monotonic() - began
        cpu = sum(watched.cpu_times()[:2]) - cpu_before
        rss = watched.memory_info().rss / 2**20
    ordered = sorted(latencies)

    def pct(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000 if ordered else 0

    sent = summary["batches_sent"]
    return {
        "broker": "emulator",
        "devices": devices,
        "connected": summary["connected"],
        "records": summary["records_delivered"],
        "sent": sent,
        "received": len(latencies),
        "lost": max(0, sent - len(latencies)),
        "p50": pct(0.5),
        "p99": pct(0.99),
        "cpu": cpu / elapsed * 100,
        "rss": rss,
    }


def main_ancsync(args: argparse.Namespace) -> None:
    """The table of ``--clients ancsync``."""
    print(
        f"ancsync simulate: {args.rate:g} telemetry records/s per device (batched, QoS 1) + a "
        f"shadow report every 5 s, {args.seconds:g} s per row, devices in {os.cpu_count()} "
        "processes, plain TCP\n"
    )
    print(
        "| devices | connected | records delivered | batches sent | received | lost "
        "| p50 ms | p99 ms | emulator CPU % | RSS MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for devices in args.devices:
        row = step_ancsync(devices, args.rate, args.seconds)
        print(
            f"| {devices} | {row['connected']} | {row['records']} | {row['sent']} | "
            f"{row['received']} | {row['lost']} | {row['p50']:.1f} | {row['p99']:.1f} | "
            f"{row['cpu']:.0f} | {row['rss']:.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--rate", type=float, default=10.0, help="telemetry msgs/s per device")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--clients",
        choices=("ancsync", "raw"),
        default="ancsync",
        help="ancsync: `ancsync simulate --devices N` (emulator only); raw: aiomqtt devices "
        "against mosquitto and the emulator",
    )
    args = parser.parse_args()
    if args.clients == "ancsync":
        main_ancsync(args)
        return
    print(
        f"{args.rate:g} telemetry msgs/s per device (QoS 1) + a shadow update every 5 s, "
        f"{args.seconds:g} s per row, devices in {os.cpu_count()} processes, plain TCP\n"
    )
    print("| broker | devices | sent | received | lost | p50 ms | p99 ms | broker CPU % | RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for devices in args.devices:
        for broker in ("mosquitto", "emulator"):  # the baseline first, same N
            row = step(broker, devices, args.rate, args.seconds)
            print(
                f"| {row['broker']} | {devices} | {row['sent']} | {row['received']} | "
                f"{row['lost']} | {row['p50']:.1f} | {row['p99']:.1f} | {row['cpu']:.0f} | "
                f"{row['rss']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
