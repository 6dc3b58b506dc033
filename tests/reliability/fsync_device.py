"""Run under strace by test_fsync.py: build an orchestrator on a data directory, then, after a
marker, either report one emergency or queue one metrics record (the baseline)."""

from __future__ import annotations

import os
import sys

import anyio

from ancsync import DataSyncOrchestrator

MARKER = b"--- measured from here ---"


async def main(data_dir: str, what: str) -> None:
    device = DataSyncOrchestrator(
        thing_name="anc-device-001", endpoint="127.0.0.1", tls=False, data_dir=data_dir
    )
    os.write(2, MARKER)  # strace logs this write: only the system calls after it count
    if what == "emergency":
        await device.report_emergency(
            is_emergency=True, predicted_class="fire_alarm", confidence=0.94, action="anc_bypassed"
        )
    else:
        device.publish_metrics(
            anc_metrics={"latency_ms": 35.2, "cancellation_db": 42.5, "snr_improvement_db": 38.2}
        )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
