"""One worker process of a simulated fleet: its share of the devices in one event loop.

``python -m ancsync.tools.fleet_worker PLAN_JSON`` (started by
:func:`ancsync.tools.fleet.run_fleet`) runs a real
:class:`~ancsync.orchestrator.DataSyncOrchestrator` per thing of the plan, each driven by a
:class:`~ancsync.tools.simulator.SimulatedAncDevice`, until the plan's duration ends or a SIGINT
or SIGTERM arrives; every device then stops cleanly, and the worker prints one JSON line on
stdout: a :class:`~ancsync.tools.fleet.DeviceResult` per device.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import anyio
import orjson

from ancsync.config import Settings
from ancsync.errors import AncSyncError
from ancsync.orchestrator import DataSyncOrchestrator
from ancsync.tools.fleet import DeviceResult, FleetPlan, empty_result
from ancsync.tools.simulator import SimulatedAncDevice, run_simulation

__all__ = ["main", "run_device", "run_share"]


async def run_device(plan: FleetPlan, thing: str, scope: anyio.CancelScope) -> DeviceResult:
    """Run the device ``thing`` of ``plan`` until it ends or ``scope`` is cancelled."""
    result = empty_result(thing)
    try:
        certs = Path(plan.certs_dir) / thing if plan.certs_dir else None
        settings = Settings.load(
            plan.config,
            thing_name=thing,
            cert_path=certs / "cert.pem" if certs else None,
            key_path=certs / "private.key" if certs else None,
        )
        orchestrator = DataSyncOrchestrator(settings=settings, firmware_version=plan.firmware)
    except AncSyncError as exc:
        result["error"] = str(exc)
        return result

    async def on_connect() -> None:
        result["connected"] = True

    orchestrator.connection.add_connect_hook(on_connect)
    device = SimulatedAncDevice(orchestrator, rate=plan.rate)
    with scope:
        try:
            await run_simulation(
                device,
                duration=plan.duration,
                connect_timeout=plan.connect_timeout,
                shadow_interval=plan.shadow_interval,
            )
        except AncSyncError as exc:
            result["error"] = str(exc)
    status = orchestrator.get_status()
    telemetry, connection = status["telemetry"], status["connection"]
    records = telemetry["records"].values()
    result["records_accepted"] = sum(r["accepted"] for r in records)
    result["records_delivered"] = sum(r["delivered"] for r in records)
    result["records_dropped"] = telemetry["dropped"]
    result["batches_sent"] = telemetry["batches_sent"]
    result["batches_acknowledged"] = telemetry["batches_acknowledged"]
    result["published"] = connection["published"]
    result["acknowledged"] = connection["acknowledged"]
    result["shadow_accepted"] = status["shadow"]["requests"].get("accepted", 0)
    if not result["connected"] and result["error"] is None:
        result["error"] = "never connected"
    return result


async def run_share(plan: FleetPlan) -> list[DeviceResult]:
    """Run every device of ``plan`` in this event loop; a SIGINT or SIGTERM stops them all."""
    scopes = [anyio.CancelScope() for _ in plan.things]
    results: list[DeviceResult | None] = [None] * len(plan.things)

    async def run(index: int) -> None:
        results[index] = await run_device(plan, plan.things[index], scopes[index])

    async with anyio.create_task_group() as tasks:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    for scope in scopes:
                        scope.cancel()

        tasks.start_soon(stop_on_signal)
        async with anyio.create_task_group() as devices:
            for index in range(len(plan.things)):
                devices.start_soon(run, index)
        tasks.cancel_scope.cancel()
    return [result for result in results if result is not None]


def main(argv: list[str] | None = None) -> None:
    """The worker's entry point: the plan as JSON in the first argument."""
    args = sys.argv[1:] if argv is None else argv
    # Each device's story would repeat for every device; the parent prints the summary.
    logging.basicConfig(level=logging.CRITICAL)
    plan = FleetPlan.from_json(args[0])
    results = anyio.run(run_share, plan)
    sys.stdout.buffer.write(orjson.dumps(results) + b"\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
