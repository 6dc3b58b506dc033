"""DataSyncOrchestrator: one object that keeps an ANC device in sync with AWS IoT Core.

It builds and runs the parts: an :class:`~ancsync.connection.IoTConnection`, a
:class:`~ancsync.shadow.DeviceShadowSync` for the ANC state, a
:class:`~ancsync.telemetry.TelemetryPublisher`, an :class:`~ancsync.emergency.EmergencyReporter`
with its durable store, and a :class:`~ancsync.commands.CommandDispatcher` for the commands topic.
The orchestrator is a :class:`~ancsync.lifecycle.Component`, and so is each part: the
connection and a :class:`~ancsync.supervisor.Supervisor` over the others run in the
orchestrator's one task group. A part that fails is logged, shown in
:meth:`DataSyncOrchestrator.get_status` and restarted after a pause, while the others carry on.
Stopping (cancellation, Ctrl-C, ``aclose()``, leaving ``async with``) stops every part at once,
each through its own shutdown, within ``stop_timeout``: telemetry's waiting records and the
shadow's last report (``status: offline``) are queued, the connection sends what it can while
it waits for them, publishes status "offline" and disconnects, and what could not be sent stays
in the durable store for the next start.

The library installs no signal handlers: the application decides what SIGINT and SIGTERM mean
and cancels (``asyncio.run`` turns Ctrl-C into a cancellation), and the orchestrator stops cleanly
on cancellation.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeAlias

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from ancsync.commands import CommandDispatcher, CommandHandler
from ancsync.config import Settings, default_data_dir
from ancsync.connection import IoTConnection
from ancsync.durable.store import DurableStore
from ancsync.emergency import EmergencyReporter
from ancsync.errors import ConfigError, NotStarted
from ancsync.jobs import DeviceJobs, Job, JobHandler
from ancsync.lifecycle import Component
from ancsync.models import AncMetrics, AudioMetrics, Command, EmergencyEvent, SystemMetrics, utc_now
from ancsync.provisioning.rotation import (
    ROTATION_JOB_OPERATION,
    CertificateRotator,
    finish_interrupted_rotation,
)
from ancsync.shadow import DeviceShadowSync
from ancsync.status import OrchestratorStatus
from ancsync.supervisor import Supervisor
from ancsync.telemetry import TelemetryPublisher
from ancsync.topics import commands_topic

__all__ = ["DataSyncOrchestrator", "DesiredStateHandler"]

log = logging.getLogger("ancsync.orchestrator")

Applied: TypeAlias = Mapping[str, Any] | BaseModel | None
DesiredStateHandler: TypeAlias = Callable[[dict[str, Any]], Awaitable[Applied] | Applied]
"""``handler(changes) -> applied``: gets the valid desired ANC values that differ from reported
(``anc_enabled``, ``anc_intensity``, ``anc_algorithm``), returns those it really applied."""

EMERGENCY_ACK = "emergency_ack"
"""The command the cloud's emergency handler sends back for each event it recorded."""


