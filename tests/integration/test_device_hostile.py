"""A broker sending garbage on the topics the device subscribes to.

The emulator's broker itself publishes (``EmbeddedBroker.publish``, as the Shadow service would)
on the device's ``update/delta`` and commands topics: a delta whose ANC fields have the wrong
types, bytes that are not JSON, bytes that are not UTF-8, a delta that is JSON but not a shadow
delta, and 1 MB payloads. The rule: the device says what was wrong (the router's ``on_invalid``
hook and counters, the shadow's counters and ``last_error``), applies none of it, keeps its
session, applies the next valid delta, and delivers the telemetry and emergencies it accepted
in the meantime. Every wait is for an event or a stored row, under ``fail_after``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from device import THING, cloud, orchestrator_options, until

from ancsync import Command, DataSyncOrchestrator, ShadowDocument, utc_now
from ancsync.emulator.server import Emulator
from ancsync.topics import JobsTopics, ShadowTopics, commands_topic

TIMEOUT = 30
MEGABYTE = 1024 * 1024
DELTA = ShadowTopics(THING).update_delta
COMMANDS = commands_topic(THING)


class Rejections:
    """The router's ``on_invalid`` hook: every payload the device refused, and a wake-up."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str]] = []  # topic, payload size, the error's text
        self._changed = anyio.Event()

    def __call__(self, topic: str, payload: bytes, error: Exception) -> None:
        self.seen.append((topic, len(payload), str(error)))
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.seen) < count:
            self._changed = anyio.Event()
            await self._changed.wait()


class LogWatch(logging.Handler):
    """Counts the log records of ``logger`` whose message holds ``text``, and wakes waiters:
    how a test knows a route's worker has handled a message (it logs nothing else)."""

    def __init__(self, logger: str, text: str) -> None:
        super().__init__(logging.WARNING)
        self.logger = logging.getLogger(logger)
        self.text = text
        self.count = 0
        self._changed = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self._changed.set()

    async def wait_for(self, count: int) -> None:
        while self.count < count:
            self._changed = anyio.Event()
            await self._changed.wait()

    def __enter__(self) -> LogWatch:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self)


def delta(version: int, state: Any) -> bytes:
    return orjson.dumps({"version": version, "timestamp": 1, "state": state})


def a_metric(i: int) -> dict[str, float]:
    return {"latency_ms": 30.0 + i, "cancellation_db": 40.0, "snr_improvement_db": 35.0}


