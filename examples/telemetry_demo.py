"""Publish ANC, audio and system metrics in batches; see what was delivered.

    python examples/telemetry_demo.py     # a local emulator, or AWS IoT with IOT_* set

``publish_*`` calls never wait: they validate and buffer a record in microseconds. A background
task sends a batch per kind when ``batch_size`` records wait or the oldest is ``batch_interval``
seconds old; ``stop()`` sends the rest.
"""

from __future__ import annotations

import json
import random
import sys

import anyio
from _local import target

from ancsync import IoTConnection, TelemetryPublisher


async def main() -> None:
    async with target() as where:
        iot = IoTConnection.from_settings(where.settings)
        telemetry = TelemetryPublisher(iot, batch_size=10, batch_interval=1.0)
        async with iot, anyio.create_task_group() as tasks:
            await tasks.start(telemetry.start_publishing)
            for tick in range(40):  # 2 seconds of a 20 Hz control loop
                telemetry.publish_anc_metrics(
                    {
                        "latency_ms": 35.2,
                        "cancellation_db": 40 + random.random() * 5,
                        "snr_improvement_db": 38.2,
                    }
                )
                if tick % 5 == 0:
                    telemetry.publish_audio_metrics(
                        {"noise_type": "office", "confidence": 0.94, "rms": 0.45}
                    )
                if tick % 10 == 0:
                    telemetry.publish_system_metrics(
                        {"battery_level": 85, "cpu_usage": 45.2, "temperature": 42.3}
                    )
                await anyio.sleep(0.05)
            await telemetry.stop()  # send what is waiting, wait for the acknowledgements
        status = telemetry.get_status()
        print(json.dumps({kind: counts for kind, counts in status["records"].items()}, indent=2))
        print(f"{status['batches_acknowledged']} batches, {status['dropped']} records dropped")
        if where.emulator is not None:
            print(f"the emulator's rules sink stored {where.emulator.rules.record_count()} records")


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:  # Ctrl-C cancelled main() and everything stopped cleanly
        sys.exit(130)
