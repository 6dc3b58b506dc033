"""DeviceJobs on the in-memory FakeBroker, the test playing the Jobs service by hand.

The whole workflow against the emulator's Jobs service (and AWS's own client) is in
tests/integration/test_jobs*.py; here the service is scripted so that it can stay silent: an
update it never answered is sent again while the connection stays up, and the status counts it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
from helpers import fake_connection

from ancsync import DeviceJobs, Job
from ancsync.testing import FakeBroker

THING = "anc-device-001"
JOBS = f"$aws/things/{THING}/jobs"
TIMEOUT = 5


def requests(broker: FakeBroker, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(body) for t, body, _, _ in broker.published if t == topic]


def execution(job_id: str, status: str = "QUEUED", version: int = 1) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "thingName": THING,
        "status": status,
        "versionNumber": version,
        "jobDocument": {"operation": "recalibrate"},
    }


@asynccontextmanager
async def device_jobs(broker: FakeBroker, tmp_path: Path) -> AsyncIterator[DeviceJobs]:
    async with fake_connection(broker, THING, stop_timeout=1.0) as iot:
        jobs = DeviceJobs(iot, data_dir=tmp_path, reply_timeout=0.1, stop_timeout=1.0)
        async with jobs:
            await iot.wait_connected(TIMEOUT)
            yield jobs


async def answer_next(broker: FakeBroker, number: int, job: dict[str, Any] | None) -> None:
    """Wait for the device's ``number``-th ``$next`` request; answer ``job`` (or none pending)."""
    await broker.wait_until(lambda: len(requests(broker, f"{JOBS}/$next/get")) >= number)
    token = requests(broker, f"{JOBS}/$next/get")[number - 1]["clientToken"]
    reply: dict[str, Any] = {"clientToken": token, "timestamp": 1}
    if job is not None:
        reply["execution"] = job
    broker.deliver(f"{JOBS}/$next/get/accepted", orjson.dumps(reply))


async def test_an_update_the_service_did_not_answer_is_sent_again_while_connected(
    tmp_path: Path,
) -> None:
    broker = FakeBroker()
    update_topic = f"{JOBS}/job-1/update"
    with anyio.fail_after(TIMEOUT):
        async with device_jobs(broker, tmp_path) as jobs:
            received: list[Job[Any]] = []

            @jobs.on("recalibrate")
            async def recalibrate(job: Job[Any]) -> None:
                received.append(job)
                await job.succeed({"result": "ok"})

            await answer_next(broker, 1, execution("job-1"))
            # The service stays silent about the first sending; the device tries again.
            await broker.wait_until(lambda: len(requests(broker, update_topic)) == 2)
            assert jobs.get_status()["updates_unanswered"] == 1
            assert jobs.get_status()["current_job"] == "job-1"
            first, again = requests(broker, update_topic)
            assert again == first  # the same request, token and expectedVersion
            assert (first["status"], first["expectedVersion"]) == ("SUCCEEDED", 1)
            accepted = {"clientToken": first["clientToken"], "timestamp": 2}
            broker.deliver(f"{update_topic}/accepted", orjson.dumps(accepted))
            await answer_next(broker, 2, None)  # the device asks for the next job once done
            status = jobs.get_status()
    [job] = received
    assert job.finished
    assert status["current_job"] is None
    assert status["jobs_received"] == 1
    assert status["jobs_resumed"] == 0
    assert status["jobs_succeeded"] == 1
    assert status["updates_sent"] == 1
    assert status["updates_resent"] >= 1
    assert status["updates_accepted"] == 1
    assert status["updates_rejected"] == 0
    assert status["updates_unanswered"] == 0
    assert "no answer to update" in str(status["last_error"])


async def test_a_job_canceled_meanwhile_cancels_its_handler_and_is_counted(
    tmp_path: Path,
) -> None:
    broker = FakeBroker()
    update_topic = f"{JOBS}/job-2/update"
    with anyio.fail_after(TIMEOUT):
        async with device_jobs(broker, tmp_path) as jobs:
            received: list[Job[Any]] = []
            returned: list[bool] = []

            @jobs.on("recalibrate")
            async def recalibrate(job: Job[Any]) -> None:
                received.append(job)
                await job.progress(step="measure", percent=50)
                returned.append(True)  # never reached: the handler is cancelled

            await answer_next(broker, 1, execution("job-2", "IN_PROGRESS", version=3))
            await broker.wait_until(lambda: bool(requests(broker, update_topic)))
            request = requests(broker, update_topic)[0]
            rejected = {
                "clientToken": request["clientToken"],
                "code": "TerminalStateReached",
                "message": "the job was canceled",
                "executionState": {"status": "CANCELED", "versionNumber": 4},
            }
            broker.deliver(f"{update_topic}/rejected", orjson.dumps(rejected))
            await answer_next(broker, 2, None)
            status = jobs.get_status()
    [job] = received
    assert job.resumed  # it was IN_PROGRESS when this process received it
    assert job.canceled.is_set()
    assert returned == []
    assert request["statusDetails"] == {"step": "measure", "percent": "50"}
    assert request["expectedVersion"] == 3
    assert status["jobs_received"] == 1
    assert status["jobs_resumed"] == 1
    assert status["jobs_canceled"] == 1
    assert status["updates_rejected"] == 1
    assert "TerminalStateReached" in str(status["last_error"])
