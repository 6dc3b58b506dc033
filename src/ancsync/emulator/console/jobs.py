"""The console's Jobs panel: every job of the emulator's Jobs service and each thing's execution.

:class:`JobsSection` is a :class:`~ancsync.emulator.console.web.ConsoleSection` the console always
shows: one row per execution (job, thing, status, statusDetails, version, last update), newest
job first, read from :class:`~ancsync.emulator.jobs.JobsService` in process. It is live: its
:meth:`JobsSection.watch` wakes the page's event stream whenever the service published something
(a job created, an execution's status changed, a timeout, a cancel). Its route
``/api/sections/jobs/{job_id}`` answers DescribeJob as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ancsync.errors import ConfigError

if TYPE_CHECKING:
    from ancsync.emulator.jobs import JobsService

__all__ = ["JobsSection"]


class JobsSection:
    """The Jobs panel of the console, over ``jobs`` (see the module docstring)."""

    key = "jobs"
    title = "Jobs"

    def __init__(self, jobs: JobsService) -> None:
        self.jobs = jobs

    def routes(self) -> Sequence[BaseRoute]:
        """``GET /{job_id}``: DescribeJob of that job (404 with the reason if there is none)."""

        async def describe(request: Request) -> Response:
            try:
                described = self.jobs.describe_job(request.path_params["job_id"])
            except ConfigError as exc:
                body = orjson.dumps({"error": str(exc)})
                return Response(body, 404, media_type="application/json")
            return Response(orjson.dumps(described), media_type="application/json")

        return [Route("/{job_id}", describe)]

    def snapshot(self) -> list[dict[str, Any]]:
        """One row per execution, newest job first, its targets in order."""
        store = self.jobs.store
        rows: list[dict[str, Any]] = []
        for job in reversed(list(store.jobs.values())):  # created in this order
            for thing in job.targets:
                execution = store.execution(job.job_id, thing)
                rows.append(
                    {
                        "job": job.job_id,
                        "operation": job.document.get("operation"),
                        "job status": job.status,
                        "thing": thing,
                        "status": execution.status,
                        "statusDetails": dict(execution.status_details),
                        "version": execution.version_number,
                        "updated": _iso(execution.last_updated_at or execution.queued_at),
                    }
                )
        return rows

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` each time the Jobs service published something, until cancelled."""
        while True:
            await self.jobs.wait_published()
            changed()


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
