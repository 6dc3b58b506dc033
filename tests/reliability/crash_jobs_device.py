"""A device process for the jobs crash test, configured by environment variables only.

It runs the ``update_noise_model`` jobs of its thing. A fresh job is started, reported at
``download`` and the line ``progressed`` printed once ``progress()`` returned; then it waits to
be killed. A resumed job (the process was killed while running it) prints ``resumed``, reports
``apply`` and succeeds.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from ancsync import BackoffPolicy, DeviceJobs, IoTConnection, Job, Settings


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main() -> None:
    settings = Settings.load()
    iot = IoTConnection(settings=settings, reconnect=BackoffPolicy(base=0.05, cap=0.2))
    jobs = DeviceJobs(iot)

    @jobs.on("update_noise_model")
    async def update(job: Job[Any]) -> None:
        if job.resumed:
            say("resumed")
            await job.progress(step="apply", percent=90)
            await job.succeed({"model": str(job.document["model"])})
            say("succeeded")
            return
        await job.start()
        await job.progress(step="download", percent=50)
        say("progressed")
        await anyio.sleep_forever()

    async with iot, jobs:
        say("ready")
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main)
