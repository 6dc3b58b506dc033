"""A device process for the crash test, configured by environment variables only.

It reports emergency events one after another and prints each ``event_id`` on its own line once
``report_emergency`` has returned (the moment the SDK promises the event is safe), then flushes.
``python crash_device.py N`` reports N events (-1: until killed) and then keeps running, so the
reporter can deliver what it, or a killed process before it, stored.
"""

from __future__ import annotations

import sys

import anyio

from ancsync import BackoffPolicy, DurableStore, EmergencyReporter, IoTConnection, Settings


async def main(count: int) -> None:
    settings = Settings.load()
    assert settings.data_dir is not None, "set ANCSYNC_DATA_DIR"
    store = DurableStore.in_dir(settings.data_dir)
    async with (
        IoTConnection(settings=settings, reconnect=BackoffPolicy(base=0.05, cap=0.2)) as iot,
        EmergencyReporter(iot, store=store) as reporter,
    ):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        reported = 0
        while count < 0 or reported < count:
            event = await reporter.report_emergency(
                {
                    "is_emergency": True,
                    "predicted_class": "fire_alarm",
                    "confidence": 0.94,
                    "action": "anc_bypassed",
                }
            )
            sys.stdout.write(event.event_id + "\n")
            sys.stdout.flush()
            reported += 1
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]))
