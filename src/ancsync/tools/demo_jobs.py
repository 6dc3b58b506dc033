"""The demo's jobs step and the OTA noise-model update it runs (also used by the OTA example).

A noise-model job names a file and its SHA-256 (:func:`noise_model_document`). The device's
handler (:func:`update_noise_model`) reports ``download``, reads the file, refuses it if the
checksum differs (the job FAILS with that reason), reports ``apply``, hands the model to the
application's ``apply`` callback (the demo reports it in the shadow, as after a desired-state
change) and succeeds with the model's name and checksum.

:func:`run_jobs_step` plays both sides on a running emulator: it writes a model file, creates the
job, handles it through the orchestrator's jobs (:meth:`~ancsync.DataSyncOrchestrator.on_job`) and
waits for SUCCEEDED.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
from pydantic import BaseModel

from ancsync.emulator.server import Emulator
from ancsync.jobs import Job
from ancsync.models import new_id
from ancsync.orchestrator import DataSyncOrchestrator

__all__ = [
    "JobsStepResult",
    "NoiseModelJob",
    "noise_model_document",
    "run_jobs_step",
    "update_noise_model",
]

log = logging.getLogger("ancsync.tools.demo_jobs")

ApplyModel = Callable[[str, bytes], Awaitable[None]]
"""``await apply(model_name, model_bytes)``: load the model into the ANC pipeline and report it."""


class NoiseModelJob(BaseModel):
    """The document of an ``update_noise_model`` job."""

    operation: Literal["update_noise_model"] = "update_noise_model"
    model_name: str
    file: str
    sha256: str


def noise_model_document(path: Path, model_name: str) -> dict[str, str]:
    """The job document for the model file at ``path`` (its checksum computed here)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return NoiseModelJob(model_name=model_name, file=str(path), sha256=digest).model_dump()


async def update_noise_model(job: Job[NoiseModelJob], apply: ApplyModel) -> None:
    """Download (read), verify, apply and report the noise model the job names."""
    document = job.document
    await job.start()
    await job.progress(step="download", percent=10)
    data = await anyio.Path(document.file).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != document.sha256:
        raise ValueError(f"checksum mismatch for {document.file}: got {digest[:12]}...")
    await job.progress(step="apply", percent=60)
    await apply(document.model_name, data)
    await job.succeed({"model": document.model_name, "sha256": digest})


@dataclass(frozen=True)
class JobsStepResult:
    """The demo's jobs row: the job, its final status and the model the device applied."""

    job_id: str
    status: str
    applied_model: str | None


async def run_jobs_step(
    emulator: Emulator,
    orchestrator: DataSyncOrchestrator,
    workdir: Path,
    apply: ApplyModel,
    *,
    give_up_after: float = 20.0,
) -> JobsStepResult:
    """Roll a noise-model update out to the orchestrator's thing and wait for it to finish."""
    thing = orchestrator.thing_name
    model = workdir / "office-v2.nm"
    model.write_bytes(bytes(range(256)) * 64)  # a stand-in for a trained model
    applied: list[str] = []

    async def apply_and_remember(name: str, data: bytes) -> None:
        await apply(name, data)
        applied.append(name)

    @orchestrator.on_job("update_noise_model", model=NoiseModelJob)
    async def handle(job: Job[NoiseModelJob]) -> None:
        await update_noise_model(job, apply_and_remember)

    job_id = f"noise-model-{new_id()[:8]}"
    status = f"not finished after {give_up_after:g} s"
    await emulator.jobs.create_job(job_id, [thing], noise_model_document(model, "office-v2"))
    with anyio.move_on_after(give_up_after):
        status = await emulator.jobs.wait_for_status(
            job_id, thing, "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED"
        )
    return JobsStepResult(job_id, status, applied[-1] if applied else None)
