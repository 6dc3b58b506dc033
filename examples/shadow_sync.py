"""Keep ANC state in step with the Device Shadow: report it, and apply what the cloud desires.

    python examples/shadow_sync.py     # a local emulator, or AWS IoT with IOT_* set

Locally, the example also plays the cloud and asks for a stronger intensity. Against AWS IoT,
change ``desired`` in the console (or ``ancsync shadow update``) within 30 seconds.
"""

from __future__ import annotations

import sys

import anyio
from _local import THING, target

from ancsync import DeviceShadowSync, IoTConnection, ShadowOperator


async def main() -> None:
    async with target() as where:
        iot = IoTConnection.from_settings(where.settings)
        shadow = DeviceShadowSync(iot)  # create it before connecting: it subscribes
        applied = anyio.Event()

        @shadow.on_delta
        async def apply(changes: dict) -> dict:
            print(f"desired changed: {changes}")
            # A real device would reconfigure its DSP here and return what it really applied.
            applied.set()
            return changes

        async with iot, shadow:  # `async with shadow` runs the sync task
            state = await shadow.update_reported(
                {
                    "anc_enabled": True,
                    "anc_intensity": 0.85,
                    "anc_algorithm": "nlms",
                    "battery_level": 85,
                }
            )
            print(f"reported, shadow version {state.version}")
            if where.emulator is not None:
                operator = ShadowOperator(where.operator().connection(), THING)
                async with operator:
                    await operator.update_desired({"anc_intensity": 0.9})
            with anyio.move_on_after(30):
                await applied.wait()
            await shadow.flush()  # the applied value is reported
            state = await shadow.get()
            print(f"version {state.version}: reported {state.reported}, delta {state.delta}")


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:  # Ctrl-C cancelled main() and everything stopped cleanly
        sys.exit(130)