class DataSyncOrchestrator(Component):
    """Keep one ANC device in sync: shadow state, telemetry, emergencies and commands.

    ::

        async with DataSyncOrchestrator(
            thing_name="anc-device-001",
            endpoint="xxxxx-ats.iot.us-east-1.amazonaws.com",
            cert_path="cert.pem",
            key_path="private.key",
            root_ca_path="AmazonRootCA1.pem",
        ) as orchestrator:
            await orchestrator.update_anc_state(enabled=True, intensity=0.85, algorithm="nlms")
            orchestrator.publish_metrics(anc_metrics={"latency_ms": 35.2, ...})
            await orchestrator.run_forever()

    Settings not given as arguments come from the environment (``IOT_ENDPOINT``...), then from
    the JSON ``config_file`` (or ``ANCSYNC_CONFIG``), then defaults; or pass ready ``settings``.
    ``data_dir`` holds the durable outbox: emergencies and telemetry batches survive restarts.
    Without it, emergencies are still durable, in ``~/.local/state/ancsync/<thing>`` (or under
    ``$XDG_STATE_HOME``), and telemetry is kept in memory only.
    ``stop_timeout`` bounds the shutdown; ``connection_options`` go to
    :class:`~ancsync.connection.IoTConnection` (``keep_alive``, ``reconnect``, ``rate_limit``...).

    Raises:
        ConfigError: a setting is missing or not allowed (named, with what is allowed).
        StorageError: the data directory cannot be used.
    """

    def __init__(
        self,
        thing_name: str | None = None,
        endpoint: str | None = None,
        cert_path: str | Path | None = None,
        key_path: str | Path | None = None,
        root_ca_path: str | Path | None = None,
        *,
        port: int | None = None,
        keep_alive: int | None = None,
        tls: bool | None = None,
        batch_size: int | None = None,
        batch_interval: float | None = None,
        max_buffer_size: int | None = None,
        sync_interval: float | None = None,
        data_dir: str | Path | None = None,
        config_file: str | Path | None = None,
        settings: Settings | None = None,
        firmware_version: str = "unknown",
        stop_timeout: float = 5.0,
        connection_options: Mapping[str, Any] | None = None,
    ) -> None:
        given: dict[str, Any] = {
            "thing_name": thing_name,
            "endpoint": endpoint,
            "cert_path": cert_path,
            "key_path": key_path,
            "root_ca_path": root_ca_path,
            "port": port,
            "keep_alive": keep_alive,
            "tls": tls,
            "batch_size": batch_size,
            "batch_interval": batch_interval,
            "max_buffer_size": max_buffer_size,
            "sync_interval": sync_interval,
            "data_dir": data_dir,
        }
        if settings is None:
            settings = Settings.load(config_file, **given)
        elif config_file is not None or any(value is not None for value in given.values()):
            raise ConfigError(
                "DataSyncOrchestrator got both settings and other settings arguments; put them "
                "all in the settings (Settings.load(...)) or pass only the arguments"
            )
        if stop_timeout <= 0:
            raise ConfigError(f"stop_timeout must be above 0 seconds, got {stop_timeout!r}")
        super().__init__(stop_timeout=stop_timeout)
        self.settings = settings
        self.thing_name = settings.iot.thing_name
        self.firmware_version = firmware_version
        self.connection = IoTConnection(
            settings=settings,
            firmware_version=firmware_version,
            **{"stop_timeout": stop_timeout, **(connection_options or {})},
        )
        # Emergencies are always durable: without a data_dir they go to the user's state
        # directory. Telemetry is durable only in a data_dir the user chose. The file is opened
        # (and locked, and a corrupt one recovered) by run, in a worker thread, not on the loop.
        self.store = DurableStore.in_dir(
            settings.data_dir or default_data_dir(self.thing_name), open_now=False
        )
        self._build_parts(settings, stop_timeout)
        self._started_at: float | None = None
        self._started_iso: str | None = None
        self._ended = False

    def _build_parts(self, settings: Settings, stop_timeout: float) -> None:
        self.shadow = DeviceShadowSync(self.connection, stop_timeout=stop_timeout)
        self.shadow.on_delta(self._apply_desired)
        self.shadow.report_when_stopping(self._offline_report)
        self.telemetry = TelemetryPublisher(
            self.connection,
            batch_size=settings.telemetry.batch_size,
            batch_interval=settings.telemetry.batch_interval,
            max_buffer_size=settings.telemetry.max_buffer_size,
            store=self.store,
            durable=settings.data_dir is not None,
            stop_timeout=stop_timeout,
        )
        self.emergencies = EmergencyReporter(
            self.connection, store=self.store, stop_timeout=stop_timeout
        )
        self.device_jobs = DeviceJobs(self.connection, data_dir=settings.data_dir)
        self.commands = CommandDispatcher()
        self.commands.register(EMERGENCY_ACK, self._on_emergency_ack)
        self.connection.subscribe(commands_topic(self.thing_name), self._on_command, Command)
        self._desired_handler: DesiredStateHandler | None = None
        self._ack_handler: CommandHandler | None = None
        self._cloud_acknowledged: set[str] = set()
        self.supervisor = Supervisor(
            [self.shadow, self.telemetry, self.emergencies, self.device_jobs],
            stop_timeout=stop_timeout,
        )

    @classmethod
    def from_env(cls, **options: Any) -> DataSyncOrchestrator:
        """Build from the environment (``IOT_ENDPOINT``, ``IOT_THING_NAME``...) and the file
        named by ``ANCSYNC_CONFIG``, if set. ``options`` are the other keyword arguments."""
        return cls(**options)

    @classmethod
    def from_config_file(cls, path: str | Path, **options: Any) -> DataSyncOrchestrator:
        """Build from a JSON config file (sections ``iot``, ``telemetry``, ``shadow``);
        environment variables still override it, as in :meth:`Settings.load`."""
        return cls(config_file=path, **options)

    # --- lifecycle ------------------------------------------------------------------------------

    name = "orchestrator"

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Run the connection and the supervised parts; ready at once (offline is fine)."""
        if self._ended:
            raise NotStarted("this orchestrator was already stopped; create a new one")
        await anyio.to_thread.run_sync(self._open_files)
        async with anyio.create_task_group() as tg:
            await tg.start(self.connection.run)
            await tg.start(self.supervisor.run)
            self._started_at = time.monotonic()
            self._started_iso = utc_now()
            self.shadow.report(
                {
                    "status": "online",
                    "device_id": self.thing_name,
                    "firmware_version": self.firmware_version,
                    "uptime": 0,
                    "timestamp": self._started_iso,
                }
            )
            log.info("orchestrator for %s started", self.thing_name)
            task_status.started()

    def _open_files(self) -> None:
        """The start's blocking file work, in one worker thread: open (and lock, maybe recover)
        the store, and finish a certificate switch a stop interrupted."""
        self.store.open()
        iot = self.settings.iot
        if iot.tls and iot.cert_path is not None and iot.key_path is not None:
            finish_interrupted_rotation(iot.cert_path, iot.key_path)

    async def _shutdown(self) -> None:
        # The parts have shut down (they ran in _serve's task group); the store is free.
        self._ended = True
        self.store.close()
        log.info("orchestrator for %s stopped", self.thing_name)

    def _limit_stop(self, deadline: float) -> None:
        super()._limit_stop(deadline)
        self.connection._limit_stop(deadline)
        self.supervisor._limit_stop(deadline)

    def _offline_report(self) -> dict[str, Any]:
        """The shadow's last report when stopping."""
        return {"status": "offline", "uptime": self._uptime(), "timestamp": utc_now()}

    async def run_forever(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled, then stop cleanly (the old SDK's blocking ``run_forever``).

        Starts the orchestrator if it is not running (``await task_group.start(orchestrator.
        run_forever)`` returns once it has). Cancel it from the application, e.g. on SIGTERM;
        ``asyncio.run`` cancels it on Ctrl-C. Already running (``async with``): it waits.
        """
        if not self.running:
            await self.run(task_status=task_status)
            return
        task_status.started()
        await anyio.sleep_forever()

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the connection is up (see :meth:`IoTConnection.wait_connected`).

        Raises:
            ConnectTimeout: not connected within ``timeout`` seconds; names the last error.
            TLSError, NotAuthorized: retrying cannot help until the cloud side is fixed.
        """
        await self.connection.wait_connected(timeout)

    # --- what the control loop calls --------------------------------------------------------------

    async def update_anc_state(
        self,
        enabled: bool | None = None,
        intensity: float | None = None,
        algorithm: str | None = None,
        *,
        wait: bool = False,
        **fields: Any,
    ) -> None:
        """Report ANC state in the shadow (``anc_enabled``, ``anc_intensity``, ``anc_algorithm``
        and any other reported field: ``battery_level=85, noise_type="office"``...).

        Returns at once: reports are coalesced (the latest value per key wins) and sent by the
        shadow task. With ``wait=True`` it waits until the shadow service accepted them.
        ``uptime`` and ``timestamp`` are added.

        Raises:
            InvalidPayload: a value is not allowed (named); nothing is reported.
            PayloadTooLarge: the shadow would pass AWS IoT's 8 KB.
        """
        self._check_not_stopped()
        patch: dict[str, Any] = {
            key: value
            for key, value in (
                ("anc_enabled", enabled),
                ("anc_intensity", intensity),
                ("anc_algorithm", algorithm),
            )
            if value is not None
        }
        patch.update(fields)
        patch.update(uptime=self._uptime(), timestamp=utc_now())
        if wait:
            await self.shadow.update_reported(patch)
        else:
            self.shadow.report(patch)

    def publish_metrics(
        self,
        anc_metrics: Mapping[str, Any] | AncMetrics | None = None,
        audio_metrics: Mapping[str, Any] | AudioMetrics | None = None,
        system_metrics: Mapping[str, Any] | SystemMetrics | None = None,
    ) -> None:
        """Queue metrics records for batched telemetry; returns in microseconds, never waits.

        Each record gets ``timestamp`` now unless it has one. Drops (when the buffer is full
        while offline) are counted in ``get_status()["telemetry"]``.

        Raises:
            InvalidPayload: a record has a bad or missing field (named). Records are queued in
                the order anc, audio, system: those before the bad one are already queued.
        """
        self._check_not_stopped()
        if anc_metrics is not None:
            self.telemetry.publish_anc_metrics(anc_metrics)
        if audio_metrics is not None:
            self.telemetry.publish_audio_metrics(audio_metrics)
        if system_metrics is not None:
            self.telemetry.publish_system_metrics(system_metrics)

    async def report_emergency(
        self,
        event: Mapping[str, Any] | BaseModel | None = None,
        *,
        wait_for_ack: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (only with wait_for_ack)
        **fields: Any,
    ) -> EmergencyEvent:
        """Report an emergency: stored durably before this returns, then sent at QoS 1 ahead of
        everything else, and re-sent until the broker acknowledges it.

        Pass the event as a dict (``{"is_emergency": True, "predicted_class": "fire_alarm",
        "confidence": 0.94, "action": "anc_bypassed"}``) or as keyword arguments. Returns the
        event as sent (with ``event_id`` and ``seq``). ``wait_for_ack`` also waits for the
        broker's acknowledgement (``timeout`` seconds at most).

        Raises:
            InvalidPayload: a field is missing or not allowed (named).
            StorageError, BufferFull: the event could not be stored: it was not reported.
        """
        self._check_not_stopped()
        data = event.model_dump(exclude_unset=True) if isinstance(event, BaseModel) else event
        return await self.emergencies.report_emergency(
            {**(data or {}), **fields}, wait_for_ack=wait_for_ack, timeout=timeout
        )

    def _check_not_stopped(self) -> None:
        # Before it runs is fine (a device queues while it boots); once stopped nothing would
        # ever send it.
        if self._ended:
            raise NotStarted(
                "this orchestrator was stopped; nothing queued now would be sent. Create a new "
                "one (its durable store re-sends what this one left)"
            )

    # --- what the cloud asks for ----------------------------------------------------------------

    def on_desired_state(self, handler: DesiredStateHandler) -> DesiredStateHandler:
        """Apply desired ANC changes with ``handler`` (usable as a decorator).

        ``handler(changes)`` (async or plain) gets the valid desired values that differ from
        what is reported, e.g. ``{"anc_intensity": 0.9}``, and returns what it really applied;
        exactly that is reported. Invalid values never reach it: they are reported in
        ``last_error``. Without a handler nothing is applied (and a warning is logged).
        """
        self._desired_handler = handler
        return handler

    def on_job(
        self, operation: str, model: type[BaseModel] | None = None
    ) -> Callable[[JobHandler], JobHandler]:
        """Handle the AWS IoT jobs whose document's ``operation`` is this one (a decorator).

        ``handler(job)`` gets a :class:`~ancsync.jobs.Job` (``job.document`` validated into
        ``model`` when given) and reports its progress with ``await job.progress(...)`` and
        ``await job.succeed(...)``; a handler that raises fails the job. Status updates are
        durable: they reach AWS IoT after a reconnect or a restart (see :mod:`ancsync.jobs`).
        """
        return self.device_jobs.on(operation, model)

    def enable_rotation(
        self,
        template: str,
        parameters: Mapping[str, str] | None = None,
        *,
        before_expiry: timedelta = timedelta(days=30),
        job_operation: str | None = ROTATION_JOB_OPERATION,
    ) -> CertificateRotator:
        """Rotate this device's certificate ``before_expiry`` ahead of its expiry, and when a
        job whose document's ``operation`` is ``job_operation`` asks for it (``None``: no job).

        ``template`` (with ``parameters``) is the provisioning template that registers the new
        certificate for this same thing; the device policy must allow its topics. Each rotation
        is reported in the shadow (``certificate_id``, ``certificate_rotated_at``). Call it
        before starting the orchestrator.
        """
        rotator = CertificateRotator(
            self.connection,
            template=template,
            parameters=parameters,
            before_expiry=before_expiry,
            on_rotated=self._report_rotation,
            stop_timeout=self.stop_timeout,
        )
        self.supervisor.add(rotator)
        if job_operation is not None:

            async def rotate_on_job(job: Job[Any]) -> None:
                await job.start()
                await job.succeed({"certificate_id": await rotator.rotate()})

            self.device_jobs.on(job_operation)(rotate_on_job)
        return rotator

    def _report_rotation(self, certificate_id: str) -> None:
        self.shadow.report({"certificate_id": certificate_id, "certificate_rotated_at": utc_now()})

    def jobs(self) -> AsyncIterator[Job[Any]]:
        """The jobs no :meth:`on_job` handler takes, one at a time: ``async for job in ...``."""
        return aiter(self.device_jobs)

    def on_command(self, name: str, handler: CommandHandler) -> CommandHandler:
        """Handle the command ``name`` from ``anc/devices/{id}/commands`` with ``handler``.

        ``handler(command)`` (async or plain) gets the :class:`~ancsync.models.Command`
        (``command_id``, ``command``, ``params``, ``issued_at``). Repeats of a ``command_id``
        are ignored; a handler that raises is logged and counted. ``emergency_ack`` is always
        recorded in the status; a handler for it runs as well.
        """
        if name == EMERGENCY_ACK:
            self._ack_handler = handler
        else:
            self.commands.register(name, handler)
        return handler

    async def _apply_desired(self, changes: dict[str, Any]) -> Mapping[str, Any] | None:
        if self._desired_handler is None:
            log.warning(
                "desired %s not applied: register a handler with on_desired_state()", changes
            )
            return None
        result = self._desired_handler(changes)
        applied = await result if inspect.isawaitable(result) else result
        if isinstance(applied, BaseModel):
            applied = applied.model_dump(mode="json", exclude_unset=True)
        if not applied:
            return None
        # Reported with what was applied, so the shadow's uptime is never older than its state.
        return {**applied, "uptime": self._uptime(), "timestamp": utc_now()}

    async def _on_command(self, topic: str, command: Command) -> None:
        await self.commands.dispatch(command)

    async def _on_emergency_ack(self, command: Command) -> None:
        event_id = command.params.get("event_id")
        if isinstance(event_id, str):
            self._cloud_acknowledged.add(event_id)
            log.info("the cloud acknowledged emergency %s", event_id)
        else:
            log.warning(
                "command %s: an emergency_ack without an event_id string (params %.60r); "
                "nothing was recorded as acknowledged",
                command.command_id,
                command.params,
            )
        if self._ack_handler is not None:
            result = self._ack_handler(command)
            if inspect.isawaitable(result):
                await result

    # --- status ---------------------------------------------------------------------------------

    def _uptime(self) -> int:
        return 0 if self._started_at is None else int(time.monotonic() - self._started_at)

    def cloud_acknowledged(self) -> frozenset[str]:
        """The ``event_id`` of every emergency the cloud acknowledged (``emergency_ack``)."""
        return frozenset(self._cloud_acknowledged)

    def get_status(self) -> OrchestratorStatus:
        """Everything worth watching, JSON-serialisable (for logs, health checks, the CLI).

        ``connection`` (state, reconnects, last error, queues), ``shadow`` (version, sync
        counters, ``in_sync``: reported matches desired), ``telemetry`` (records accepted,
        delivered, dropped), ``emergency`` (reported, acknowledged by the broker, pending,
        ``cloud_acknowledged``), ``jobs`` (the current job, updates by outcome), ``commands`` and
        ``components`` (running, restarts, last error).
        """
        state = self.shadow.get_state()
        return {
            "thing_name": self.thing_name,
            "running": self.running,
            "started_at": self._started_iso,
            "uptime_s": self._uptime(),
            "connection": self.connection.get_status(),
            "shadow": {
                **self.shadow.get_status(),
                "desired": state.desired,
                "reported": state.reported,
                "in_sync": not state.delta,
            },
            "telemetry": self.telemetry.get_status(),
            "emergency": {
                **self.emergencies.get_status(),
                "cloud_acknowledged": len(self._cloud_acknowledged),
            },
            "jobs": self.device_jobs.get_status(),
            "commands": self.commands.status(),
            "components": self.supervisor.status(),
        }
