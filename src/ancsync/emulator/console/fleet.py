"""What the console knows about the fleet, built from the messages the operator sees.

:class:`FleetView` is fed every message of ``anc/#`` and every shadow document the operator
reads; it keeps, per thing, its status (online/offline, from the retained status and the last
will), when it was last heard from, its message rate, its shadow, and its telemetry over the
last few minutes; and the emergencies with whether they were acknowledged. It does no I/O:
:meth:`FleetView.snapshot` is what the page shows.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["CHART_METRICS", "FleetView", "ThingView"]

CHART_METRICS: dict[str, tuple[str, str]] = {
    "latency_ms": ("anc", "ANC latency (ms)"),
    "cancellation_db": ("anc", "Cancellation (dB)"),
    "snr_improvement_db": ("anc", "SNR improvement (dB)"),
    "battery_level": ("system", "Battery (%)"),
}
"""The charted metrics: record field -> (telemetry kind, chart title)."""

# Message rates are counted over this many seconds.
_RATE_WINDOW = 10.0
# At most this many points per chart are sent to the page (the newest).
_CHART_POINTS = 600


@dataclass
class ThingView:
    """One thing as the console shows it."""

    name: str
    status: str = "unknown"
    """``online`` or ``offline`` from its retained status (``offline`` is also its will)."""
    firmware_version: str | None = None
    last_seen: float | None = None
    """Epoch seconds of the last message from it."""
    certificate: dict[str, str] = field(default_factory=dict)
    shadow: dict[str, Any] | None = None
    """The last ``get`` answer of its classic shadow (state with delta, metadata, version)."""
    arrivals: deque[float] = field(default_factory=deque)
    series: dict[str, deque[tuple[float, float]]] = field(
        default_factory=lambda: {metric: deque() for metric in CHART_METRICS}
    )

    def rate(self, now: float) -> float:
        """Messages per second from this thing over the last ten seconds."""
        return sum(1 for at in self.arrivals if at > now - _RATE_WINDOW) / _RATE_WINDOW


class FleetView:
    """The fleet as seen by the operator (see the module docstring).

    ``window`` is how many seconds of telemetry the charts keep; ``certificate_of(thing)``
    describes a thing's certificate (CN, serial, expiry) for the things table.
    """

    def __init__(
        self,
        things: Iterable[str],
        *,
        window: float = 300.0,
        certificate_of: Callable[[str], dict[str, str]] = lambda thing: {},
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self._certificate_of = certificate_of
        self._clock = clock
        self.things: dict[str, ThingView] = {}
        self.emergencies: dict[str, dict[str, Any]] = {}
        # Overlapping subscriptions (the MQTT test client's and the console's own) deliver a
        # batch more than once: count each msg_id once.
        self._recent_batches: deque[str] = deque(maxlen=1000)
        for thing in things:
            self.thing(thing)

    def thing(self, name: str) -> ThingView:
        """The view of ``name``, created the first time it is mentioned."""
        view = self.things.get(name)
        if view is None:
            view = self.things[name] = ThingView(name, certificate=self._certificate_of(name))
        return view

    def on_message(self, topic: str, payload: Any) -> bool:
        """Take one message of ``anc/#``; whether it changed what the page shows."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != "anc" or not isinstance(payload, dict):
            return False
        _, area, thing_name, leaf = parts
        if area == "telemetry":
            if payload.get("msg_id") in self._recent_batches:
                return False
            self._recent_batches.append(str(payload.get("msg_id")))
            self._heard(thing_name)
            self._on_telemetry(thing_name, leaf, payload)
            return True
        if area != "devices":
            return False
        if leaf == "status":
            view = self.thing(thing_name)
            view.status = str(payload.get("status", "unknown"))
            view.firmware_version = payload.get("firmware_version") or view.firmware_version
            self._heard(thing_name)
            return True
        if leaf == "emergency" and isinstance(payload.get("event_id"), str):
            self._heard(thing_name)
            self.add_emergency(payload)
            return True
        if leaf == "commands" and payload.get("command") == "emergency_ack":
            event_id = (payload.get("params") or {}).get("event_id")
            if event_id in self.emergencies:
                self.emergencies[event_id]["acknowledged"] = True
                return True
        return False

    def add_emergency(self, event: dict[str, Any]) -> None:
        """Record an emergency event (a repeat of its ``event_id`` keeps its acknowledgement)."""
        known = self.emergencies.get(event["event_id"], {})
        self.emergencies[event["event_id"]] = {
            **event,
            "acknowledged": known.get("acknowledged", False),
        }

    def on_shadow(self, thing_name: str, document: dict[str, Any]) -> None:
        """Take the answer of a shadow ``get`` for ``thing_name``."""
        self.thing(thing_name).shadow = document

    def _heard(self, thing_name: str) -> None:
        now = self._clock()
        view = self.thing(thing_name)
        view.last_seen = now
        view.arrivals.append(now)
        while view.arrivals and view.arrivals[0] <= now - _RATE_WINDOW:
            view.arrivals.popleft()

    def _on_telemetry(self, thing_name: str, kind: str, batch: dict[str, Any]) -> None:
        records = batch.get("records")
        if not isinstance(records, list):
            return
        view = self.thing(thing_name)
        oldest = self._clock() - self.window
        for metric, (metric_kind, _) in CHART_METRICS.items():
            if metric_kind != kind:
                continue
            points = view.series[metric]
            for record in records:
                value = record.get(metric) if isinstance(record, dict) else None
                at = _epoch(record.get("timestamp")) if isinstance(record, dict) else None
                if isinstance(value, int | float) and at is not None:
                    points.append((at, float(value)))
            while points and points[0][0] < oldest:
                points.popleft()

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, JSON-serialisable."""
        now = self._clock()
        return {
            "now": now,
            "window": self.window,
            "metrics": {metric: title for metric, (_, title) in CHART_METRICS.items()},
            "things": [
                {
                    "name": view.name,
                    "status": view.status,
                    "firmware_version": view.firmware_version,
                    "last_seen": view.last_seen,
                    "rate": round(view.rate(now), 2),
                    "certificate": view.certificate,
                    "shadow": view.shadow,
                    "series": {
                        metric: list(points)[-_CHART_POINTS:]
                        for metric, points in view.series.items()
                    },
                }
                for view in self.things.values()
            ],
            "emergencies": sorted(
                self.emergencies.values(), key=lambda event: str(event.get("timestamp"))
            ),
        }


def _epoch(timestamp: Any) -> float | None:
    """Epoch seconds of an ISO 8601 record timestamp, or None if it is not one."""
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None
