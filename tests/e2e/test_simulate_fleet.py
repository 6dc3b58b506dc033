"""``ancsync simulate --devices N --processes P``: a fleet of real ancsync devices in worker
processes against the emulator running in the test's event loop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import psutil
import pytest

from ancsync.emulator.server import Emulator
from ancsync.testing import start_in_task
from ancsync.tools.fleet import device_names

pytestmark = pytest.mark.slow

ANCSYNC = str(Path(sys.executable).with_name("ancsync"))
THINGS = device_names("anc-sim-", 4)
TIMEOUT = 60  # four devices in two fresh interpreters, on a shared machine


async def simulate(emulator: Emulator, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **emulator.device_settings(THINGS[0]), "TELEMETRY_BATCH_INTERVAL": "0.5"}
    with anyio.fail_after(TIMEOUT):
        return await anyio.run_process([ANCSYNC, "simulate", *args], check=False, env=env)


@pytest.fixture
async def fleet_emulator(tmp_path: Path) -> Any:
    """The emulator over TLS, knowing the four things of the simulated fleet."""
    started = await start_in_task(Emulator(tmp_path / "certs", THINGS))
    yield started.part
    await started.stop()


async def test_four_devices_in_two_processes_reach_the_emulator(fleet_emulator: Emulator) -> None:
    result = await simulate(
        fleet_emulator, "--devices", "4", "--processes", "2", "--duration", "3",
        "--shadow-interval", "1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    summary = orjson.loads(result.stdout.decode().strip().splitlines()[-1])
    assert summary["devices"] == 4
    assert summary["processes"] == 2
    assert summary["connected"] == 4
    assert summary["errors"] == []
    devices = [device for worker in summary["workers"] for device in worker]
    assert [len(worker) for worker in summary["workers"]] == [2, 2]
    assert sorted(device["thing_name"] for device in devices) == THINGS
    for key in ("records_accepted", "records_delivered", "batches_sent", "published"):
        assert summary[key] == sum(device[key] for device in devices)
    assert summary["records_delivered"] == summary["records_accepted"] > 0
    assert summary["acknowledged"] == summary["published"]
    # Each device reported its state at start and then every second.
    assert all(device["shadow_accepted"] >= 2 for device in devices)
    sink = fleet_emulator.rules
    with anyio.fail_after(TIMEOUT):  # the sink stores each batch in a worker thread
        await sink.wait_for(
            lambda s: sum(map(s.record_count, THINGS)) >= summary["records_delivered"]
        )
    for device in devices:
        assert sink.record_count(device["thing_name"]) == device["records_delivered"] > 0
    for thing in THINGS:
        assert fleet_emulator.shadows.store.shadow(thing) is not None


async def test_the_fleet_summary_for_people(fleet_emulator: Emulator) -> None:
    result = await simulate(fleet_emulator, "--devices", "4", "--processes", "2", "--duration", "1")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert re.match(
        r"4 devices in 2 processes ran [\d.]+ s against 127\.0\.0\.1:\d+, 4 connected", lines[0]
    )
    assert re.match(r"telemetry +(\d+) records accepted, \1 delivered, 0 dropped", lines[1])
    assert lines[-1] == "errors      none"


async def test_a_thing_without_a_certificate_is_named(fleet_emulator: Emulator) -> None:
    result = await simulate(fleet_emulator, "--devices", "5", "--duration", "1")
    assert result.returncode == 1
    assert "no certificate for 1 of the 5 things" in result.stderr.decode()
    assert "anc-sim-005" in result.stderr.decode()


async def test_sigint_to_the_parent_stops_every_worker_cleanly(fleet_emulator: Emulator) -> None:
    env = {**os.environ, **fleet_emulator.device_settings(THINGS[0])}
    env["TELEMETRY_BATCH_INTERVAL"] = "0.2"
    command = [ANCSYNC, "simulate", "--devices", "4", "--processes", "2", "--json"]
    sink = fleet_emulator.rules
    async with await anyio.open_process(command, env=env, stderr=subprocess.DEVNULL) as process:
        with anyio.fail_after(TIMEOUT):
            await sink.wait_for(lambda s: all(s.record_count(thing) > 0 for thing in THINGS))
            workers = psutil.Process(process.pid).children()
            assert len(workers) == 2
            process.send_signal(signal.SIGINT)  # to the parent only: it passes it on
            assert process.stdout is not None
            output = b"".join([chunk async for chunk in process.stdout])
            assert await process.wait() == 0
    summary = orjson.loads(output.decode().strip().splitlines()[-1])
    assert summary["connected"] == 4
    assert summary["errors"] == []
    assert summary["records_delivered"] == summary["records_accepted"] > 0
    assert not [worker for worker in workers if worker.is_running()]


async def test_the_certificates_directory_alone_is_enough(fleet_emulator: Emulator) -> None:
    env = {**os.environ, **fleet_emulator.device_settings(THINGS[0])}
    env.update(IOT_CERT_PATH="", IOT_KEY_PATH="", IOT_THING_NAME="")
    certs = str(fleet_emulator.certs.root)
    command = [ANCSYNC, "simulate", "--devices", "2", "--certs-dir", certs, "--duration", "1"]
    with anyio.fail_after(TIMEOUT):
        result = await anyio.run_process(command, check=False, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert ", 2 connected" in result.stdout.decode().splitlines()[0]
