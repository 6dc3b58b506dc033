"""Update the ANC noise model over the air with AWS IoT Jobs; the progress survives a reboot.

    python examples/ota_update.py     # a local emulator, or AWS IoT with IOT_* set

The job document names a noise-model file and its SHA-256. The device reports ``download``,
verifies the checksum (a mismatch FAILS the job with the reason), reports ``apply``, loads the
model and reports it in the shadow (``noise_type``), then succeeds. The steps are in
``ancsync.tools.demo_jobs.update_noise_model``; ``ancsync demo`` runs the same job.

Locally, the example also plays the operator and creates the job. Against AWS IoT, create it
within 60 seconds:

    ancsync jobs create nm-1 --aws --thing $IOT_THING_NAME --document-file job.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
from _local import THING, target

from ancsync import DeviceJobs, DeviceShadowSync, IoTConnection, Job
from ancsync.tools.demo_jobs import NoiseModelJob, noise_model_document, update_noise_model


async def main() -> None:
    async with target() as where:
        iot = IoTConnection.from_settings(where.settings)
        shadow = DeviceShadowSync(iot)
        jobs = DeviceJobs(iot)  # its journal lives in the device's data directory
        finished = anyio.Event()

        async def load_model(name: str, data: bytes) -> None:
            print(f"loaded noise model {name!r} ({len(data)} bytes) into the ANC pipeline")
            await shadow.update_reported({"noise_type": name})

        @jobs.on("update_noise_model", model=NoiseModelJob)
        async def update(job: Job[NoiseModelJob]) -> None:
            if job.resumed:
                print(f"resuming {job.job_id} after a restart")
            try:
                await update_noise_model(job, load_model)
                print(f"job {job.job_id} SUCCEEDED")
            finally:
                finished.set()

        async with iot, shadow, jobs:
            if where.emulator is not None:
                model = Path(tempfile.mkdtemp()) / "office-v2.nm"
                model.write_bytes(b"\x01\x02" * 4096)
                document = noise_model_document(model, "office-v2")
                await where.emulator.jobs.create_job("nm-1", [THING], document)
            with anyio.move_on_after(60):
                await finished.wait()
            state = await shadow.get()
            print(f"shadow reports noise_type={state.reported.get('noise_type')!r}")


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:  # Ctrl-C cancelled main() and everything stopped cleanly
        sys.exit(130)
