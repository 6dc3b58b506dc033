"""Ctrl-C, a real SIGINT, to a device process under heavy telemetry with emergencies under way.

It must stop within its deadline and lose nothing it accepted: every record is in the cloud
(the emulator's rules sink) or in the device's durable store, and so is every emergency whose
report returned.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import orjson
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from ancsync.durable.store import DurableStore
from ancsync.emulator.server import Emulator

THING = "anc-device-001"

pytestmark = pytest.mark.slow

DEVICE_SCRIPT = Path(__file__).with_name("interrupt_device.py")
STOP_TIMEOUT = 3.0  # the device's stop_timeout


async def test_ctrl_c_under_load_loses_nothing_accepted(tmp_path: Path) -> None:
    data_dir = tmp_path / "device-data"
    with anyio.fail_after(60):
        async with Emulator(tmp_path / "certs", things=(THING,)) as emulator:
            environment = {
                **emulator.device_settings(THING),
                "ANCSYNC_DATA_DIR": str(data_dir),
                "PATH": os.environ.get("PATH", ""),
            }
            process = await anyio.open_process(
                [sys.executable, str(DEVICE_SCRIPT)], env=environment, stderr=None
            )
            async with process:
                assert process.stdout is not None
                lines = BufferedByteReceiveStream(process.stdout)
                assert (await lines.receive_until(b"\n", 1000)) == b"running"
                # Under load: records reach the cloud and emergencies are being reported.
                await emulator.rules.wait_for(lambda sink: len(sink.emergencies(THING)) >= 2)
                process.send_signal(signal.SIGINT)
                with anyio.fail_after(STOP_TIMEOUT + 5):  # the deadline, and an interpreter exit
                    code = await process.wait()
                output = []
                while True:
                    try:
                        output.append((await lines.receive_until(b"\n", 1 << 20)).decode())
                    except (anyio.EndOfStream, anyio.IncompleteRead):
                        break
            assert code == 130
            reported = {line.split()[1] for line in output if line.startswith("emergency ")}
            anc = orjson.loads(output[-1])["anc"]

            store = DurableStore.in_dir(data_dir)
            try:
                stored_records = sum(m.records for m in store.pending("telemetry"))
                stored_events = {m.msg_id for m in store.pending("emergency")}
            finally:
                store.close()
            await emulator.rules.wait_for(
                lambda sink: sink.record_count(THING, "anc") >= anc["delivered"]
            )
            in_cloud = {event.event_id for event in emulator.rules.emergencies(THING)}
            cloud_records = emulator.rules.record_count(THING, "anc")
            gaps = emulator.rules.gaps(THING)

    assert anc["accepted"] > 0
    assert (anc["dropped"], anc["failed"], anc["unsent"], anc["unconfirmed"]) == (0, 0, 0, 0)
    assert anc["delivered"] + anc["stored"] == anc["accepted"]
    assert cloud_records == anc["delivered"]
    assert stored_records == anc["stored"]
    assert gaps == []
    assert reported <= in_cloud | stored_events  # every returned report: in the cloud or on disk
    assert not (in_cloud & stored_events)
