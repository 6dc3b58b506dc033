"""The emulator's JobStore on its own: notifications, $next order, limits and timers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ancsync.emulator.job_executions import JobStore
from ancsync.errors import ConfigError, InvalidPayload
from ancsync.jobs import validate_status_details

THING = "t1"
PREFIX = f"$aws/things/{THING}/jobs"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def request(store: JobStore, rest: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        (m.topic.removeprefix(PREFIX + "/"), m.payload)
        for m in store.handle(THING, rest, orjson.dumps(body))
    ]


def topics(messages: list[tuple[str, Any]]) -> list[str]:
    return [topic for topic, _ in messages]


def test_notify_next_only_when_the_first_pending_execution_changes() -> None:
    store = JobStore(clock=Clock())
    created = store.create_job("a", [THING], {"operation": "x"})
    assert [m.topic.rsplit("/", 1)[1] for m in created] == ["notify", "notify-next"]
    second = store.create_job("b", [THING], {"operation": "x"})
    assert [m.topic.rsplit("/", 1)[1] for m in second] == ["notify"]  # "a" is still first

    started = request(store, "start-next", {})
    assert topics(started) == ["start-next/accepted", "notify", "notify-next"]
    assert started[0][1]["execution"]["jobId"] == "a"
    progress = request(store, "a/update", {"status": "IN_PROGRESS", "statusDetails": {"s": "1"}})
    assert topics(progress) == ["a/update/accepted"]  # details only: no notification
    done = request(store, "a/update", {"status": "SUCCEEDED"})
    assert topics(done) == ["a/update/accepted", "notify", "notify-next"]
    assert done[2][1]["execution"]["jobId"] == "b"


def test_next_is_in_progress_first_then_queue_order() -> None:
    clock = Clock()
    store = JobStore(clock=clock)
    store.create_job("a", [THING], {})
    clock.now += 1
    store.create_job("b", [THING], {})
    request(store, "b/update", {"status": "IN_PROGRESS"})
    assert request(store, "$next/get", {})[0][1]["execution"]["jobId"] == "b"
    pending = request(store, "get", {})[0][1]
    assert [s["jobId"] for s in pending["inProgressJobs"]] == ["b"]
    assert [s["jobId"] for s in pending["queuedJobs"]] == ["a"]


def test_list_notification_holds_at_most_15_executions() -> None:
    store = JobStore(clock=Clock())
    for n in range(20):
        messages = store.create_job(f"j{n}", [THING], {})
    listed = next(m.payload for m in messages if m.topic.endswith("/notify"))
    assert len(listed["jobs"]["QUEUED"]) == 15


def test_a_step_timer_is_restarted_by_progress_and_expires() -> None:
    clock = Clock()
    store = JobStore(clock=clock, seconds_per_minute=1.0)
    store.create_job("a", [THING], {})
    request(store, "start-next", {"stepTimeoutInMinutes": 2})
    clock.now += 1.5
    request(store, "a/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 2})
    clock.now += 1.5
    assert store.expire() == []
    clock.now += 1
    assert [m.topic.rsplit("/", 1)[1] for m in store.expire()] == ["notify", "notify-next"]
    assert store.execution("a", THING).status == "TIMED_OUT"


@pytest.mark.parametrize(
    ("job_id", "document", "message"),
    [
        ("bad id", {}, "job id 'bad id' is not allowed"),
        ("a", {"blob": "x" * 40_000}, "over AWS's 32768"),
    ],
)
def test_create_refuses_what_aws_refuses(
    job_id: str, document: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        JobStore().create_job(job_id, [THING], document)


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({f"k{n}": "v" for n in range(11)}, "11 entries, over AWS's 10"),
        ({"bad key": "v"}, "key 'bad key' is not allowed"),
        ({"k": ""}, "0 characters"),
        ({"k": "x" * 1025}, "1025 characters"),
        ({"k": "a\nb"}, "control character"),
    ],
)
def test_status_details_limits(details: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPayload, match=message):
        validate_status_details(details)


def test_status_details_numbers_become_strings() -> None:
    assert validate_status_details({"percent": 40}) == {"percent": "40"}
