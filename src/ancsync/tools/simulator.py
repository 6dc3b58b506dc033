"""A simulated ANC device: the control loop that ``ancsync demo`` and ``ancsync simulate`` run.

:class:`SimulatedAncDevice` drives a :class:`~ancsync.orchestrator.DataSyncOrchestrator` the way
real firmware would: it applies desired ANC settings (and reports what it applied), publishes
ANC, audio and system metrics at a steady rate, drains its battery, and reports an emergency
when its classifier "hears" a fire alarm. The numbers are plausible, not physical.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ancsync.errors import ConfigError, ConnectError
from ancsync.models import Command, EmergencyEvent
from ancsync.orchestrator import DataSyncOrchestrator

__all__ = ["AncState", "SimulatedAncDevice", "run_simulation"]

log = logging.getLogger("ancsync.tools.simulator")

ALGORITHMS = frozenset({"nlms", "fxlms", "lms", "rls"})
"""The adaptive filters the simulated DSP supports; anything else is refused."""

NOISE_TYPES = ("office", "street", "cabin", "cafe")


@dataclass
class AncState:
    """What the simulated DSP is running right now."""

    enabled: bool = True
    intensity: float = 0.7
    algorithm: str = "nlms"
    battery_level: float = 100.0
    noise_type: str = "office"


@dataclass
class SimulatedAncDevice:
    """The control loop of one simulated ANC device, on top of ``orchestrator``.

    ``rate`` is the ANC metrics rate in records per second (audio metrics go out at a fifth of
    it, system metrics at a tenth). ``on_event(text)`` hears what the device does, for a UI.
    """

    orchestrator: DataSyncOrchestrator
    rate: float = 10.0
    on_event: Callable[[str], None] = lambda text: None
    state: AncState = field(default_factory=AncState)
    emergencies: list[EmergencyEvent] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    """The ``event_id`` of each emergency the cloud acknowledged."""
    _random: random.Random = field(default_factory=lambda: random.Random(7))
    _ack_changed: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be above 0 records per second, got {self.rate!r}")
        self.orchestrator.on_desired_state(self.apply_desired)
        self.orchestrator.on_command("emergency_ack", self._on_emergency_ack)

    async def apply_desired(self, changes: dict[str, Any]) -> dict[str, Any]:
        """The desired-state handler: apply what the DSP supports, return exactly that."""
        applied: dict[str, Any] = {}
        if "anc_enabled" in changes:
            self.state.enabled = applied["anc_enabled"] = changes["anc_enabled"]
        if "anc_intensity" in changes:
            self.state.intensity = applied["anc_intensity"] = changes["anc_intensity"]
        algorithm = changes.get("anc_algorithm")
        if algorithm in ALGORITHMS:
            self.state.algorithm = applied["anc_algorithm"] = algorithm
        elif algorithm is not None:
            self.on_event(f"device refused algorithm {algorithm!r} (supports {sorted(ALGORITHMS)})")
        if applied:
            self.applied.append(applied)
            shown = ", ".join(f"{key}={value}" for key, value in applied.items())
            self.on_event(f"device applied {shown} and reported it")
        return applied

    def _on_emergency_ack(self, command: Command) -> None:
        event_id = command.params.get("event_id")
        if isinstance(event_id, str):
            self.acknowledged.add(event_id)
            self._ack_changed.set()
            self._ack_changed = anyio.Event()
        self.on_event(f"device got the cloud's emergency_ack for {event_id}")

    async def wait_acknowledged(self) -> None:
        """Wait until the cloud acknowledged every emergency this device reported."""
        while not {event.event_id for event in self.emergencies} <= self.acknowledged:
            await self._ack_changed.wait()

    async def report_state(self) -> None:
        """Report the whole ANC state in the shadow (coalesced with anything pending)."""
        await self.orchestrator.update_anc_state(
            enabled=self.state.enabled,
            intensity=self.state.intensity,
            algorithm=self.state.algorithm,
            battery_level=round(self.state.battery_level, 1),
            noise_type=self.state.noise_type,
            emergency_detected=False,
        )

    async def fire_alarm(self) -> EmergencyEvent:
        """The classifier hears a fire alarm: bypass ANC and report the emergency."""
        event = await self.orchestrator.report_emergency(
            is_emergency=True,
            predicted_class="fire_alarm",
            confidence=0.94,
            action="anc_bypassed",
        )
        self.emergencies.append(event)
        await self.orchestrator.update_anc_state(emergency_detected=True, noise_type="alarm")
        self.on_event(f"fire alarm detected: emergency {event.event_id} stored and sent")
        return event

    async def alarm_over(self) -> None:
        """The alarm stopped: back to normal."""
        self.state.noise_type = "office"
        await self.orchestrator.update_anc_state(emergency_detected=False, noise_type="office")

    async def run(self) -> None:
        """Publish metrics at ``rate`` until cancelled. Each call returns in microseconds."""
        period = 1.0 / self.rate
        tick = 0
        next_at = anyio.current_time()
        while True:
            self._publish(tick)
            tick += 1
            next_at += period
            await anyio.sleep(max(0.0, next_at - anyio.current_time()))

    def _publish(self, tick: int) -> None:
        noise = self._random.gauss(0.0, 0.8)
        level = self.state.intensity if self.state.enabled else 0.0
        anc = {
            "latency_ms": round(30.0 + 8.0 * self._random.random(), 2),
            "cancellation_db": round(12.0 + 35.0 * level + noise, 2),
            "snr_improvement_db": round(10.0 + 30.0 * level + noise, 2),
        }
        audio = system = None
        if tick % 5 == 0:
            audio = {
                "noise_type": self.state.noise_type,
                "confidence": round(0.8 + 0.19 * self._random.random(), 3),
                "rms": round(0.3 + 0.3 * self._random.random(), 3),
            }
        if tick % 10 == 0:
            self.state.battery_level = max(0.0, self.state.battery_level - 0.05)
            system = {
                "battery_level": round(self.state.battery_level, 2),
                "cpu_usage": round(35.0 + 15.0 * self._random.random(), 1),
                "memory_usage": round(60.0 + 5.0 * self._random.random(), 1),
                "temperature": round(40.0 + 3.0 * self._random.random(), 1),
            }
        self.orchestrator.publish_metrics(
            anc_metrics=anc, audio_metrics=audio, system_metrics=system
        )


async def run_simulation(
    device: SimulatedAncDevice,
    *,
    duration: float | None = None,
    fire_alarm_at: float | None = None,
    connect_timeout: float | None = None,
    shadow_interval: float | None = None,
) -> None:
    """Start ``device.orchestrator``, run the device until ``duration`` passes (or until
    cancelled), hear a fire alarm after ``fire_alarm_at`` seconds if asked, then stop cleanly.
    With ``shadow_interval``, the device reports its whole state again every that many seconds.

    ``device.on_event`` hears the connection's story too: connected, failed, lost, retrying.
    With ``connect_timeout``, the simulation stops as soon as the connection fails in a way
    retrying cannot fix (a refused certificate or key), or when it has not connected within
    ``connect_timeout`` seconds.

    Raises:
        ConnectError: (with ``connect_timeout``) the device could not connect; the message names
            the last connection error.
        ConfigError: (with ``connect_timeout``) the certificate or key cannot be used.
    """
    orchestrator = device.orchestrator
    failure: ConnectError | ConfigError | None = None
    async with orchestrator, anyio.create_task_group() as tasks:

        async def require_connection() -> None:
            nonlocal failure
            try:
                await orchestrator.wait_connected(connect_timeout)
            except (ConnectError, ConfigError) as exc:
                failure = exc
                tasks.cancel_scope.cancel()

        if connect_timeout is not None:
            tasks.start_soon(require_connection)
        tasks.start_soon(_narrate_connection, device)
        await device.report_state()
        tasks.start_soon(device.run)
        if fire_alarm_at is not None:
            tasks.start_soon(_alarm_after, device, fire_alarm_at)
        if shadow_interval is not None:
            tasks.start_soon(_report_every, device, shadow_interval)
        if duration is None:
            await anyio.sleep_forever()
        else:
            await anyio.sleep(duration)
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _narrate_connection(device: SimulatedAncDevice) -> None:
    iot = device.orchestrator.settings.iot
    connection = device.orchestrator.connection
    with connection.events() as events:
        # Connected before the stream was opened: its "connected" event is not in it.
        was_connected = connection.connected
        if was_connected:
            device.on_event(f"connected to {iot.endpoint}:{iot.port}")
        async for event in events:
            if event.kind == "connected":
                device.on_event(f"connected to {iot.endpoint}:{iot.port}")
            elif event.kind == "disconnected" and event.retry_in is not None:
                what = "connection lost" if was_connected else "connection failed"
                device.on_event(f"{what}: {event.error}; retrying in {event.retry_in:.1f} s")
            was_connected = event.kind == "connected"


async def _report_every(device: SimulatedAncDevice, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        await device.report_state()


async def _alarm_after(device: SimulatedAncDevice, delay: float) -> None:
    await anyio.sleep(delay)
    await device.fire_alarm()
