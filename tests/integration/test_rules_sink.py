"""The rules sink behind the running emulator: telemetry and emergencies from real TLS clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from helpers import device_client

from ancsync.emulator.rules import RulesSink, SeqGap
from ancsync.emulator.server import Emulator
from ancsync.errors import StorageError

DEVICE = "anc-device-001"
OTHER = "anc-device-002"
TIMEOUT = 10


def batch(seq: int, msg_id: str | None = None, kind: str = "anc", records: int = 2) -> bytes:
    return orjson.dumps(
        {
            "device_id": DEVICE,
            "kind": kind,
            "msg_id": msg_id or f"m-{kind}-{seq}",
            "seq": seq,
            "sent_at": "2025-11-16T14:30:00Z",
            "records": [{"timestamp": "2025-11-16T14:30:00Z", "level": i} for i in range(records)],
        }
    )


def emergency(seq: int, event_id: str | None = None, device_id: str = DEVICE) -> bytes:
    return orjson.dumps(
        {
            "device_id": device_id,
            "event_id": event_id or f"e-{seq}",
            "seq": seq,
            "timestamp": "2025-11-16T14:30:00Z",
            "is_emergency": True,
            "predicted_class": "siren",
            "confidence": 0.93,
            "action": "pass_through",
            "severity": "high",
        }
    )


def stored(count: int, key: str) -> Any:
    return lambda sink: sum(sink.stats()[k] for k in key.split("+")) >= count


async def test_a_redelivered_batch_is_stored_once(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async with device_client(emulator.port, emulator.certs, DEVICE) as client:
            await client.publish(f"anc/telemetry/{DEVICE}/anc", batch(0, "same"), qos=1)
            await client.publish(f"anc/telemetry/{DEVICE}/anc", batch(0, "same"), qos=1)
            await emulator.rules.wait_for(stored(2, "telemetry_batches+duplicates"))
    rules = emulator.rules
    assert rules.stats()["duplicates"] == 1
    [only] = rules.telemetry_batches()
    assert (only.msg_id, only.device_id, only.kind, only.seq) == ("same", DEVICE, "anc", 0)
    assert only.records == [
        {"timestamp": "2025-11-16T14:30:00Z", "level": 0},
        {"timestamp": "2025-11-16T14:30:00Z", "level": 1},
    ]
    assert rules.record_count() == 2


async def test_a_skipped_seq_is_reported_per_device_and_stream(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            device_client(emulator.port, emulator.certs, DEVICE) as client,
            device_client(emulator.port, emulator.certs, OTHER) as other,
        ):
            for seq in (0, 1, 4):
                await client.publish(f"anc/telemetry/{DEVICE}/anc", batch(seq), qos=1)
            for seq in (0, 1):  # a different stream of the same device: no gap of its own
                await client.publish(
                    f"anc/telemetry/{DEVICE}/system", batch(seq, kind="system"), qos=1
                )
            for seq in (5, 7):
                await client.publish(f"anc/devices/{DEVICE}/emergency", emergency(seq), qos=1)
            await other.publish(
                f"anc/devices/{OTHER}/emergency", emergency(0, device_id=OTHER), qos=1
            )
            await emulator.rules.wait_for(stored(8, "telemetry_batches+emergencies"))
    rules = emulator.rules
    assert rules.gaps() == [
        SeqGap(DEVICE, "emergency", 6, 6),
        SeqGap(DEVICE, "telemetry/anc", 2, 3),
    ]
    assert rules.gaps(OTHER) == []
    assert [e.seq for e in rules.emergencies(DEVICE)] == [5, 7]
    assert rules.emergencies(OTHER)[0].payload["predicted_class"] == "siren"
    assert rules.record_count(DEVICE, "system") == 4
    assert [b.seq for b in rules.telemetry_batches(kind="anc")] == [0, 1, 4]


async def test_an_emergency_is_stored_whole_and_once(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async with device_client(emulator.port, emulator.certs, DEVICE) as client:
            for _ in range(3):  # QoS 1 re-deliveries of one event
                await client.publish(f"anc/devices/{DEVICE}/emergency", emergency(0, "ev"), qos=1)
            await emulator.rules.wait_for(stored(3, "emergencies+duplicates"))
    [event] = emulator.rules.emergencies()
    assert event.payload == orjson.loads(emergency(0, "ev"))
    assert emulator.rules.stats()["duplicates"] == 2


async def test_a_payload_without_its_keys_is_refused_and_counted(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async with device_client(emulator.port, emulator.certs, DEVICE) as client:
            topic = f"anc/telemetry/{DEVICE}/anc"
            await client.publish(topic, b"not json", qos=1)
            await client.publish(topic, orjson.dumps({"seq": 1, "records": []}), qos=1)
            await client.publish(f"anc/devices/{DEVICE}/emergency", b'{"event_id": "x"}', qos=1)
            await client.publish(topic, batch(1), qos=1)  # the connection is still served
            await emulator.rules.wait_for(stored(1, "telemetry_batches"))
    assert emulator.rules.stats()["invalid"] == 3
    assert [b.seq for b in emulator.rules.telemetry_batches()] == [1]


async def test_the_database_file_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "state" / "rules.db"
    with anyio.fail_after(TIMEOUT):
        for _ in range(2):
            async with Emulator(tmp_path / "certs", [DEVICE], db_path=db) as emulator:
                async with device_client(emulator.port, emulator.certs, DEVICE) as client:
                    await client.publish(f"anc/telemetry/{DEVICE}/anc", batch(0), qos=1)
                    await emulator.rules.wait_for(stored(1, "telemetry_batches+duplicates"))
                stats = emulator.rules.stats()
    assert stats["duplicates"] == 1  # the second run recognised the first run's batch
    async with RulesSink(db) as reopened:
        assert len(reopened.telemetry_batches()) == 1


async def test_an_unwritable_database_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageError, match=r"cannot open the rules database.*writable --db"):
        async with RulesSink(blocker / "rules.db"):
            pass
    with pytest.raises(StorageError, match=r"cannot open the rules database.*writable --db"):
        async with Emulator(tmp_path / "certs", [DEVICE], db_path=blocker / "rules.db"):
            pass
