"""The device side of AWS IoT Jobs: one job at a time, status updates that survive a restart.

:class:`DeviceJobs` is a :class:`~ancsync.lifecycle.Component` over an
:class:`~ancsync.connection.IoTConnection`::

    jobs = DeviceJobs(iot)

    @jobs.on("update_noise_model", model=NoiseModelJob)
    async def update(job: Job[NoiseModelJob]) -> None:
        await job.progress(step="download", percent=40)
        ...                                   # returning succeeds the job, raising fails it

    async with iot, jobs:
        async for job in jobs:                # the jobs no handler takes
            await job.start()
            await job.succeed({"result": "ok"})

How it works:

- it subscribes to ``notify``, ``notify-next`` and the replies of its requests, and after every
  (re)connect first delivers the status updates still in its journal, then asks for the next
  pending execution (``$next``). IN_PROGRESS executions come first, so one it was running before
  a restart comes back, with :attr:`Job.resumed` set;
- every status update (:meth:`Job.start`, :meth:`Job.progress`, :meth:`Job.succeed`,
  :meth:`Job.fail`, :meth:`Job.reject`) is checked against AWS's limits (nothing is sent if it is
  wrong), written to the :class:`~ancsync.jobs.journal.UpdateJournal` with its
  ``expectedVersion``, then published; the call returns when the service answered. Updates are
  delivered one at a time in order, again after a reconnect or restart. A replayed update the
  service had already applied comes back as VersionMismatch with the state it asked for: that
  counts as delivered, so nothing is reported twice;
- a rejection reaches the caller as :class:`~ancsync.errors.VersionMismatch`,
  :class:`~ancsync.errors.TerminalStateReached` or :class:`~ancsync.errors.JobRejected`; it is
  never retried;
- when the operator cancels the running job (it leaves the pending list), its handler is
  cancelled and :attr:`Job.canceled` is set.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import orjson
from anyio.abc import TaskGroup, TaskStatus
from pydantic import BaseModel, ValidationError

from ancsync.config import default_data_dir
from ancsync.connection import IoTConnection
from ancsync.errors import (
    ConfigError,
    JobRejected,
    NotStarted,
    TerminalStateReached,
    VersionMismatch,
)
from ancsync.jobs.journal import PendingUpdate, UpdateJournal
from ancsync.jobs.models import JobExecution, JobStatus, validate_status_details
from ancsync.lifecycle import Component
from ancsync.models import new_id
from ancsync.mqtt.outbox import Lane
from ancsync.status import JobsStatus
from ancsync.topics import JobsTopics

__all__ = ["DeviceJobs", "Job", "JobHandler"]

log = logging.getLogger("ancsync.jobs.client")

DocumentT = TypeVar("DocumentT")
JobHandler = Callable[["Job[Any]"], Awaitable[None]]
"""``async def handler(job)``: returning succeeds the job, raising fails it with the message."""

_TERMINAL_BY_DEVICE = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED)
MIN_STEP_MINUTES, MAX_STEP_MINUTES = 1, 10_080


class Job(Generic[DocumentT]):
    """One job execution handed to the application. Report on it with the methods below.

    ``document`` is the job document: the handler's pydantic model when one was given, else the
    JSON object. ``resumed`` is true when the execution was already IN_PROGRESS when this device
    process received it (it started it before a restart). ``canceled`` is set when the operator
    canceled it (or it timed out) meanwhile.
    """

    def __init__(self, client: DeviceJobs, execution: JobExecution, document: DocumentT) -> None:
        self._client = client
        self.job_id = execution.job_id
        self.document = document
        self.raw_document = execution.job_document
        self.operation: str | None = execution.job_document.get("operation")
        self.resumed = execution.status is JobStatus.IN_PROGRESS
        self.status = execution.status
        self.status_details = dict(execution.status_details)
        #: The versionNumber the next update expects.
        self.version = execution.version_number
        self.canceled = anyio.Event()
        self.finished = False
        self._scope = anyio.CancelScope()

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, {self.status}, version={self.version})"

    async def start(self, *, step_timeout_minutes: int | None = None, **details: Any) -> None:
        """Mark the execution IN_PROGRESS (nothing changes if it already is)."""
        await self._update(JobStatus.IN_PROGRESS, details, step_timeout_minutes)

    async def progress(
        self,
        step: str | None = None,
        percent: float | None = None,
        *,
        step_timeout_minutes: int | None = None,
        **details: Any,
    ) -> None:
        """Report progress (IN_PROGRESS with ``step``, ``percent`` and ``details``).

        ``step_timeout_minutes`` restarts the step timer: the service times the execution out
        if no other update comes in that many minutes.
        """
        if step is not None:
            details["step"] = step
        if percent is not None:
            details["percent"] = f"{percent:g}"
        await self._update(JobStatus.IN_PROGRESS, details, step_timeout_minutes)

    async def succeed(self, details: Mapping[str, Any] | None = None) -> None:
        """Finish the execution as SUCCEEDED."""
        await self._update(JobStatus.SUCCEEDED, dict(details or {}), None)

    async def fail(self, reason: str, details: Mapping[str, Any] | None = None) -> None:
        """Finish the execution as FAILED, with ``reason`` in its statusDetails."""
        await self._update(JobStatus.FAILED, {**(details or {}), "reason": reason}, None)

    async def reject(self, reason: str, details: Mapping[str, Any] | None = None) -> None:
        """Refuse the job (REJECTED), e.g. a document this device cannot apply."""
        await self._update(JobStatus.REJECTED, {**(details or {}), "reason": reason}, None)

    async def _update(
        self, status: JobStatus, details: Mapping[str, Any], step_timeout: int | None
    ) -> None:
        if self.finished:
            raise TerminalStateReached(
                "TerminalStateReached", f"job {self.job_id} is already {self.status}"
            )
        checked = validate_status_details(_one_line(details))
        if step_timeout is not None and not MIN_STEP_MINUTES <= step_timeout <= MAX_STEP_MINUTES:
            raise ConfigError(
                f"step_timeout_minutes {step_timeout} is out of AWS's range "
                f"{MIN_STEP_MINUTES}..{MAX_STEP_MINUTES}"
            )
        request: dict[str, Any] = {
            "status": status.value,
            "statusDetails": checked,
            "expectedVersion": self.version,
            "includeJobExecutionState": True,
        }
        if step_timeout is not None:
            request["stepTimeoutInMinutes"] = step_timeout
        self.version += 1
        if status in _TERMINAL_BY_DEVICE:
            self.finished = True
        try:
            await self._client._submit(self.job_id, request)
        except JobRejected:
            self.finished = True
            raise
        self.status, self.status_details = status, checked


def _one_line(details: Mapping[str, Any]) -> dict[str, Any]:
    """Reasons often come from exception messages: keep their first line."""
    return {k: v.splitlines()[0] if isinstance(v, str) and v else v for k, v in details.items()}


# One DeviceJobs per connection: each would be offered, and start, every job of the thing.
_CONNECTIONS_WITH_JOBS: weakref.WeakSet[IoTConnection] = weakref.WeakSet()


class DeviceJobs(Component):
    """The jobs of this device's thing (see the module docstring for the workflow).

    ``data_dir`` holds the journal of status updates (default: the connection's ``data_dir``
    setting, else the per-thing state directory). ``reply_timeout`` bounds the wait for one
    answer: an update still unanswered after it is sent again, ``reply_timeout`` later while
    connected and at once after a reconnect, until the service answers.
    """

    name = "jobs"

    def __init__(
        self,
        iot: IoTConnection,
        *,
        data_dir: Path | str | None = None,
        reply_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        if iot in _CONNECTIONS_WITH_JOBS:
            raise ConfigError(
                f"the connection of {iot.thing_name} already has a DeviceJobs (a "
                "DataSyncOrchestrator makes one: register with orchestrator.on_job()); two "
                "would both take every job"
            )
        _CONNECTIONS_WITH_JOBS.add(iot)
        self._iot = iot
        self.thing_name = iot.thing_name
        self.topics = JobsTopics(self.thing_name)
        self._data_dir = Path(
            data_dir or iot.settings.data_dir or default_data_dir(self.thing_name)
        )
        self.reply_timeout = reply_timeout
        self._handlers: dict[str, tuple[JobHandler, type[BaseModel] | None]] = {}
        self._journal: UpdateJournal | None = None
        self._waiting: dict[str, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        # The answers of the updates submitted in this process, by clientToken.
        self._outcomes: dict[str, JobRejected | None] = {}
        self._waiting_outcome: dict[str, anyio.Event] = {}
        self._flush_lock = anyio.Lock()
        self._current: Job[Any] | None = None
        self._jobs_send, self._jobs_receive = anyio.create_memory_object_stream[Job[Any]](math.inf)
        self._task_group: TaskGroup | None = None
        self._unanswered = 0  # updates in the journal
        self._counts = dict.fromkeys(
            (
                "jobs_received",
                "jobs_resumed",
                "updates_sent",
                "updates_resent",
                "updates_accepted",
                "updates_rejected",
            ),
            0,
        )
        self._outcome_counts = dict.fromkeys(("succeeded", "failed", "rejected", "canceled"), 0)
        self._last_error: str | None = None
        self._sent: set[str] = set()  # tokens of journal updates sent and not yet answered

    # -- registration and iteration --------------------------------------------------------

    def on(
        self, operation: str, model: type[BaseModel] | None = None
    ) -> Callable[[JobHandler], JobHandler]:
        """Register ``handler(job)`` for the jobs whose document's ``operation`` is this one.

        With ``model``, ``job.document`` is the document validated into it; a document that
        does not validate rejects the job with the validation error.
        """

        def register(handler: JobHandler) -> JobHandler:
            self._handlers[operation] = (handler, model)
            return handler

        return register

    def __aiter__(self) -> AsyncIterator[Job[Any]]:
        """The jobs no handler takes, one at a time: the next comes once this one finished."""
        return self._jobs_receive.__aiter__()

    @property
    def current(self) -> Job[Any] | None:
        """The job being worked on, if any."""
        return self._current

    # -- lifecycle -------------------------------------------------------------------------

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        self._journal = await anyio.to_thread.run_sync(UpdateJournal, self._data_dir)
        self._unanswered = len(await self._journal.pending())
        routes = [
            self._iot.subscribe(self.topics.notify_next, self._on_next),
            self._iot.subscribe(self.topics.notify, self._on_list),
            *(self._iot.subscribe(f, self._on_reply) for f in self.topics.reply_filters),
        ]
        remove_hook = self._iot.add_connect_hook(self._on_connect)
        try:
            async with anyio.create_task_group() as tasks:
                self._task_group = tasks
                if self._iot.connected:
                    tasks.start_soon(self._on_connect)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            remove_hook()
            for route in routes:
                self._iot.unsubscribe(route)

    async def _shutdown(self) -> None:
        self._task_group = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    async def _on_connect(self) -> None:
        await self._flush()
        await self._ask_next()

    # -- requests and replies --------------------------------------------------------------

    async def _request(self, topic: str, body: dict[str, Any], token: str) -> dict[str, Any]:
        """Publish a request with ``token`` and return the reply (accepted or rejected)."""
        event, answer = anyio.Event(), list[dict[str, Any]]()
        self._waiting[token] = (event, answer)
        try:
            await self._iot.publish(topic, {**body, "clientToken": token}, lane=Lane.SHADOW)
            with anyio.fail_after(self.reply_timeout):
                await event.wait()
        finally:
            self._waiting.pop(token, None)
        return answer[0]

    def _on_reply(self, topic: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            _ignored(topic, f"a JSON {type(payload).__name__}, not an object")
            return
        waiter = self._waiting.get(str(payload.get("clientToken")))
        if waiter is not None:
            payload["_accepted"] = topic.endswith("/accepted")
            waiter[1].append(payload)
            waiter[0].set()

    async def _ask_next(self) -> None:
        try:
            reply = await self._request(self.topics.describe("$next"), {}, new_id())
        except TimeoutError:
            log.warning("no answer to the $next request of %s", self.thing_name)
            return
        if reply["_accepted"] and "execution" in reply:
            await self._offer(reply["execution"])

    async def _on_next(self, topic: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            _ignored(topic, f"a JSON {type(payload).__name__}, not an object")
        elif "execution" in payload:  # (none: no job is pending)
            await self._offer(payload["execution"])

    def _on_list(self, topic: str, payload: Any) -> None:
        pending = _pending_job_ids(payload)
        if pending is None:
            # Taking it for "no job pending" would end the running job: ignore it.
            _ignored(topic, 'not a list notification ({"jobs": {status: [{"jobId": ...}]}})')
            return
        job = self._current
        if job is None or job.finished:
            return
        if job.job_id not in pending:
            log.warning("job %s was canceled or removed by the operator", job.job_id)
            self._end(job, "canceled")

    # -- handing out jobs ------------------------------------------------------------------

    async def _offer(self, raw: dict[str, Any]) -> None:
        try:
            execution = JobExecution.model_validate(raw)
        except ValidationError as exc:
            log.warning("ignored a job execution that does not validate: %s", exc)
            return
        if self._current is not None or execution.status.terminal or self._task_group is None:
            return
        self._counts["jobs_received"] += 1
        operation = execution.job_document.get("operation")
        handler, model = self._handlers.get(str(operation), (None, None))
        document: Any = execution.job_document
        job: Job[Any] = Job(self, execution, document)
        self._current = job
        if job.resumed:
            self._counts["jobs_resumed"] += 1
        if model is not None:
            try:
                job.document = model.model_validate(execution.job_document)
            except ValidationError as exc:
                self._task_group.start_soon(self._reject_invalid, job, str(exc))
                return
        if handler is None:
            await self._jobs_send.send(job)
        else:
            self._task_group.start_soon(self._run_handler, job, handler)

    async def _reject_invalid(self, job: Job[Any], reason: str) -> None:
        try:
            await job.reject(f"the job document does not validate: {reason}")
        except JobRejected as exc:
            log.warning("could not reject job %s: %s", job.job_id, exc)

    async def _run_handler(self, job: Job[Any], handler: JobHandler) -> None:
        with job._scope:
            try:
                await handler(job)
                if not job.finished:
                    await job.succeed()
            except JobRejected as exc:
                log.warning("job %s: %s", job.job_id, exc)
            except Exception as exc:
                log.warning("the handler of job %s failed: %s", job.job_id, exc)
                if not job.finished:
                    try:
                        await job.fail(str(exc) or type(exc).__name__)
                    except JobRejected as rejected:
                        log.warning("could not fail job %s: %s", job.job_id, rejected)

    def _end(self, job: Job[Any], outcome: str) -> None:
        """``job`` is over (``outcome`` is ``canceled`` or the terminal status it reached):
        cancel its handler if it was canceled, then ask for the next one."""
        job.finished = True
        self._outcome_counts[outcome] += 1
        if outcome == "canceled":
            job.canceled.set()
            job._scope.cancel()
        if self._current is job:
            self._current = None
            if self._task_group is not None:
                self._task_group.start_soon(self._ask_next)

    # -- status updates --------------------------------------------------------------------

    async def _submit(self, job_id: str, request: dict[str, Any]) -> None:
        """Persist an UpdateJobExecution request of ``job_id``, deliver it, await the answer.

        Raises the typed rejection (see the module docstring); returns once accepted. While
        disconnected it waits: the update goes out after the reconnect.
        """
        if self._journal is None:
            raise NotStarted("the jobs component is not running; start it with `async with`")
        token = new_id()
        body = orjson.dumps({**request, "clientToken": token})
        done = anyio.Event()
        self._waiting_outcome[token] = done
        await self._journal.put(PendingUpdate(token, self.topics.update(job_id), body))
        self._unanswered += 1
        if self._iot.connected and self._task_group is not None:
            self._task_group.start_soon(self._flush)
        try:
            await done.wait()
        finally:
            self._waiting_outcome.pop(token, None)
        error = self._outcomes.pop(token, None)
        if error is not None:
            raise error

    async def _flush(self) -> None:
        """Deliver the journal's updates in order, each once answered; stop at a silence."""
        async with self._flush_lock:
            journal = self._journal
            if journal is None:
                return
            for update in await journal.pending():
                request = orjson.loads(update.payload)
                again = update.token in self._sent
                self._counts["updates_resent" if again else "updates_sent"] += 1
                self._sent.add(update.token)
                try:
                    reply = await self._request(update.topic, request, update.token)
                except TimeoutError:
                    self._last_error = (
                        f"no answer to update {update.token} within {self.reply_timeout} s"
                    )
                    log.warning("%s; it is sent again", self._last_error)
                    self._flush_later()
                    return
                error = _outcome(request, reply)
                await journal.done(update.token)
                self._sent.discard(update.token)
                self._unanswered -= 1
                if error is None:
                    self._counts["updates_accepted"] += 1
                else:
                    self._counts["updates_rejected"] += 1
                    self._last_error = str(error)
                self._settle(update.topic, request, error)
                waiter = self._waiting_outcome.get(update.token)
                if waiter is not None:
                    self._outcomes[update.token] = error
                    waiter.set()
                elif error is not None:
                    log.warning("a status update replayed after a restart: %s", error)

    def _flush_later(self) -> None:
        """Send the unanswered updates again after ``reply_timeout`` (a reconnect does it too)."""
        if self._task_group is not None:
            self._task_group.start_soon(self._flush_after, self.reply_timeout)

    async def _flush_after(self, delay: float) -> None:
        await anyio.sleep(delay)
        if self._iot.connected:
            await self._flush()

    def get_status(self) -> JobsStatus:
        """The current job, what was received, and the status updates by outcome."""
        job = self._current
        return {
            "running": self.running,
            "current_job": None if job is None else job.job_id,
            "current_status": None if job is None else job.status.value,
            "jobs_received": self._counts["jobs_received"],
            "jobs_resumed": self._counts["jobs_resumed"],
            "jobs_succeeded": self._outcome_counts["succeeded"],
            "jobs_failed": self._outcome_counts["failed"],
            "jobs_rejected": self._outcome_counts["rejected"],
            "jobs_canceled": self._outcome_counts["canceled"],
            "updates_unanswered": self._unanswered,
            "updates_sent": self._counts["updates_sent"],
            "updates_resent": self._counts["updates_resent"],
            "updates_accepted": self._counts["updates_accepted"],
            "updates_rejected": self._counts["updates_rejected"],
            "last_error": self._last_error,
        }

    def _settle(self, topic: str, request: dict[str, Any], error: JobRejected | None) -> None:
        """After an answer: the current job ends when it reached a terminal status."""
        job = self._current
        if job is None or topic != self.topics.update(job.job_id):
            return
        if isinstance(error, TerminalStateReached):
            self._end(job, "canceled")
        elif error is None and JobStatus(request["status"]).terminal:
            self._end(job, JobStatus(request["status"]).value.lower())


