"""FleetView: what the console shows, built from the operator's messages (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

from ancsync.emulator.console.fleet import FleetView

THING = "anc-device-001"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def batch(msg_id: str, kind: str, records: list[dict[str, object]]) -> dict[str, object]:
    return {"device_id": THING, "kind": kind, "msg_id": msg_id, "seq": 0, "records": records}


def test_status_and_the_last_will_set_online_and_offline() -> None:
    fleet = FleetView([THING], clock=Clock(1000.0))
    online = {"device_id": THING, "status": "online", "firmware_version": "1.2.3"}
    assert fleet.on_message(f"anc/devices/{THING}/status", online)
    assert fleet.things[THING].status == "online"
    assert fleet.things[THING].last_seen == 1000.0
    assert fleet.on_message(f"anc/devices/{THING}/status", {"status": "offline"})
    assert fleet.things[THING].status == "offline"
    assert fleet.things[THING].firmware_version == "1.2.3"  # the will carries none


def test_telemetry_is_charted_once_per_batch_and_only_over_the_window() -> None:
    clock = Clock(10_000.0)
    fleet = FleetView([THING], window=60.0, clock=clock)
    old = {"timestamp": iso(9_900.0), "latency_ms": 9.0, "cancellation_db": 1.0,
           "snr_improvement_db": 1.0}  # fmt: skip
    new = {"timestamp": iso(9_990.0), "latency_ms": 4.5, "cancellation_db": 30.0,
           "snr_improvement_db": 20.0}  # fmt: skip
    topic = f"anc/telemetry/{THING}/anc"
    assert fleet.on_message(topic, batch("b1", "anc", [old, new]))
    assert not fleet.on_message(topic, batch("b1", "anc", [old, new]))  # a second delivery
    series = fleet.snapshot()["things"][0]["series"]
    assert series["latency_ms"] == [(9_990.0, 4.5)]
    assert series["battery_level"] == []
    system = {"timestamp": iso(9_995.0), "battery_level": 88.0, "cpu_usage": 5.0}
    fleet.on_message(f"anc/telemetry/{THING}/system", batch("b2", "system", [system]))
    assert fleet.snapshot()["things"][0]["series"]["battery_level"] == [(9_995.0, 88.0)]
    assert fleet.snapshot()["things"][0]["rate"] == 0.2  # two batches in ten seconds


def test_an_emergency_stays_acknowledged_when_delivered_again() -> None:
    fleet = FleetView([THING])
    event = {"event_id": "e1", "device_id": THING, "timestamp": iso(1.0)}
    fleet.on_message(f"anc/devices/{THING}/emergency", event)
    ack = {"command": "emergency_ack", "params": {"event_id": "e1"}, "command_id": "c1"}
    assert fleet.on_message(f"anc/devices/{THING}/commands", ack)
    fleet.on_message(f"anc/devices/{THING}/emergency", event)  # a retry of the device
    [shown] = fleet.snapshot()["emergencies"]
    assert shown["acknowledged"] is True


def test_messages_that_are_not_the_fleets_change_nothing() -> None:
    fleet = FleetView([THING])
    assert not fleet.on_message("anc/console-test/hello", {"a": 1})
    assert not fleet.on_message(f"anc/devices/{THING}/status", "not an object")
    assert not fleet.on_message(f"anc/devices/{THING}/commands", {"command": "set_anc"})
