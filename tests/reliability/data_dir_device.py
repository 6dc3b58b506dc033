"""A device process for the data-directory tests, configured by environment variables only.

It runs an orchestrator (its data directory is ``ANCSYNC_DATA_DIR``) and takes one command per
line on stdin, answering each with one line on stdout:

- ``emergency``: report one; ``emergency <event_id> <seq>``, or ``refused <error class>: <text>``
- ``metrics <n>``: queue ``n`` ANC records; ``queued <n>``
- ``status``: ``status <get_status() as JSON>``

It prints ``ready`` once the orchestrator runs (connected or not). At the end of stdin it stops
cleanly (what is unsent is stored) and exits 0. If the orchestrator cannot start (its store is
opened when it starts) it prints ``error <error class>: <text>`` and exits 3.
"""

from __future__ import annotations

import logging
import sys

import anyio
import orjson

from ancsync import AncSyncError, BackoffPolicy, DataSyncOrchestrator, utc_now

CANNOT_START = 3


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve(device: DataSyncOrchestrator) -> None:
    async with device:
        say("ready")
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            match line.split():
                case ["emergency"]:
                    try:
                        event = await device.report_emergency(
                            is_emergency=True,
                            predicted_class="fire_alarm",
                            confidence=0.94,
                            action="anc_bypassed",
                        )
                    except AncSyncError as exc:
                        say(f"refused {type(exc).__name__}: {exc}")
                    else:
                        say(f"emergency {event.event_id} {event.seq}")
                case ["metrics", count]:
                    for i in range(int(count)):
                        device.publish_metrics(
                            anc_metrics={
                                "latency_ms": 30.0 + i % 10,
                                "cancellation_db": 40.0,
                                "snr_improvement_db": 35.0,
                                "timestamp": utc_now(),
                            }
                        )
                    say(f"queued {count}")
                case ["status"]:
                    say("status " + orjson.dumps(device.get_status()).decode())
                case _:
                    say(f"unknown command {line.strip()!r}")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = DataSyncOrchestrator(
            batch_size=20,
            batch_interval=0.1,
            stop_timeout=2.0,
            connection_options={"reconnect": BackoffPolicy(base=0.05, cap=0.2)},
        )
        anyio.run(serve, device)
    except AncSyncError as exc:  # before "ready": once running, each command answers for itself
        say(f"error {type(exc).__name__}: {exc}")
        return CANNOT_START
    return 0


if __name__ == "__main__":
    sys.exit(main())
