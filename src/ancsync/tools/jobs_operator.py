"""The cloud side of AWS IoT Jobs: create, list, describe and cancel jobs.

``ancsync jobs`` and the demo use one of two operators with the same four calls:

- :class:`EmulatorJobsOperator` talks to the emulator's Jobs service over MQTT with the operator
  certificate (JSON requests on ``ancsync/emulator/jobs/{create|list|describe|cancel}``, answered
  on ``.../accepted`` or ``.../rejected``);
- :class:`AwsJobsOperator` calls AWS IoT's control plane through boto3's ``iot`` client
  (``pip install 'ancsync[aws]'``); targets are thing names, turned into thing ARNs.

Both return AWS-shaped dicts: ``create`` and ``describe`` a job (``jobId``, ``status``...),
``list`` the job summaries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from ancsync.connection import IoTConnection
from ancsync.errors import JobRejected
from ancsync.tools.operator_api import AwsOperatorApi, EmulatorOperatorApi
from ancsync.topics import OPERATOR_JOBS_PREFIX

__all__ = ["AwsJobsOperator", "EmulatorJobsOperator", "JobsOperator"]

log = logging.getLogger("ancsync.tools.jobs_operator")


class JobsOperator(Protocol):
    """What ``ancsync jobs`` needs of an operator."""

    async def create(
        self,
        job_id: str,
        targets: Sequence[str],
        document: dict[str, Any],
        in_progress_timeout_minutes: int | None = None,
    ) -> dict[str, Any]:
        """CreateJob; returns the job as described."""
        ...

    async def list(self) -> list[dict[str, Any]]:
        """ListJobs."""
        ...

    async def describe(self, job_id: str) -> dict[str, Any]:
        """DescribeJob."""
        ...

    async def cancel(self, job_id: str, *, force: bool = False) -> dict[str, Any]:
        """CancelJob (IN_PROGRESS executions only with ``force``); returns the job."""
        ...


class EmulatorJobsOperator(EmulatorOperatorApi):
    """The emulator's operator Jobs API over an operator :class:`IoTConnection` (not started).

    ``async with EmulatorJobsOperator(connection) as jobs: await jobs.create(...)``. A request
    the service refuses raises :class:`~ancsync.errors.JobRejected` with its message.
    """

    def __init__(self, connection: IoTConnection, *, timeout: float = 15.0) -> None:
        super().__init__(connection, OPERATOR_JOBS_PREFIX, JobRejected, timeout=timeout)

    name = "jobs-operator"

    async def create(
        self,
        job_id: str,
        targets: Sequence[str],
        document: dict[str, Any],
        in_progress_timeout_minutes: int | None = None,
    ) -> dict[str, Any]:
        """CreateJob on the emulator."""
        body: dict[str, Any] = {"jobId": job_id, "targets": list(targets), "document": document}
        if in_progress_timeout_minutes is not None:
            body["inProgressTimeoutInMinutes"] = in_progress_timeout_minutes
        return dict(await self._call("create", body))

    async def list(self) -> list[dict[str, Any]]:
        """ListJobs on the emulator."""
        return list((await self._call("list", {}))["jobs"])

    async def describe(self, job_id: str) -> dict[str, Any]:
        """DescribeJob on the emulator (with every execution's state)."""
        return dict(await self._call("describe", {"jobId": job_id}))

    async def cancel(self, job_id: str, *, force: bool = False) -> dict[str, Any]:
        """CancelJob on the emulator."""
        return dict(await self._call("cancel", {"jobId": job_id, "force": force}))


class AwsJobsOperator(AwsOperatorApi):
    """AWS IoT's Jobs control plane through boto3's ``iot`` client (``client`` may be given).

    boto3's errors are turned into :class:`~ancsync.errors.JobRejected` with AWS's code.
    """

    def __init__(self, client: Any | None = None, *, region: str | None = None) -> None:
        super().__init__(JobRejected, client, region=region)

    name = "aws-jobs-operator"

    async def create(
        self,
        job_id: str,
        targets: Sequence[str],
        document: dict[str, Any],
        in_progress_timeout_minutes: int | None = None,
    ) -> dict[str, Any]:
        """CreateJob for the things named in ``targets`` (their ARNs are looked up)."""
        arns = [
            (await self._call("describe_thing", thingName=thing))["thingArn"] for thing in targets
        ]
        arguments: dict[str, Any] = {
            "jobId": job_id,
            "targets": arns,
            "document": orjson.dumps(document).decode(),
            "targetSelection": "SNAPSHOT",
        }
        if in_progress_timeout_minutes is not None:
            arguments["timeoutConfig"] = {"inProgressTimeoutInMinutes": in_progress_timeout_minutes}
        await self._call("create_job", **arguments)
        return await self.describe(job_id)

    async def list(self) -> list[dict[str, Any]]:
        """ListJobs (the first page)."""
        return list((await self._call("list_jobs"))["jobs"])

    async def describe(self, job_id: str) -> dict[str, Any]:
        """DescribeJob."""
        return dict((await self._call("describe_job", jobId=job_id))["job"])

    async def cancel(self, job_id: str, *, force: bool = False) -> dict[str, Any]:
        """CancelJob."""
        await self._call("cancel_job", jobId=job_id, force=force)
        return await self.describe(job_id)
