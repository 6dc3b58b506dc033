"""The Jobs service of the emulator and the device's DeviceJobs, over real TLS on 127.0.0.1.

The raw tests speak the Jobs MQTT API with an aiomqtt client holding the device's certificate,
so every accepted and rejected reply is checked as a device sees it; the DeviceJobs tests run
the SDK's component against the same service. Every wait is for a message or a status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import anyio
import orjson
import pytest
from device import THING, device_connection
from disconnects import until_disconnected
from helpers import device_client

from ancsync import BackoffPolicy, IoTConnection
from ancsync.emulator.server import Emulator
from ancsync.errors import ConfigError, InvalidPayload, TerminalStateReached, VersionMismatch
from ancsync.jobs import DeviceJobs, Job
from ancsync.jobs.journal import PendingUpdate, UpdateJournal
from ancsync.testing import start_in_task
from ancsync.topics import JobsTopics

TIMEOUT = 10
TOPICS = JobsTopics(THING)
FAST = BackoffPolicy(base=0.02, cap=0.1)


@pytest.fixture
async def fast_emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    """An emulator whose Jobs minutes last 0.2 s, so timeouts happen within a test."""
    emulator = Emulator(tmp_path / "certs", [THING], jobs_seconds_per_minute=0.2)
    started = await start_in_task(emulator)
    yield emulator
    await started.stop()


class RawDevice:
    """The device's side of the Jobs MQTT API, by hand."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client

    async def request(self, topic: str, body: dict[str, Any] | bytes) -> tuple[str, Any]:
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        await self.client.publish(topic, payload, qos=1)
        return await self.next_on(f"{topic}/")

    async def next_on(self, prefix: str) -> tuple[str, Any]:
        """The next message on ``prefix`` (a topic, or the start of topics when it ends in /)."""
        async for message in self.client.messages:
            topic = str(message.topic)
            if topic == prefix or (prefix.endswith("/") and topic.startswith(prefix)):
                assert isinstance(message.payload, bytes)
                return topic.removeprefix(prefix), orjson.loads(message.payload)
        raise AssertionError("the message stream ended")


async def raw_device(emulator: Emulator) -> AsyncIterator[RawDevice]:
    async with device_client(emulator.port, emulator.certs, THING) as client:
        for topic_filter in (TOPICS.notify, TOPICS.notify_next, *TOPICS.reply_filters):
            await client.subscribe(topic_filter, qos=1)
        yield RawDevice(client)


async def test_created_job_is_notified_then_started_and_succeeded(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async for device in raw_device(emulator):
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "reboot"})
            _, listed = await device.next_on(TOPICS.notify)
            assert [s["jobId"] for s in listed["jobs"]["QUEUED"]] == ["fw-1"]
            _, upcoming = await device.next_on(TOPICS.notify_next)
            assert upcoming["execution"]["jobDocument"] == {"operation": "reboot"}

            outcome, got = await device.request(TOPICS.get, {"clientToken": "c1"})
            assert outcome == "accepted"
            assert got["clientToken"] == "c1"
            assert [s["jobId"] for s in got["queuedJobs"]] == ["fw-1"]

            outcome, started = await device.request(
                TOPICS.start_next, {"statusDetails": {"step": "download"}}
            )
            assert outcome == "accepted"
            assert started["execution"]["status"] == "IN_PROGRESS"
            assert started["execution"]["versionNumber"] == 2

            outcome, done = await device.request(
                TOPICS.update("fw-1"),
                {"status": "SUCCEEDED", "expectedVersion": 2, "includeJobExecutionState": True},
            )
            assert outcome == "accepted"
            assert done["executionState"]["status"] == "SUCCEEDED"
            assert emulator.jobs.describe_job("fw-1")["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("topic", "body", "code"),
    [
        (TOPICS.update("fw-1"), b"{not json", "InvalidJson"),
        (TOPICS.update("fw-1"), {"status": "CANCELED"}, "InvalidRequest"),
        (
            TOPICS.update("fw-1"),
            {"status": "IN_PROGRESS", "statusDetails": {"k": ""}},
            "InvalidRequest",
        ),
        (
            TOPICS.update("fw-1"),
            {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0},
            "InvalidRequest",
        ),
        (TOPICS.update("nope"), {"status": "IN_PROGRESS"}, "ResourceNotFound"),
        (TOPICS.update("fw-1"), {"status": "IN_PROGRESS", "expectedVersion": 7}, "VersionMismatch"),
        (f"{TOPICS.prefix}/fw-1/extra/update", {}, "InvalidTopic"),  # allowed by */update
    ],
)
async def test_each_bad_request_is_rejected_with_its_code(
    emulator: Emulator, topic: str, body: dict[str, Any] | bytes, code: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        async for device in raw_device(emulator):
            await device.client.subscribe(f"{topic}/rejected", qos=1)
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "reboot"})
            outcome, reply = await device.request(topic, body)
            assert (outcome, reply["code"]) == ("rejected", code)
            assert ("executionState" in reply) == (code == "VersionMismatch")


