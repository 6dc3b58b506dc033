"""A simulated fleet: N :class:`~ancsync.tools.simulator.SimulatedAncDevice` in P processes.

``ancsync simulate --devices N`` runs here. The parent splits the devices over the processes
(:func:`split_devices`), starts one worker per share (``python -m ancsync.tools.fleet_worker``,
see :mod:`ancsync.tools.fleet_worker`), each running its devices in one event loop, then adds up
what the workers report (:func:`summarize`). A SIGINT or SIGTERM to the parent is passed on to
every worker, which stops its devices cleanly and still reports.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

import anyio
import orjson
from anyio.abc import Process

__all__ = [
    "DeviceResult",
    "FleetPlan",
    "FleetSummary",
    "certs_dir_of",
    "device_names",
    "empty_result",
    "run_fleet",
    "split_devices",
    "summarize",
]


class DeviceResult(TypedDict):
    """What one simulated device of the fleet did (a worker reports one per device)."""

    thing_name: str
    connected: bool
    """It connected at least once."""
    records_accepted: int
    """Telemetry records queued by the device."""
    records_delivered: int
    """Telemetry records the broker acknowledged."""
    records_dropped: int
    """Telemetry records dropped (buffer full while offline)."""
    batches_sent: int
    """Telemetry messages (batches) published."""
    batches_acknowledged: int
    """Telemetry messages the broker acknowledged (PUBACK)."""
    published: int
    """MQTT publishes of every kind (telemetry, shadow, status...)."""
    acknowledged: int
    """MQTT publishes the broker acknowledged."""
    shadow_accepted: int
    """Shadow requests the shadow service accepted."""
    error: str | None
    """Why it failed (never connected, a refused certificate...), or None."""


class FleetSummary(TypedDict):
    """The fleet's totals (``ancsync simulate --devices N --json`` prints it)."""

    devices: int
    processes: int
    endpoint: str
    port: int
    elapsed_s: float
    connected: int
    records_accepted: int
    records_delivered: int
    records_dropped: int
    batches_sent: int
    batches_acknowledged: int
    published: int
    acknowledged: int
    shadow_accepted: int
    errors: list[str]
    """One line per failed device or worker: ``thing: reason``."""
    workers: list[list[DeviceResult]]
    """Each worker's devices, in process order."""


@dataclass(frozen=True)
class FleetPlan:
    """What every worker needs: the devices' common settings and how to run them.

    Each device's certificate and key are ``certs_dir/<thing>/cert.pem`` and ``private.key``
    (the emulator's layout, :func:`~ancsync.emulator.certs.ensure_dev_certs`); ``certs_dir`` is
    None for plain MQTT. Other settings come from ``config`` and the environment.
    """

    things: tuple[str, ...]
    rate: float
    shadow_interval: float
    duration: float | None
    connect_timeout: float
    firmware: str
    config: str | None = None
    certs_dir: str | None = None

    def share(self, things: Sequence[str]) -> FleetPlan:
        """This plan for ``things`` only (one worker's share)."""
        return FleetPlan(**{**asdict(self), "things": tuple(things)})

    def to_json(self) -> bytes:
        """The plan as JSON (a worker's argument)."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: str | bytes) -> FleetPlan:
        """The plan :meth:`to_json` wrote."""
        values = orjson.loads(data)
        return cls(**{**values, "things": tuple(values["things"])})


def device_names(prefix: str, count: int) -> list[str]:
    """The thing names of a fleet of ``count``: ``prefix`` + 001, 002... (at least 3 digits)."""
    width = max(3, len(str(count)))
    return [f"{prefix}{index:0{width}d}" for index in range(1, count + 1)]


def split_devices(devices: Sequence[str], processes: int) -> list[list[str]]:
    """``devices`` in ``processes`` shares as even as can be (sizes differ by one at most),
    in order; never an empty share: fewer shares when there are fewer devices.

    Raises:
        ValueError: ``processes`` is below 1.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    count = min(processes, len(devices))
    size, extra = divmod(len(devices), count) if count else (0, 0)
    shares: list[list[str]] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        shares.append(list(devices[start:end]))
        start = end
    return shares


