"""crash_device.py, written against ancsync.blocking from a plain thread (no async code).

``python blocking_crash_device.py N`` prints "ready", then reports N emergencies (-1: until
killed), printing each ``event_id`` once ``report_emergency`` has returned, then keeps running.
"""

from __future__ import annotations

import signal
import sys

from ancsync import BackoffPolicy
from ancsync.blocking import DataSyncOrchestrator


def main(count: int) -> None:
    orchestrator = DataSyncOrchestrator.from_env(
        connection_options={"reconnect": BackoffPolicy(base=0.05, cap=0.2)}
    )
    with orchestrator:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        reported = 0
        while count < 0 or reported < count:
            event = orchestrator.report_emergency(
                is_emergency=True,
                predicted_class="fire_alarm",
                confidence=0.94,
                action="anc_bypassed",
            )
            sys.stdout.write(event.event_id + "\n")
            sys.stdout.flush()
            reported += 1
        signal.pause()  # idle until the test's signal ends the process


if __name__ == "__main__":
    main(int(sys.argv[1]))
