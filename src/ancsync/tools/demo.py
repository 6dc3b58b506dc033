"""``ancsync demo``: the whole system on one machine, checked end to end.

:func:`run_demo` starts the local emulator (generated certificates, TLS on a free loopback port),
runs a :class:`~ancsync.tools.simulator.SimulatedAncDevice` through a
:class:`~ancsync.orchestrator.DataSyncOrchestrator`, and plays the cloud:

- the operator changes the desired ANC intensity and algorithm (the device applies and reports);
- the emergency rule: every emergency the broker accepts is acknowledged with an
  ``emergency_ack`` command, as the emergency Lambda in ``infra/`` does;
- the rules sink stores telemetry batches and emergencies;
- at the end, a noise-model update is rolled out as an AWS IoT Job
  (:mod:`ancsync.tools.demo_jobs`) and must end SUCCEEDED.

At the end it compares both sides and returns a :class:`DemoSummary`: its ``ok`` is true only when
every telemetry record published was stored, nothing was dropped and no ``seq`` is missing, the
shadow converged on the operator's change, and every emergency was reported, acknowledged by the
broker and the cloud, and stored. The CLI renders progress and the summary; this module prints
nothing.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ancsync.emulator.console.service import Console
from ancsync.emulator.server import DEFAULT_THING, Emulator
from ancsync.models import Command, new_id, utc_now
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.orchestrator import DataSyncOrchestrator
from ancsync.tools.demo_jobs import run_jobs_step
from ancsync.tools.operator import OperatorCredentials, ShadowOperator
from ancsync.tools.simulator import SimulatedAncDevice
from ancsync.topics import commands_topic, emergency_topic

__all__ = ["DESIRED_CHANGE", "DemoProgress", "DemoSummary", "run_demo"]

log = logging.getLogger("ancsync.tools.demo")

DESIRED_CHANGE = {"anc_intensity": 0.9, "anc_algorithm": "fxlms"}
"""What the operator asks of the device during the demo."""

# How long the end of the demo may wait for the last acknowledgements and stored batches.
SETTLE_TIMEOUT = 10.0


@dataclass(frozen=True)
class DemoProgress:
    """A snapshot for a live display, sent about four times a second."""

    elapsed: float
    duration: float
    phase: str
    connection: str
    records_published: int
    records_stored: int
    shadow_version: int
    shadow_in_sync: bool
    emergencies_reported: int
    emergencies_stored: int


@dataclass
class DemoSummary:
    """What the demo measured on both sides, and whether it all checked out (``ok``)."""

    duration_s: float
    thing_name: str
    endpoint: str
    telemetry_records_published: int = 0
    telemetry_records_delivered: int = 0
    telemetry_records_stored: int = 0
    telemetry_batches_sent: int = 0
    telemetry_batches_stored: int = 0
    telemetry_dropped: int = 0
    seq_gaps: int = 0
    shadow_version: int = 0
    shadow_desired: dict[str, Any] = field(default_factory=dict)
    shadow_reported: dict[str, Any] = field(default_factory=dict)
    shadow_converged: bool = False
    desired_change_applied: bool = False
    emergencies_reported: int = 0
    emergencies_acknowledged: int = 0
    emergencies_cloud_acknowledged: int = 0
    emergencies_stored: int = 0
    job_status: str = ""
    job_applied_model: str | None = None
    reconnects: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether everything checked out (``problems`` says what did not)."""
        return not self.problems

    def check(self) -> None:
        """Fill ``problems`` from the numbers."""
        problems = []
        if self.telemetry_records_published == 0:
            problems.append("no telemetry was published")
        if self.telemetry_records_stored != self.telemetry_records_published:
            problems.append(
                f"{self.telemetry_records_published} telemetry records published but "
                f"{self.telemetry_records_stored} stored by the rules sink"
            )
        if self.telemetry_dropped:
            problems.append(f"{self.telemetry_dropped} telemetry records dropped")
        if self.seq_gaps:
            problems.append(f"{self.seq_gaps} gaps in seq at the rules sink")
        if not self.desired_change_applied:
            problems.append(f"the device did not apply the operator's change {DESIRED_CHANGE}")
        if not self.shadow_converged:
            problems.append("the shadow did not converge: reported differs from desired")
        counts = {
            self.emergencies_reported,
            self.emergencies_acknowledged,
            self.emergencies_cloud_acknowledged,
            self.emergencies_stored,
        }
        if self.emergencies_reported == 0 or len(counts) != 1:
            problems.append(
                f"emergencies: {self.emergencies_reported} reported, "
                f"{self.emergencies_acknowledged} acknowledged by the broker, "
                f"{self.emergencies_cloud_acknowledged} by the cloud, "
                f"{self.emergencies_stored} stored"
            )
        if self.job_status != "SUCCEEDED":
            problems.append(f"the noise-model job ended {self.job_status or 'never'}")
        self.problems = problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable, with ``ok``."""
        return {"ok": self.ok, **asdict(self)}


async def run_demo(
    workdir: Path,
    duration: float = 15.0,
    *,
    rate: float = 10.0,
    on_progress: Callable[[DemoProgress], None] = lambda progress: None,
    on_event: Callable[[str], None] = lambda text: None,
    console: bool = False,
) -> DemoSummary:
    """Run the demo for ``duration`` seconds with its files under ``workdir``; see the module.

    ``console`` also serves the emulator's web console on a free loopback port (its address is
    told through ``on_event``).

    Certificates in ``workdir/certs`` are reused between runs; the device's data directory
    (``workdir/device``) starts empty each time so the counts are this run's.
    """
    if duration < 4:
        raise ValueError(f"the demo needs at least 4 seconds, got {duration!r}")
    thing = DEFAULT_THING
    shutil.rmtree(workdir / "device", ignore_errors=True)
    fast = BackoffPolicy(base=0.1, cap=2.0)  # loopback: reconnect quickly
    async with Emulator(workdir / "certs", [thing]) as emulator, AsyncExitStack() as extras:
        if console:
            web = await extras.enter_async_context(Console(emulator))
            on_event(f"console on {web.url}")
        summary = DemoSummary(duration, thing, f"{emulator.host}:{emulator.port}")
        on_event(f"emulator listening on {summary.endpoint} (TLS, client certificates)")
        settings = emulator.device_settings(thing)
        orchestrator = DataSyncOrchestrator(
            thing_name=thing,
            endpoint=settings["IOT_ENDPOINT"],
            port=emulator.port,
            cert_path=settings["IOT_CERT_PATH"],
            key_path=settings["IOT_KEY_PATH"],
            root_ca_path=settings["IOT_ROOT_CA_PATH"],
            data_dir=workdir / "device",
            batch_size=10,
            batch_interval=1.0,
            firmware_version="1.2.3",
            connection_options={"reconnect": fast},
        )
        device = SimulatedAncDevice(orchestrator, rate=rate, on_event=on_event)
        credentials = OperatorCredentials.from_certs_dir(emulator.certs.root, port=emulator.port)
        operator = ShadowOperator(credentials.connection(reconnect=fast), thing)

        async def acknowledge(topic: str, event: Any) -> None:
            # The emergency rule's Lambda: record, then acknowledge to the device.
            ack = Command(
                command_id=new_id(),
                command="emergency_ack",
                params={"event_id": event["event_id"]},
                issued_at=utc_now(),
            )
            await operator.connection.publish(commands_topic(thing), ack)
            on_event(f"cloud stored emergency {event['event_id']} and sent emergency_ack")

        operator.connection.subscribe(emergency_topic(thing), acknowledge)
        phase = "starting"

        def snapshot() -> DemoProgress:
            status = orchestrator.get_status()
            records = status["telemetry"]["records"]
            return DemoProgress(
                elapsed=min(duration, anyio.current_time() - started),
                duration=duration,
                phase=phase,
                connection=status["connection"]["state"],
                records_published=sum(kind["accepted"] for kind in records.values()),
                records_stored=emulator.rules.record_count(thing),
                shadow_version=status["shadow"]["version"],
                shadow_in_sync=status["shadow"]["in_sync"],
                emergencies_reported=status["emergency"]["reported"],
                emergencies_stored=len(emulator.rules.emergencies(thing)),
            )

        async def report_progress() -> None:
            while True:
                on_progress(snapshot())
                await anyio.sleep(0.25)

        started = anyio.current_time()
        async with operator, anyio.create_task_group() as ui:
            ui.start_soon(report_progress)
            async with orchestrator:
                await orchestrator.wait_connected(timeout=10)
                on_event(f"device {thing} connected; reporting its ANC state")
                await device.report_state()
                async with anyio.create_task_group() as loop:
                    loop.start_soon(device.run)
                    phase = "device running"
                    await anyio.sleep_until(started + 0.25 * duration)
                    phase = "operator changing desired state"
                    on_event(f"operator sets desired {DESIRED_CHANGE}")
                    await operator.update_desired(DESIRED_CHANGE)
                    await anyio.sleep_until(started + 0.5 * duration)
                    phase = "fire alarm"
                    await device.fire_alarm()
                    await anyio.sleep_until(started + 0.7 * duration)
                    await device.alarm_over()
                    phase = "device running"
                    await anyio.sleep_until(started + duration)
                    loop.cancel_scope.cancel()
                phase = "settling"
                on_event("device loop stopped; waiting for the last acknowledgements")
                with anyio.move_on_after(SETTLE_TIMEOUT):
                    await _settled(operator, device)
                phase = "noise-model job"
                on_event("operator rolls out a noise-model update (AWS IoT Jobs)")
                job = await run_jobs_step(
                    emulator,
                    orchestrator,
                    workdir / "device",
                    lambda name, _data: orchestrator.update_anc_state(noise_type=name, wait=True),
                )
                summary.job_status, summary.job_applied_model = job.status, job.applied_model
                on_event(f"job {job.job_id} ended {job.status}")
                phase = "stopping"
            status = orchestrator.get_status()  # after stop(): everything flushed
            delivered = status["telemetry"]["records"]
            summary.telemetry_records_delivered = sum(k["delivered"] for k in delivered.values())
            reported = status["emergency"]["reported"]
            with anyio.move_on_after(SETTLE_TIMEOUT):  # the sink writes in a worker thread
                await emulator.rules.wait_for(
                    lambda sink: (
                        sink.record_count(thing) >= summary.telemetry_records_delivered
                        and len(sink.emergencies(thing)) >= reported
                    )
                )
            document = await operator.get()
            ui.cancel_scope.cancel()
        phase = "done"
        on_progress(snapshot())
        telemetry = status["telemetry"]
        summary.telemetry_records_published = sum(
            kind["accepted"] for kind in telemetry["records"].values()
        )
        summary.telemetry_records_stored = emulator.rules.record_count(thing)
        summary.telemetry_batches_sent = telemetry["batches_sent"]
        summary.telemetry_batches_stored = len(emulator.rules.telemetry_batches(thing))
        summary.telemetry_dropped = (
            telemetry["dropped"]
            + telemetry["failed"]
            + telemetry["unsent"]
            + telemetry["unconfirmed"]
        ) + status["connection"]["dropped"]
        summary.seq_gaps = len(emulator.rules.gaps(thing))
        summary.shadow_version = document.version
        summary.shadow_desired = document.desired
        summary.shadow_reported = document.reported
        summary.shadow_converged = document.converged
        summary.desired_change_applied = all(
            document.reported.get(key) == value for key, value in DESIRED_CHANGE.items()
        ) and any(DESIRED_CHANGE.items() <= applied.items() for applied in device.applied)
        emergency = status["emergency"]
        summary.emergencies_reported = emergency["reported"]
        summary.emergencies_acknowledged = emergency["acknowledged"]
        summary.emergencies_cloud_acknowledged = emergency["cloud_acknowledged"]
        summary.emergencies_stored = len(emulator.rules.emergencies(thing))
        summary.reconnects = status["connection"]["reconnect_count"]
    summary.check()
    return summary


async def _settled(operator: ShadowOperator, device: SimulatedAncDevice) -> None:
    """Wait until the cloud acknowledged every emergency and the shadow converged."""
    await device.wait_acknowledged()
    with operator.watch() as documents:
        if (await operator.get()).converged:
            return
        async for document in documents:
            if document.converged:
                return