def summarize(
    workers: Sequence[list[DeviceResult]],
    *,
    endpoint: str,
    port: int,
    elapsed: float,
    worker_errors: Sequence[str] = (),
) -> FleetSummary:
    """Add up the workers' device results."""
    devices = [device for worker in workers for device in worker]

    def total(key: str) -> int:
        counts: list[Any] = [device.get(key, 0) for device in devices]
        return sum(int(count) for count in counts)

    errors = [f"{d['thing_name']}: {d['error']}" for d in devices if d["error"]]
    return {
        "devices": len(devices),
        "processes": len(workers),
        "endpoint": endpoint,
        "port": port,
        "elapsed_s": round(elapsed, 2),
        "connected": sum(1 for device in devices if device["connected"]),
        "records_accepted": total("records_accepted"),
        "records_delivered": total("records_delivered"),
        "records_dropped": total("records_dropped"),
        "batches_sent": total("batches_sent"),
        "batches_acknowledged": total("batches_acknowledged"),
        "published": total("published"),
        "acknowledged": total("acknowledged"),
        "shadow_accepted": total("shadow_accepted"),
        "errors": [*worker_errors, *errors],
        "workers": list(workers),
    }


async def run_fleet(
    plan: FleetPlan,
    processes: int,
    *,
    endpoint: str,
    port: int,
    on_event: Callable[[str], None] = lambda text: None,
) -> FleetSummary:
    """Run ``plan``'s devices in ``processes`` workers until they end (``plan.duration``) or a
    SIGINT/SIGTERM stops them; return the summary. A worker that fails is named in ``errors``
    with its devices counted as not connected."""
    shares = split_devices(plan.things, processes)
    started = anyio.current_time()
    results: list[list[DeviceResult]] = [[] for _ in shares]
    worker_errors: list[str] = []
    running: list[Process] = []

    async def work(index: int, share: list[str]) -> None:
        command = [sys.executable, "-m", "ancsync.tools.fleet_worker"]
        process = await anyio.open_process(
            [*command, plan.share(share).to_json().decode()], stderr=None
        )
        running.append(process)
        assert process.stdout is not None
        output = b""
        async for chunk in process.stdout:
            output += chunk
        code = await process.wait()
        try:
            results[index] = orjson.loads(output.splitlines()[-1])
        except (IndexError, orjson.JSONDecodeError):
            worker_errors.append(f"worker {index + 1} ({share[0]}...) ended with code {code}")
            results[index] = [empty_result(thing) for thing in share]

    async with anyio.create_task_group() as tasks:

        async def forward_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    on_event(f"{signal.Signals(signum).name}: stopping {len(plan.things)} devices")
                    for process in running:
                        if process.returncode is None:
                            process.send_signal(signal.SIGTERM)

        tasks.start_soon(forward_signals)
        async with anyio.create_task_group() as workers:
            for index, share in enumerate(shares):
                workers.start_soon(work, index, share)
        tasks.cancel_scope.cancel()
    return summarize(
        results,
        endpoint=endpoint,
        port=port,
        elapsed=anyio.current_time() - started,
        worker_errors=worker_errors,
    )


def empty_result(thing: str) -> DeviceResult:
    """The result of a device that did nothing (yet): not connected, every count 0."""
    return {
        "thing_name": thing,
        "connected": False,
        "records_accepted": 0,
        "records_delivered": 0,
        "records_dropped": 0,
        "batches_sent": 0,
        "batches_acknowledged": 0,
        "published": 0,
        "acknowledged": 0,
        "shadow_accepted": 0,
        "error": None,
    }


def certs_dir_of(cert_path: Path | None, given: Path | None) -> Path | None:
    """Where the fleet's certificates are: ``given``, else two levels above the configured
    device certificate (``<certs>/<thing>/cert.pem``, the emulator's layout)."""
    if given is not None:
        return given
    return cert_path.parent.parent if cert_path is not None else None