async def test_garbage_from_the_broker_is_refused_and_the_device_carries_on(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied: list[dict[str, Any]] = []
    rejections = Rejections()
    options = orchestrator_options(emulator, tmp_path)
    options["connection_options"] = {**options["connection_options"], "on_invalid": rejections}
    device = DataSyncOrchestrator(**options)
    device.on_desired_state(lambda changes: applied.append(changes) or changes)
    commands: list[Any] = []
    device.on_command("set_mode", commands.append)
    events = []
    broker = emulator.broker
    caplog.set_level(logging.WARNING, logger="ancsync.shadow")
    caplog.set_level(logging.WARNING, logger="ancsync.orchestrator")

    async def meanwhile(i: int) -> None:
        """What the control loop goes on doing while the garbage arrives."""
        device.publish_metrics(anc_metrics=a_metric(i))
        events.append(
            await device.report_emergency(
                is_emergency=True, predicted_class="fire_alarm", confidence=0.9, action="bypass"
            )
        )

    def has_error(*words: str) -> Any:
        def holds(document: ShadowDocument) -> bool:
            error = document.reported.get("last_error") or ""
            return all(word in error for word in words)

        return holds

    with anyio.fail_after(TIMEOUT):
        async with cloud(emulator) as operator, device:
            await device.wait_connected()
            await device.update_anc_state(enabled=True, intensity=0.5, algorithm="nlms", wait=True)
            reconnects = device.get_status()["connection"]["reconnect_count"]

            # 1. A delta with the wrong types for every ANC field: refused, and said so in the
            # shadow (the cloud sees why), never handed to the handler.
            with operator.watch() as documents:
                await broker.publish(
                    DELTA,
                    delta(
                        device.shadow.version + 1,
                        {"anc_enabled": "yes", "anc_intensity": "loud", "anc_algorithm": 42},
                    ),
                    qos=1,
                )
                wrong_types = await until(documents, has_error("anc_enabled", "anc_intensity"))
            await meanwhile(1)

            # 2. Bytes that are not JSON, not UTF-8, or 1 MB of neither, on both topics: the
            # router refuses each one, naming the topic and what is wrong.
            not_json = b'{"version": 9, "state": {"anc_enabled": tru'
            not_utf8 = b'{"state": "\xff\xfe\xfa"}'
            huge_junk = b"\x00\x9c" * (MEGABYTE // 2)
            for topic in (DELTA, COMMANDS):
                for payload in (not_json, not_utf8, huge_junk):
                    await broker.publish(topic, payload, qos=1)
            await broker.publish(COMMANDS, orjson.dumps({"command_id": 7, "command": []}), qos=1)
            # A well-formed command whose parameters are not: an emergency_ack without an id.
            not_acked = Command(
                command_id="ack-1",
                command="emergency_ack",
                params={"event_id": 5},
                issued_at=utc_now(),
            )
            await broker.publish(COMMANDS, not_acked.model_dump_json().encode(), qos=1)
            await rejections.wait_for(7)
            await meanwhile(2)

            # 3. JSON, but not a shadow delta: not an object, or no integer version.
            await broker.publish(DELTA, b"[1, 2, 3]", qos=1)
            await broker.publish(DELTA, orjson.dumps({"version": "7", "state": []}), qos=1)
            await meanwhile(3)

            # 4. A 1 MB delta that is valid JSON: refused by the desired model, and the error
            # the device reports stays short (AWS IoT's 8 KB shadow limit).
            with operator.watch() as documents:
                huge_value = "x" * MEGABYTE
                await broker.publish(
                    DELTA, delta(device.shadow.version + 1, {"anc_algorithm": huge_value}), qos=1
                )
                huge = await until(documents, has_error("anc_algorithm", "at most 128"))
            await meanwhile(4)

            # After the garbage: a valid desired change is applied and reported.
            with operator.watch() as documents:
                await operator.update_desired({"anc_intensity": 0.9})
                converged = await until(
                    documents, lambda d: d.reported.get("anc_intensity") == 0.9 and d.converged
                )
            await emulator.rules.wait_for(
                lambda sink: (
                    len(sink.emergencies(THING)) == 4 and sink.record_count(THING, "anc") == 4
                )
            )
            status = device.get_status()

    assert applied == [{"anc_intensity": 0.9}]  # nothing of the garbage reached the handler
    assert commands == []
    assert wrong_types.reported["anc_intensity"] == 0.5  # the reported state stayed as it was
    assert "got 'yes'" in wrong_types.reported["last_error"]
    assert len(huge.reported["last_error"]) <= 1024
    assert "last_error" not in converged.reported  # cleared by the clean change
    # The router named each refused payload: where, how big, and what is wrong with it.
    refused = {(topic, size): error for topic, size, error in rejections.seen}
    for topic in (DELTA, COMMANDS):
        assert "not valid JSON" in refused[topic, len(not_json)]
        assert "not UTF-8" in refused[topic, len(not_utf8)]
        assert "not UTF-8" in refused[topic, len(huge_junk)]
    assert any("command_id" in error for topic, _, error in rejections.seen if topic == COMMANDS)
    assert all(len(error) < 1024 for _, _, error in rejections.seen)
    # Counted where an operator looks, the session kept, everything accepted delivered.
    connection = status["connection"]
    assert connection["invalid"] == len(rejections.seen) == 7
    assert connection["reconnect_count"] == reconnects
    assert status["shadow"]["invalid_desired"] == 4
    assert status["shadow"]["malformed_deltas"] == 2
    assert status["emergency"]["cloud_acknowledged"] == 0
    assert status["commands"]["handled"] == 1  # the emergency_ack, which recorded nothing
    assert "command ack-1: an emergency_ack without an event_id string" in caplog.text
    # (the operator's shadow copy, in this process too, logs them as well)
    malformed = [r.getMessage() for r in caplog.records if "ignored a delta" in r.getMessage()]
    first, second = dict.fromkeys(malformed)
    assert "a JSON list, not an object" in first
    assert "its version is '7', not an integer" in second
    assert {event.event_id for event in emulator.rules.emergencies(THING)} == {
        event.event_id for event in events
    }
    assert emulator.rules.gaps(THING) == []
    assert status["emergency"]["pending"] == 0
    assert status["telemetry"]["records"]["anc"]["delivered"] == 4


async def test_shadow_messages_with_versions_from_nowhere_do_not_stall_the_device(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Version numbers the Shadow service never had (a documents message and deltas ahead of
    the shadow) must not leave the device unable to report, or deaf to the next real delta."""
    applied: list[dict[str, Any]] = []
    handled = anyio.Event()

    def apply(changes: dict[str, Any]) -> dict[str, Any]:
        applied.append(changes)
        handled.set()
        return changes

    # No periodic re-sync to the rescue within the test: the device must heal by itself.
    device = DataSyncOrchestrator(**orchestrator_options(emulator, tmp_path, sync_interval=600))
    device.on_desired_state(apply)
    topics = ShadowTopics(THING)
    bogus = 1_000_000_000

    def reported(key: str, value: Any) -> Any:
        return lambda d: d.reported.get(key) == value and d.converged

    with anyio.fail_after(TIMEOUT):
        async with cloud(emulator) as operator, device:
            await device.update_anc_state(intensity=0.5, algorithm="nlms", wait=True)

            # A copy of the shadow from nowhere, then a delta ahead of it: the device applies
            # the delta (it came on the service's topic), and must still be able to report it.
            document = {"current": {"version": bogus, "state": {"reported": {}}}, "timestamp": 1}
            await emulator.broker.publish(topics.update_documents, orjson.dumps(document), qos=1)
            with operator.watch() as documents:
                await emulator.broker.publish(
                    DELTA, delta(bogus + 1, {"anc_algorithm": "fxlms"}), qos=1
                )
                await until(documents, lambda d: d.reported.get("anc_algorithm") == "fxlms")
                # ... and a real change after that is applied at once.
                await operator.update_desired({"anc_intensity": 0.9})
                await until(documents, reported("anc_intensity", 0.9))

                # A delta far ahead alone (the copy is right): the next real one still counts.
                handled = anyio.Event()
                await emulator.broker.publish(
                    DELTA, delta(2 * bogus, {"anc_enabled": False}), qos=1
                )
                await handled.wait()
                await operator.update_desired({"anc_intensity": 0.3})
                final = await until(documents, reported("anc_intensity", 0.3))

    assert applied == [
        {"anc_algorithm": "fxlms"},
        {"anc_intensity": 0.9},
        {"anc_enabled": False},
        {"anc_intensity": 0.3},
    ]
    assert final.reported["anc_enabled"] is False
    assert final.version < bogus  # the service's numbering, not the bogus one
    assert device.shadow.version == final.version


async def test_garbage_on_the_jobs_topics_is_refused_and_jobs_still_run(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not JSON, JSON of the wrong shape, and an execution of the wrong types, on notify-next
    and notify, before and while a job runs: logged, and the job runs to SUCCEEDED."""
    rejections = Rejections()
    options = orchestrator_options(emulator, tmp_path)
    options["connection_options"] = {**options["connection_options"], "on_invalid": rejections}
    device = DataSyncOrchestrator(**options)
    topics = JobsTopics(THING)
    started: list[str] = []
    running, finish = anyio.Event(), anyio.Event()

    @device.on_job("recalibrate")
    async def recalibrate(job: Any) -> None:
        started.append(job.job_id)
        running.set()
        await finish.wait()
        await job.succeed({"offset_db": "0.4"})

    garbage = [
        b"\xff\xfe not json",
        b"[1, 2, 3]",
        orjson.dumps({"execution": {"jobId": 5, "status": []}}),
        orjson.dumps({"jobs": "all of them"}),
        orjson.dumps({"jobs": {"IN_PROGRESS": [1, "x"]}}),
    ]
    caplog.set_level(logging.WARNING, logger="ancsync.jobs")
    notify_ignored = LogWatch("ancsync.jobs", f"ignored a message on {topics.notify}:")
    with notify_ignored, anyio.fail_after(TIMEOUT):
        async with device:
            # A first job shows the device is subscribed to the jobs topics.
            finish.set()
            await emulator.jobs.create_job("cal-0", [THING], {"operation": "recalibrate"})
            await emulator.jobs.wait_for_status("cal-0", THING, "SUCCEEDED")
            running, finish = anyio.Event(), anyio.Event()

            for payload in garbage:  # while no job runs
                await emulator.broker.publish(topics.notify_next, payload, qos=1)
            await rejections.wait_for(1)
            await emulator.jobs.create_job("cal-1", [THING], {"operation": "recalibrate"})
            await running.wait()
            for payload in garbage:  # while it runs
                await emulator.broker.publish(topics.notify, payload, qos=1)
                await emulator.broker.publish(topics.notify_next, payload, qos=1)
            await rejections.wait_for(3)
            # The notify worker has handled the four JSON ones (each could end the job).
            await notify_ignored.wait_for(4)
            finish.set()
            status = await emulator.jobs.wait_for_status("cal-1", THING, "SUCCEEDED", "FAILED")
            components = device.get_status()["components"]

    assert status == "SUCCEEDED"
    assert started == ["cal-0", "cal-1"]
    assert all(c["running"] and c["restarts"] == 0 for c in components.values())
    assert {topic for topic, _, _ in rejections.seen} == {topics.notify, topics.notify_next}
    logged = caplog.text
    assert "Traceback" not in logged  # a clear line, not a handler crash
    assert "was canceled or removed" not in logged  # (what a notify without "jobs" did)
    assert "ignored a job execution that does not validate" in logged
    assert "ignored a message on" in logged
