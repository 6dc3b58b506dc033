"""A busy device for the Ctrl-C test, configured by environment variables only.

It runs an orchestrator, publishes ANC metrics as fast as a control loop may (yielding now and
then) and reports an emergency every 500 records, printing each ``event_id`` once reported. It
prints "running" once connected. On Ctrl-C, ``asyncio.run`` cancels it; once the orchestrator has
stopped it prints its telemetry counters as one JSON line and exits with 130.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from ancsync import DataSyncOrchestrator, utc_now


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(device: DataSyncOrchestrator) -> None:
    async with device:
        await device.wait_connected(30)
        say("running")
        n = 0
        while True:
            device.publish_metrics(
                anc_metrics={
                    "latency_ms": 30 + n % 10,
                    "cancellation_db": 40.0,
                    "snr_improvement_db": 35.0,
                    "timestamp": utc_now(),
                }
            )
            n += 1
            if n % 500 == 0:
                event = await device.report_emergency(
                    is_emergency=True, predicted_class="siren", confidence=0.9, action="bypass"
                )
                say(f"emergency {event.event_id}")
            if n % 50 == 0:
                await asyncio.sleep(0.001)  # ok: the control loop's tick, not a wait


if __name__ == "__main__":
    orchestrator = DataSyncOrchestrator(
        batch_size=50, batch_interval=0.05, max_buffer_size=100_000, stop_timeout=3.0
    )
    try:
        asyncio.run(main(orchestrator))
    except KeyboardInterrupt:
        status: dict[str, Any] = dict(orchestrator.get_status()["telemetry"]["records"]["anc"])
        say(orjson.dumps({"anc": status}).decode())
        sys.exit(130)