async def test_terminal_executions_refuse_updates_and_describe(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async for device in raw_device(emulator):
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "reboot"})
            await emulator.jobs.cancel_job("fw-1")
            outcome, reply = await device.request(TOPICS.update("fw-1"), {"status": "SUCCEEDED"})
            assert (outcome, reply["code"]) == ("rejected", "InvalidStateTransition")
            assert reply["executionState"]["status"] == "CANCELED"
            outcome, reply = await device.request(TOPICS.describe("fw-1"), {})
            assert (outcome, reply["code"]) == ("rejected", "TerminalStateReached")


async def test_cancel_without_force_leaves_in_progress_executions(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async for device in raw_device(emulator):
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "reboot"})
            await device.request(TOPICS.start_next, {})
            described = await emulator.jobs.cancel_job("fw-1")
            assert described["executions"][THING]["status"] == "IN_PROGRESS"
            described = await emulator.jobs.cancel_job("fw-1", force=True)
            assert described["executions"][THING]["status"] == "CANCELED"


async def test_step_timeout_times_the_execution_out(fast_emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async for device in raw_device(fast_emulator):
            await fast_emulator.jobs.create_job("fw-1", [THING], {"operation": "reboot"})
            await device.request(TOPICS.start_next, {"stepTimeoutInMinutes": 1})
            while True:
                _, listed = await device.next_on(TOPICS.notify)
                if not listed["jobs"]:
                    break
            assert fast_emulator.jobs.describe_job("fw-1")["executions"][THING]["status"] == (
                "TIMED_OUT"
            )


async def test_in_progress_timeout_times_the_execution_out(fast_emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async for device in raw_device(fast_emulator):
            await fast_emulator.jobs.create_job(
                "fw-1", [THING], {"operation": "reboot"}, in_progress_timeout_minutes=1
            )
            await device.request(TOPICS.start_next, {})
            while fast_emulator.jobs.describe_job("fw-1")["status"] != "COMPLETED":
                await device.next_on(TOPICS.notify)
            state = fast_emulator.jobs.describe_job("fw-1")["executions"][THING]
            assert state["status"] == "TIMED_OUT"


async def test_devices_may_not_use_another_things_jobs_topics(emulator: Emulator) -> None:
    other = JobsTopics("anc-device-002")
    with anyio.fail_after(TIMEOUT):
        async with device_client(emulator.port, emulator.certs, THING) as client:
            # AWS on MQTT 3.1.1 answers a denied subscription by disconnecting the client.
            await until_disconnected(client, lambda: client.subscribe(other.notify_next, qos=1))


# -- the SDK's DeviceJobs ---------------------------------------------------------------------


def device(emulator: Emulator, tmp_path: Path) -> tuple[IoTConnection, DeviceJobs]:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    return iot, DeviceJobs(iot, data_dir=tmp_path / "device")


async def until(emulator: Emulator, job_id: str, status: str) -> str:
    return await emulator.jobs.wait_for_status(job_id, THING, status)


async def test_handler_runs_the_job_to_succeeded(emulator: Emulator, tmp_path: Path) -> None:
    iot, jobs = device(emulator, tmp_path)
    seen: list[tuple[str, bool]] = []

    @jobs.on("reboot")
    async def reboot(job: Job[Any]) -> None:
        seen.append((job.job_id, job.resumed))
        await job.start()
        await job.progress(step="download", percent=40)

    with anyio.fail_after(TIMEOUT):
        async with iot, jobs:
            await iot.wait_connected()
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "reboot"})
            await emulator.jobs.create_job("fw-2", [THING], {"operation": "reboot"})
            await until(emulator, "fw-2", "SUCCEEDED")
    assert seen == [("fw-1", False), ("fw-2", False)]
    assert emulator.jobs.describe_job("fw-1")["executions"][THING]["status"] == "SUCCEEDED"


