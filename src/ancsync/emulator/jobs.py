"""The emulator's AWS IoT Jobs service: the device MQTT API, notifications, timeouts, operators.

A thin layer over the pure :class:`~ancsync.emulator.job_executions.JobStore`:

- the broker hands every device publish under ``$aws/things/{thing}/jobs/`` (after the device
  policy allowed it) to :meth:`JobsService.handle_request`; the store answers on the request's
  ``/accepted`` or ``/rejected`` topic, then ``/notify`` and ``/notify-next`` as AWS sends them;
- operators create, list, describe and cancel jobs in process (:meth:`JobsService.create_job`...)
  or over MQTT with the operator certificate: a JSON request on ``ancsync/emulator/jobs/{op}``
  (``op``: create, list, describe, cancel) is answered on ``.../{op}/accepted`` or
  ``.../{op}/rejected`` with the request's ``clientToken``. The device policy gives devices no
  access to these topics. ``ancsync jobs`` uses them;
- while running, the service times out the executions whose step or in-progress timer ran out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.job_executions import JobsError, JobsMessage, JobStore
from ancsync.emulator.service import EmulatorService
from ancsync.errors import AncSyncError, NotStarted
from ancsync.topics import OPERATOR_JOBS_PREFIX, split_jobs_topic

__all__ = ["JobsService"]

log = logging.getLogger("ancsync.emulator.jobs")

_OPERATIONS = ("create", "list", "describe", "cancel")


class JobsService(EmulatorService):
    """The AWS IoT Jobs service of the emulator (reference: ``docs/jobs.md``).

    ``clock`` gives the epoch seconds of every timestamp; a timeout of N minutes lasts
    ``N * seconds_per_minute`` seconds (tests make minutes short). ``store`` holds the jobs;
    they outlive a stop and restart of the service.
    """

    name = "jobs"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        seconds_per_minute: float = 60.0,
        store: JobStore | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.store = store or JobStore(clock=clock, seconds_per_minute=seconds_per_minute)
        self._clock = clock
        self._broker: EmbeddedBroker | None = None
        self._timers_changed = anyio.Event()
        self._published = anyio.Event()

    async def wait_for_status(self, job_id: str, thing_name: str, *statuses: str) -> str:
        """Wait until the execution of ``job_id`` on ``thing_name`` has one of ``statuses``.

        Returns that status; bound the wait with ``anyio.fail_after``.
        """
        while True:
            published = self._published
            status = self.store.execution(job_id, thing_name).status
            if status in statuses:
                return status
            await published.wait()

    async def wait_published(self) -> None:
        """Wait until the service next publishes: a job created or canceled, an execution's
        status changed or timed out, a reply (what the console's Jobs panel waits for)."""
        await self._published.wait()

    def attach(self, broker: EmbeddedBroker) -> None:
        """Answer the jobs topics of ``broker`` and the operator API; publish through it."""
        self._broker = broker
        broker.add_reserved_route(
            lambda topic: split_jobs_topic(topic) is not None, self.handle_request
        )
        broker.add_publish_listener(self._on_operator_publish)

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Time out executions when their timers run out, until cancelled."""
        if self._broker is None:
            raise NotStarted("attach the jobs service to a broker before running it")
        task_status.started()
        while True:
            deadline = self.store.next_deadline()
            wait = math.inf if deadline is None else max(0.0, deadline - self._clock())
            with anyio.move_on_after(wait):
                await self._timers_changed.wait()
            self._timers_changed = anyio.Event()
            await self._publish(self.store.expire())

    async def _shutdown(self) -> None:
        return None

    # -- device API ------------------------------------------------------------------------

    async def handle_request(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        """Answer a device publish under ``$aws/things/{thing}/jobs/`` (a ReservedTopicHandler)."""
        split = split_jobs_topic(topic)
        if split is None:
            return
        if not self.running:
            log.warning("jobs service not running; dropped %r from %r", topic, identity)
            return
        thing, rest = split
        try:
            messages = self.store.handle(thing, rest, payload)
        except Exception:
            log.exception("the jobs request on %s failed", topic)
            error = JobsError("InternalError", "internal service failure")
            rejection = _rejection(error, payload, self._clock())
            messages = [JobsMessage(f"{topic}/rejected", rejection)]
        self._timers_changed.set()
        await self._publish(messages)

    # -- operator API ----------------------------------------------------------------------

    async def create_job(
        self,
        job_id: str,
        targets: Iterable[str],
        document: dict[str, Any],
        *,
        in_progress_timeout_minutes: int | None = None,
    ) -> dict[str, Any]:
        """CreateJob for the things of ``targets``; notifies them. Returns DescribeJob.

        Raises ConfigError for a bad or taken job id, thing name, document or timeout.
        """
        messages = self.store.create_job(
            job_id, targets, document, in_progress_timeout_minutes=in_progress_timeout_minutes
        )
        await self._publish(messages)
        return self.store.describe_job(job_id)

    async def cancel_job(self, job_id: str, *, force: bool = False) -> dict[str, Any]:
        """CancelJob: QUEUED executions, IN_PROGRESS ones only with ``force``; DescribeJob."""
        await self._publish(self.store.cancel_job(job_id, force=force))
        self._timers_changed.set()
        return self.store.describe_job(job_id)

    async def cancel_execution(
        self, job_id: str, thing_name: str, *, force: bool = False
    ) -> dict[str, Any]:
        """CancelJobExecution; JobsError InvalidStateTransition for IN_PROGRESS without force."""
        await self._publish(self.store.cancel_execution(job_id, thing_name, force=force))
        self._timers_changed.set()
        return self.store.execution(job_id, thing_name).state()

    def describe_job(self, job_id: str) -> dict[str, Any]:
        """DescribeJob: status, document, executions and counts per status."""
        return self.store.describe_job(job_id)

    def list_jobs(self) -> list[dict[str, Any]]:
        """ListJobs: every job's id, status and creation time."""
        return self.store.list_jobs()

    async def _operate(self, operation: str, request: dict[str, Any]) -> Any:
        if operation == "create":
            return await self.create_job(
                str(request.get("jobId", "")),
                request.get("targets") or [],
                request.get("document") or {},
                in_progress_timeout_minutes=request.get("inProgressTimeoutInMinutes"),
            )
        if operation == "list":
            return {"jobs": self.list_jobs()}
        if operation == "describe":
            return self.describe_job(str(request.get("jobId", "")))
        return await self.cancel_job(
            str(request.get("jobId", "")), force=bool(request.get("force"))
        )

    async def _on_operator_publish(
        self, identity: ClientIdentity, topic: str, payload: bytes
    ) -> None:
        prefix, _, operation = topic.rpartition("/")
        if prefix != OPERATOR_JOBS_PREFIX or operation not in _OPERATIONS or not self.running:
            return
        now = self._clock()
        try:
            request = orjson.loads(payload)
            result = await self._operate(operation, request if isinstance(request, dict) else {})
        except orjson.JSONDecodeError:
            reply, suffix = (
                _rejection(JobsError("InvalidJson", "not valid JSON"), payload, now),
                "rejected",
            )
        except (JobsError, AncSyncError) as exc:
            error = exc if isinstance(exc, JobsError) else JobsError("InvalidRequest", str(exc))
            reply, suffix = _rejection(error, payload, now), "rejected"
        else:
            reply, suffix = {"result": result, "timestamp": int(now)}, "accepted"
            _copy_token(payload, reply)
        log.info("operator %s: %s %s", identity.client_id, operation, suffix)
        await self._publish([JobsMessage(f"{topic}/{suffix}", reply)])

    async def _publish(self, messages: list[JobsMessage]) -> None:
        self._published.set()
        self._published = anyio.Event()
        for message in messages:
            if self._broker is None:
                return
            try:
                await self._broker.publish(message.topic, orjson.dumps(message.payload), qos=1)
            except NotStarted:
                log.info("the broker has stopped; dropped %s", message.topic)


def _copy_token(payload: bytes, reply: dict[str, Any]) -> None:
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    if isinstance(request, dict) and isinstance(request.get("clientToken"), str):
        reply["clientToken"] = request["clientToken"]


def _rejection(error: JobsError, payload: bytes, now: float) -> dict[str, Any]:
    reply: dict[str, Any] = {"code": error.code, "message": error.message}
    reply["timestamp"] = int(now)
    if error.execution_state is not None:
        reply["executionState"] = error.execution_state
    _copy_token(payload, reply)
    return reply