def _outcome(request: dict[str, Any], reply: dict[str, Any]) -> JobRejected | None:
    """None when ``request`` took effect, else the typed rejection.

    A VersionMismatch or InvalidStateTransition whose execution state is exactly what the request
    asked for means it took effect already (a replay after a crash): delivered, not an error.
    """
    if reply["_accepted"]:
        return None
    code = str(reply.get("code"))
    message = str(reply.get("message", ""))
    state = reply.get("executionState")
    if isinstance(state, dict) and _applied(request, state):
        return None
    if code == "VersionMismatch":
        return VersionMismatch(code, message, state)
    status = state.get("status") if isinstance(state, dict) else None
    if code == "TerminalStateReached" or (
        code == "InvalidStateTransition" and status is not None and JobStatus(status).terminal
    ):
        return TerminalStateReached(code, message, state)
    return JobRejected(code, message, state if isinstance(state, dict) else None)


def _applied(request: dict[str, Any], state: dict[str, Any]) -> bool:
    return bool(
        state.get("status") == request["status"]
        and state.get("statusDetails", {}) == request["statusDetails"]
        and state.get("versionNumber") == request["expectedVersion"] + 1
    )


def _ignored(topic: str, problem: str) -> None:
    log.warning(
        "ignored a message on %s: %s. Nothing changed; is something other than the Jobs "
        "service publishing on this topic?",
        topic,
        problem,
    )


def _pending_job_ids(payload: Any) -> set[str] | None:
    """The job ids of a ListNotification (``notify``), or ``None`` if it is not one."""
    jobs = payload.get("jobs") if isinstance(payload, dict) else None
    if not isinstance(jobs, dict):
        return None
    pending: set[str] = set()
    for summaries in jobs.values():
        if not isinstance(summaries, list):
            return None
        for summary in summaries:
            job_id = summary.get("jobId") if isinstance(summary, dict) else None
            if not isinstance(job_id, str):
                return None
            pending.add(job_id)
    return pending