async def test_a_raising_handler_fails_the_job(emulator: Emulator, tmp_path: Path) -> None:
    iot, jobs = device(emulator, tmp_path)

    @jobs.on("reboot")
    async def reboot(job: Job[Any]) -> None:
        raise RuntimeError("flash write failed\nat sector 7")

    with anyio.fail_after(TIMEOUT):
        async with iot, jobs:
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "reboot"})
            await until(emulator, "fw-1", "FAILED")
    state = emulator.jobs.describe_job("fw-1")["executions"][THING]
    assert state["statusDetails"] == {"reason": "flash write failed"}


async def test_iteration_and_typed_errors(emulator: Emulator, tmp_path: Path) -> None:
    iot, jobs = device(emulator, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with iot, jobs:
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "calibrate"})
            job = await anext(aiter(jobs))
            with pytest.raises(InvalidPayload, match="control character"):
                await job.progress(step="a\x07b")
            await job.start()
            job.version -= 1  # as if another writer had updated it meanwhile
            with pytest.raises(VersionMismatch):
                await job.progress(step="download")
            assert emulator.jobs.describe_job("fw-1")["executions"][THING]["versionNumber"] == 2


async def test_cancel_while_running_cancels_the_handler(emulator: Emulator, tmp_path: Path) -> None:
    iot, jobs = device(emulator, tmp_path)
    running, stopped = anyio.Event(), anyio.Event()

    @jobs.on("reboot")
    async def reboot(job: Job[Any]) -> None:
        await job.start()
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    with anyio.fail_after(TIMEOUT):
        async with iot, jobs:
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "reboot"})
            await running.wait()
            await emulator.jobs.cancel_job("fw-1", force=True)
            await stopped.wait()
            assert jobs.current is None


async def test_update_on_canceled_job_raises_terminal_state(
    emulator: Emulator, tmp_path: Path
) -> None:
    iot, jobs = device(emulator, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with iot, jobs:
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "calibrate"})
            job = await anext(aiter(jobs))
            emulator.jobs.store.cancel_execution("fw-1", THING, force=True)  # no notification
            with pytest.raises(TerminalStateReached):
                await job.succeed()


async def test_journaled_updates_are_delivered_once_in_order_after_a_restart(
    emulator: Emulator, tmp_path: Path
) -> None:
    """As if a process died after persisting an update, and another after sending it again."""
    iot, jobs = device(emulator, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with iot, jobs:
            await emulator.jobs.create_job("fw-1", [THING], {"operation": "calibrate"})
            await (await anext(aiter(jobs))).start()
        request = {"status": "IN_PROGRESS", "statusDetails": {"step": "download"}}
        journal = UpdateJournal(tmp_path / "device")
        for token in ("first-try", "sent-again"):
            body = {**request, "expectedVersion": 2, "clientToken": token}
            await journal.put(PendingUpdate(token, TOPICS.update("fw-1"), orjson.dumps(body)))
        journal.close()

        iot, jobs = device(emulator, tmp_path)
        async with iot, jobs:
            job = await anext(aiter(jobs))
            assert job.resumed
            assert job.version == 3
            await job.succeed()
        journal = UpdateJournal(tmp_path / "device")
        assert await journal.pending() == []
        journal.close()
    history = emulator.jobs.store.execution("fw-1", THING).history
    assert [(h["status"], h["statusDetails"]) for h in history] == [
        ("IN_PROGRESS", {}),
        ("IN_PROGRESS", {"step": "download"}),
        ("SUCCEEDED", {}),
    ]


def test_a_second_device_jobs_on_one_connection_is_refused(emulator: Emulator) -> None:
    iot = device_connection(emulator.certs, emulator.port)
    DeviceJobs(iot)
    with pytest.raises(ConfigError, match=r"already has a DeviceJobs.*orchestrator\.on_job"):
        DeviceJobs(iot)
