"""The emulator's Jobs data: jobs, their executions per thing, and the AWS rules that move them.

Pure and synchronous, like :mod:`ancsync.emulator.shadow_documents`: :class:`JobStore` takes a
device request (thing, topic rest, payload) or an operator call and returns the messages the
service must publish, replies and notifications, in order. Times are epoch seconds from the
``clock`` given; a timeout of N minutes lasts ``N * seconds_per_minute`` seconds (60 on AWS; tests
shorten it), and :meth:`JobStore.expire` turns the executions whose timer ran out to TIMED_OUT.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ancsync.errors import ConfigError, InvalidPayload
from ancsync.jobs.models import validate_status_details
from ancsync.topics import JobsTopics, validate_thing_name

__all__ = [
    "DEVICE_STATUSES",
    "PENDING_STATUSES",
    "Execution",
    "Job",
    "JobStore",
    "JobsError",
    "JobsMessage",
]

JobStatus = Literal[
    "QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED"
]
PENDING_STATUSES = frozenset({"QUEUED", "IN_PROGRESS"})
#: The statuses a device may set with UpdateJobExecution.
DEVICE_STATUSES = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"})
ALL_STATUSES = frozenset(JobStatus.__args__)  # type: ignore[attr-defined]

MAX_DOCUMENT_CHARS = 32_768
MAX_LIST_ENTRIES = 15
MIN_TIMEOUT_MINUTES, MAX_TIMEOUT_MINUTES = 1, 10_080
_JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class JobsError(Exception):
    """A request the Jobs service rejects: the AWS error ``code`` and a ``message``.

    ``execution_state`` is sent along for InvalidStateTransition and VersionMismatch.
    """

    def __init__(
        self, code: str, message: str, execution_state: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.execution_state = execution_state


@dataclass(frozen=True)
class JobsMessage:
    """One message the service publishes: a reply or a notification."""

    topic: str
    payload: dict[str, Any]


@dataclass
class Job:
    """A job: its document, its target things and its in-progress timeout."""

    job_id: str
    document: dict[str, Any]
    targets: tuple[str, ...]
    created_at: int
    in_progress_timeout_minutes: int | None = None
    status: Literal["IN_PROGRESS", "CANCELED", "COMPLETED"] = "IN_PROGRESS"
    force_canceled: bool = False


@dataclass
class Execution:
    """One thing's execution of a job, with its timers (``None``: not running)."""

    job_id: str
    thing_name: str
    queued_at: int
    status: JobStatus = "QUEUED"
    status_details: dict[str, str] = field(default_factory=dict)
    started_at: int | None = None
    last_updated_at: int = 0
    version_number: int = 1
    execution_number: int = 1
    step_deadline: float | None = None
    in_progress_deadline: float | None = None
    force_canceled: bool = False
    #: Every state the execution went through after QUEUED, oldest first (for tests and the
    #: console: what the device reported, in which order).
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        """QUEUED or IN_PROGRESS."""
        return self.status in PENDING_STATUSES

    def state(self) -> dict[str, Any]:
        """The JobExecutionState: status, statusDetails, versionNumber."""
        return {
            "status": self.status,
            "statusDetails": dict(self.status_details),
            "versionNumber": self.version_number,
        }

    def summary(self) -> dict[str, Any]:
        """The JobExecutionSummary of the notify and get replies."""
        summary: dict[str, Any] = {
            "jobId": self.job_id,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version_number,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            summary["startedAt"] = self.started_at
        return summary


def _timeout_minutes(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobsError("InvalidRequest", f"{what} must be a whole number of minutes")
    if not MIN_TIMEOUT_MINUTES <= value <= MAX_TIMEOUT_MINUTES:
        raise JobsError(
            "InvalidRequest",
            f"{what} {value} is out of range {MIN_TIMEOUT_MINUTES}..{MAX_TIMEOUT_MINUTES}",
        )
    return value


def check_status_details(details: Any) -> dict[str, str]:
    """``details`` if it is a valid statusDetails map; else a JobsError InvalidRequest."""
    if not isinstance(details, dict) or not all(isinstance(v, str) for v in details.values()):
        raise JobsError("InvalidRequest", "statusDetails must be an object of strings")
    try:
        return validate_status_details(details)
    except InvalidPayload as exc:
        raise JobsError("InvalidRequest", str(exc)) from None


class JobStore:
    """Every job and execution of the emulator, and the Jobs API over them (see module doc)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, seconds_per_minute: float = 60.0
    ) -> None:
        self._clock = clock
        self.seconds_per_minute = seconds_per_minute
        self.jobs: dict[str, Job] = {}
        # Per thing, its executions in queue order.
        self._executions: dict[str, list[Execution]] = {}

    def _now(self) -> int:
        return int(self._clock())

    # -- lookups ---------------------------------------------------------------------------

    def executions(self, thing_name: str) -> list[Execution]:
        """The executions of ``thing_name``, in queue order."""
        return list(self._executions.get(thing_name, ()))

    def execution(self, job_id: str, thing_name: str) -> Execution:
        """The execution of ``job_id`` on ``thing_name``; JobsError ResourceNotFound if none."""
        for execution in self._executions.get(thing_name, ()):
            if execution.job_id == job_id:
                return execution
        raise JobsError("ResourceNotFound", f"no execution of job {job_id!r} on {thing_name!r}")

    def _pending(self, thing_name: str) -> list[Execution]:
        """Pending executions: IN_PROGRESS first, then QUEUED, each in queue order."""
        pending = [e for e in self._executions.get(thing_name, ()) if e.pending]
        return sorted(pending, key=lambda e: (e.status != "IN_PROGRESS", e.queued_at))

    def _next(self, thing_name: str) -> Execution | None:
        pending = self._pending(thing_name)
        return pending[0] if pending else None

    def _execution_payload(self, execution: Execution, *, document: bool) -> dict[str, Any]:
        # A JobExecution is its summary plus the thing, status and details.
        payload = execution.summary()
        payload["thingName"] = execution.thing_name
        payload.update(execution.state())
        deadlines = [d for d in (execution.step_deadline, execution.in_progress_deadline) if d]
        if deadlines and execution.pending:
            payload["approximateSecondsBeforeTimedOut"] = max(
                0, int(min(deadlines) - self._clock())
            )
        if document:
            payload["jobDocument"] = self.jobs[execution.job_id].document
        return payload

    # -- notifications ---------------------------------------------------------------------

    def _head(self, thing_name: str) -> tuple[str, str] | None:
        head = self._next(thing_name)
        return None if head is None else (head.job_id, head.status)

    def _notifications(
        self, thing_name: str, head_before: tuple[str, str] | None, status_changed: bool
    ) -> list[JobsMessage]:
        topics = JobsTopics(thing_name)
        messages = []
        now = self._now()
        if status_changed:
            jobs: dict[str, list[dict[str, Any]]] = {}
            for execution in self._pending(thing_name)[:MAX_LIST_ENTRIES]:
                jobs.setdefault(execution.status, []).append(execution.summary())
            messages.append(JobsMessage(topics.notify, {"timestamp": now, "jobs": jobs}))
        if self._head(thing_name) != head_before:
            head = self._next(thing_name)
            payload: dict[str, Any] = {"timestamp": now}
            if head is not None:
                payload["execution"] = self._execution_payload(head, document=True)
            messages.append(JobsMessage(topics.notify_next, payload))
        return messages

    def _set_status(self, execution: Execution, status: JobStatus, now: int) -> None:
        if execution.status == "QUEUED" and status == "IN_PROGRESS":
            execution.started_at = now
            minutes = self.jobs[execution.job_id].in_progress_timeout_minutes
            if minutes is not None:
                execution.in_progress_deadline = self._clock() + minutes * self.seconds_per_minute
        execution.status = status
        if not execution.pending:
            execution.step_deadline = execution.in_progress_deadline = None
        execution.last_updated_at = now
        execution.version_number += 1

    def _changed(
        self, execution: Execution, status: JobStatus, details: dict[str, str] | None
    ) -> list[JobsMessage]:
        """Apply a status change to ``execution``; the notifications it causes."""
        head = self._head(execution.thing_name)
        changed = status != execution.status
        self._set_status(execution, status, self._now())
        if details is not None:
            execution.status_details = details
        execution.history.append(execution.state())
        self._complete_job(execution.job_id)
        return self._notifications(execution.thing_name, head, changed)

    def _complete_job(self, job_id: str) -> None:
        job = self.jobs[job_id]
        if job.status == "IN_PROGRESS" and not any(
            self.execution(job_id, thing).pending for thing in job.targets
        ):
            job.status = "COMPLETED"

    # -- operator API ----------------------------------------------------------------------

    def create_job(
        self,
        job_id: str,
        targets: Iterable[str],
        document: dict[str, Any],
        *,
        in_progress_timeout_minutes: int | None = None,
    ) -> list[JobsMessage]:
        """Create ``job_id`` for each thing of ``targets``; the notifications to publish.

        Raises ConfigError naming the problem: a bad or taken job id, a bad thing name, a
        document over 32 KB or not an object, a timeout out of range.
        """
        if not _JOB_ID.fullmatch(job_id):
            raise ConfigError(
                f"job id {job_id[:80]!r} is not allowed: 1-64 letters, digits, '_' or '-'"
            )
        if job_id in self.jobs:
            raise ConfigError(f"job {job_id!r} already exists; choose another job id")
        things = tuple(dict.fromkeys(validate_thing_name(thing) for thing in targets))
        if not things:
            raise ConfigError("a job needs at least one target thing")
        if not isinstance(document, dict):
            raise ConfigError("the job document must be a JSON object")
        size = len(orjson.dumps(document).decode())
        if size > MAX_DOCUMENT_CHARS:
            raise ConfigError(
                f"the job document is {size} characters, over AWS's {MAX_DOCUMENT_CHARS}; "
                "put large content in a file the document names"
            )
        if in_progress_timeout_minutes is not None:
            try:
                _timeout_minutes(in_progress_timeout_minutes, "inProgressTimeoutInMinutes")
            except JobsError as exc:
                raise ConfigError(exc.message) from None
        now = self._now()
        self.jobs[job_id] = Job(job_id, document, things, now, in_progress_timeout_minutes)
        messages = []
        for thing in things:
            head = self._head(thing)
            self._executions.setdefault(thing, []).append(
                Execution(job_id, thing, queued_at=now, last_updated_at=now)
            )
            messages += self._notifications(thing, head, status_changed=True)
        return messages

    def _job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise ConfigError(f"there is no job {job_id!r}; `ancsync jobs list` shows the jobs")
        return self.jobs[job_id]

    def cancel_execution(self, job_id: str, thing_name: str, *, force: bool) -> list[JobsMessage]:
        """Cancel one execution: QUEUED always, IN_PROGRESS only with ``force``.

        Raises JobsError InvalidStateTransition for an IN_PROGRESS one without force or a
        terminal one, ResourceNotFound for none.
        """
        execution = self.execution(job_id, thing_name)
        if not execution.pending or (execution.status == "IN_PROGRESS" and not force):
            raise JobsError(
                "InvalidStateTransition",
                f"cannot cancel an execution that is {execution.status}"
                + ("" if force else "; use force to cancel one IN_PROGRESS"),
                execution.state(),
            )
        execution.force_canceled = force
        return self._changed(execution, "CANCELED", None)

    def cancel_job(self, job_id: str, *, force: bool) -> list[JobsMessage]:
        """Cancel ``job_id``: its QUEUED executions, and the IN_PROGRESS ones with ``force``."""
        job = self._job(job_id)
        if job.status == "CANCELED" and (job.force_canceled or not force):
            raise ConfigError(
                f"job {job_id!r} is already canceled"
                + ("" if job.force_canceled else "; cancel it with force to stop running ones")
            )
        job.status, job.force_canceled = "CANCELED", force
        messages = []
        for thing in job.targets:
            execution = self.execution(job_id, thing)
            if execution.status == "QUEUED" or (execution.status == "IN_PROGRESS" and force):
                execution.force_canceled = force
                messages += self._changed(execution, "CANCELED", None)
        return messages

    def describe_job(self, job_id: str) -> dict[str, Any]:
        """DescribeJob: the job, its document and how many executions are in each status."""
        job = self._job(job_id)
        counts = {status: 0 for status in sorted(ALL_STATUSES)}
        for thing in job.targets:
            counts[self.execution(job_id, thing).status] += 1
        return {
            "jobId": job.job_id,
            "status": job.status,
            "forceCanceled": job.force_canceled,
            "targets": list(job.targets),
            "document": job.document,
            "createdAt": job.created_at,
            "executions": {thing: self.execution(job_id, thing).state() for thing in job.targets},
            "processDetails": counts,
        }

    def list_jobs(self) -> list[dict[str, Any]]:
        """ListJobs: id, status and creation time of every job."""
        return [
            {"jobId": job.job_id, "status": job.status, "createdAt": job.created_at}
            for job in self.jobs.values()
        ]

    # -- timeouts --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The clock time of the earliest running timer, or None."""
        deadlines = [
            deadline
            for executions in self._executions.values()
            for execution in executions
            for deadline in (execution.step_deadline, execution.in_progress_deadline)
            if deadline is not None
        ]
        return min(deadlines, default=None)

    def expire(self) -> list[JobsMessage]:
        """Time out every execution whose step or in-progress timer has run out."""
        now = self._clock()
        messages = []
        for executions in self._executions.values():
            for execution in executions:
                deadlines = (execution.step_deadline, execution.in_progress_deadline)
                if any(d is not None and d <= now for d in deadlines):
                    messages += self._changed(execution, "TIMED_OUT", None)
        return messages

    # -- device API ------------------------------------------------------------------------

    def handle(self, thing_name: str, rest: str, payload: bytes) -> list[JobsMessage]:
        """Answer a device's publish on ``$aws/things/{thing}/jobs/{rest}``.

        Returns the accepted or rejected reply, then the notifications the request caused.
        """
        topic = f"{JobsTopics(thing_name).prefix}/{rest}"
        request: dict[str, Any] = {}
        try:
            request = _request_of(payload)
            reply, notifications = self._dispatch(thing_name, rest, request)
        except JobsError as exc:
            rejected: dict[str, Any] = {"timestamp": self._now(), "code": exc.code}
            rejected["message"] = exc.message
            if exc.execution_state is not None:
                rejected["executionState"] = exc.execution_state
            _echo_token(request, rejected)
            return [JobsMessage(f"{topic}/rejected", rejected)]
        reply["timestamp"] = self._now()
        _echo_token(request, reply)
        return [JobsMessage(f"{topic}/accepted", reply), *notifications]

    def _dispatch(
        self, thing: str, rest: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], list[JobsMessage]]:
        if rest == "get":
            pending = self._pending(thing)
            return {
                "inProgressJobs": [e.summary() for e in pending if e.status == "IN_PROGRESS"],
                "queuedJobs": [e.summary() for e in pending if e.status == "QUEUED"],
            }, []
        if rest == "start-next":
            return self._start_next(thing, request)
        job_id, _, operation = rest.partition("/")
        if operation == "get" and (job_id == "$next" or _JOB_ID.fullmatch(job_id)):
            return self._describe(thing, job_id, request), []
        if operation == "update" and _JOB_ID.fullmatch(job_id):
            return self._update(thing, job_id, request)
        raise JobsError("InvalidTopic", f"jobs/{rest} is not a Jobs API topic")

    def _start_next(
        self, thing: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], list[JobsMessage]]:
        details = request.get("statusDetails")
        if details is not None:
            details = check_status_details(details)
        step = request.get("stepTimeoutInMinutes")
        if step is not None:
            step = _timeout_minutes(step, "stepTimeoutInMinutes")
        execution = self._next(thing)
        if execution is None:
            return {}, []
        messages = []
        if execution.status == "QUEUED":
            messages = self._changed(execution, "IN_PROGRESS", details)
        if step is not None:
            execution.step_deadline = self._clock() + step * self.seconds_per_minute
        return {"execution": self._execution_payload(execution, document=True)}, messages

    def _describe(self, thing: str, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        if job_id == "$next":
            execution = self._next(thing)
            if execution is None:
                return {}
        else:
            execution = self.execution(job_id, thing)
        number = request.get("executionNumber")
        if number is not None and number != execution.execution_number:
            raise JobsError("ResourceNotFound", f"no execution number {number} of {job_id!r}")
        if not execution.pending:
            raise JobsError(
                "TerminalStateReached", f"the execution of {job_id!r} is {execution.status}"
            )
        document = request.get("includeJobDocument", True) is not False
        return {"execution": self._execution_payload(execution, document=document)}

    def _update(
        self, thing: str, job_id: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], list[JobsMessage]]:
        execution = self.execution(job_id, thing)
        status = request.get("status")
        if status not in DEVICE_STATUSES:
            raise JobsError(
                "InvalidRequest",
                f"status {status!r} is not one a device may set: {sorted(DEVICE_STATUSES)}",
            )
        details = request.get("statusDetails")
        if details is not None:
            details = check_status_details(details)
        step = request.get("stepTimeoutInMinutes")
        if step is not None:
            step = _timeout_minutes(step, "stepTimeoutInMinutes")
        number = request.get("executionNumber")
        if number is not None and number != execution.execution_number:
            raise JobsError("ResourceNotFound", f"no execution number {number} of {job_id!r}")
        if not execution.pending:
            raise JobsError(
                "InvalidStateTransition",
                f"the execution is {execution.status}; it cannot become {status}",
                execution.state(),
            )
        expected = request.get("expectedVersion")
        if expected is not None and expected != execution.version_number:
            raise JobsError(
                "VersionMismatch",
                f"expected {expected}, current {execution.version_number}",
                execution.state(),
            )
        messages = self._changed(execution, status, details)
        if status == "IN_PROGRESS" and step is not None:
            # A progress report with a new value restarts the step timer.
            execution.step_deadline = self._clock() + step * self.seconds_per_minute
        reply: dict[str, Any] = {}
        if request.get("includeJobExecutionState") is True:
            reply["executionState"] = execution.state()
        if request.get("includeJobDocument") is True:
            reply["jobDocument"] = self.jobs[job_id].document
        return reply, messages


def _request_of(payload: bytes) -> dict[str, Any]:
    try:
        decoded = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        raise JobsError("InvalidJson", "the payload is not valid UTF-8 JSON") from None
    if not isinstance(decoded, dict):
        raise JobsError("InvalidJson", "the payload must be a JSON object")
    return decoded


def _echo_token(request: dict[str, Any], reply: dict[str, Any]) -> None:
    token = request.get("clientToken")
    if isinstance(token, str):
        reply["clientToken"] = token
