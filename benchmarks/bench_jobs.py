"""A Jobs rollout to a fleet: time until every execution SUCCEEDED, and the emulator's CPU.

The emulator runs in its own process (``ancsync emulator``, TLS); this process runs ``--devices``
simulated devices, each an ``IoTConnection`` with a ``DeviceJobs`` whose handler starts the job,
reports one progress step and succeeds (three journaled, fsynced status updates per device). An
operator creates one job for all of them over the emulator's operator API and polls
DescribeJob until none is pending. The baseline, in the same run, is the emulator's CPU while
the same fleet sits connected and idle for as long as the rollout took.

    .venv/bin/python benchmarks/bench_jobs.py [--devices 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from emulator_process import EmulatorProcess, running_emulator

from ancsync import BackoffPolicy, DeviceJobs, IoTConnection, Job, OperatorCredentials
from ancsync.tools.jobs_operator import EmulatorJobsOperator


def fleet(
    emulator: EmulatorProcess, things: list[str], workdir: Path
) -> list[tuple[IoTConnection, DeviceJobs]]:
    devices = []
    for thing in things:
        iot = IoTConnection(
            thing,
            "127.0.0.1",
            port=emulator.port,
            reconnect=BackoffPolicy(base=0.2, cap=2.0),
            **emulator.device_files(thing),
        )
        jobs = DeviceJobs(iot, data_dir=workdir / "devices" / thing)

        @jobs.on("calibrate")
        async def calibrate(job: Job[Any]) -> None:
            await job.start()
            await job.progress(step="measure", percent=50)

        devices.append((iot, jobs))
    return devices


async def run(count: int) -> None:
    things = [f"anc-bench-{n:03d}" for n in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with running_emulator(workdir, things) as emulator:
            devices = fleet(emulator, things, workdir)
            credentials = OperatorCredentials.from_certs_dir(emulator.certs_dir, port=emulator.port)
            connected = time.perf_counter()
            async with AsyncExitStack() as stack:
                for iot, _ in devices:
                    await stack.enter_async_context(iot)
                for _, jobs in devices:
                    await stack.enter_async_context(jobs)
                for iot, _ in devices:
                    await iot.wait_connected(timeout=120)
                connect_s = time.perf_counter() - connected
                async with EmulatorJobsOperator(credentials.connection(), timeout=60) as operator:
                    cpu_before, started = emulator.cpu_seconds(), time.perf_counter()
                    await operator.create("bench-1", things, {"operation": "calibrate"})
                    while True:
                        job = await operator.describe("bench-1")
                        if job["status"] == "COMPLETED":
                            break
                        await anyio.sleep(0.2)  # ok: polling the operator API, as a console would
                    rollout_s = time.perf_counter() - started
                    rollout_cpu = emulator.cpu_seconds() - cpu_before
                    succeeded = job["processDetails"]["SUCCEEDED"]
                    idle_before = emulator.cpu_seconds()
                    await anyio.sleep(rollout_s)  # ok: the idle baseline lasts as long
                    idle_cpu = emulator.cpu_seconds() - idle_before
    print(f"{count} devices connected over TLS in {connect_s:.1f} s; {succeeded} SUCCEEDED")
    print()
    print("| phase | wall s | emulator CPU s | emulator CPU % |")
    print("|---|---|---|---|")
    print(
        f"| fleet connected, idle (baseline) | {rollout_s:.2f} | {idle_cpu:.2f} | "
        f"{100 * idle_cpu / rollout_s:.0f} |"
    )
    print(
        f"| rollout: create to all SUCCEEDED | {rollout_s:.2f} | {rollout_cpu:.2f} | "
        f"{100 * rollout_cpu / rollout_s:.0f} |"
    )
    print(f"\nemulator CPU per status update: {1000 * rollout_cpu / (3 * count):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    anyio.run(run, parser.parse_args().devices)


if __name__ == "__main__":
    main()
