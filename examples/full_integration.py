"""The whole SDK through DataSyncOrchestrator: shadow state, telemetry, an emergency, commands.

    python examples/full_integration.py     # a local emulator, or AWS IoT with IOT_* set

A real application runs ``await orchestrator.run_forever()`` and cancels it on SIGTERM; this
example runs its control loop for a few seconds and stops (flushing everything) at the end.
"""

from __future__ import annotations

import json
import sys

import anyio
from _local import THING, target

from ancsync import Command, DataSyncOrchestrator, ShadowOperator


async def main() -> None:
    async with target() as where:
        orchestrator = DataSyncOrchestrator(settings=where.settings, firmware_version="1.2.3")

        @orchestrator.on_desired_state
        async def apply(changes: dict) -> dict:
            print(f"cloud asks for {changes}; applying")
            return changes  # what the DSP really applied is what gets reported

        def on_reboot(command: Command) -> None:
            print(f"reboot requested ({command.command_id})")

        orchestrator.on_command("reboot", on_reboot)

        async with orchestrator:
            await orchestrator.wait_connected(timeout=30)
            await orchestrator.update_anc_state(enabled=True, intensity=0.85, algorithm="nlms")
            if where.emulator is not None:  # play the cloud operator
                async with ShadowOperator(where.operator().connection(), THING) as operator:
                    await operator.update_desired({"anc_algorithm": "fxlms"})
            for tick in range(20):  # the ANC control loop: none of these calls waits
                orchestrator.publish_metrics(
                    anc_metrics={
                        "latency_ms": 35.2,
                        "cancellation_db": 42.5,
                        "snr_improvement_db": 38.2,
                    },
                    system_metrics={"battery_level": 85, "cpu_usage": 45.2, "memory_usage": 68.5},
                )
                if tick == 10:
                    event = await orchestrator.report_emergency(
                        {
                            "is_emergency": True,
                            "predicted_class": "fire_alarm",
                            "confidence": 0.94,
                            "action": "anc_bypassed",
                        }
                    )
                    print(f"emergency {event.event_id} stored durably and sent first")
                await anyio.sleep(0.05)
        status = orchestrator.get_status()  # after stop(): everything was flushed
        print(
            json.dumps(
                {
                    "shadow": {k: status["shadow"][k] for k in ("version", "in_sync", "reported")},
                    "telemetry_delivered": {
                        kind: counts["delivered"]
                        for kind, counts in status["telemetry"]["records"].items()
                    },
                    "emergency": {k: status["emergency"][k] for k in ("reported", "acknowledged")},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:  # Ctrl-C cancelled main() and everything stopped cleanly
        sys.exit(130)
