"""What the Jobs MQTT API carries: job executions, their statuses, and statusDetails limits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ancsync.errors import InvalidPayload

__all__ = [
    "MAX_STATUS_DETAILS",
    "JobExecution",
    "JobStatus",
    "validate_status_details",
]

MAX_STATUS_DETAILS = 10
MAX_DETAIL_VALUE_CHARS = 1024
_DETAIL_KEY = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


class JobStatus(StrEnum):
    """The status of a job execution. QUEUED and IN_PROGRESS are pending; the rest terminal."""

    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        """Whether nothing can change the execution any more."""
        return self not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS)


class JobExecution(BaseModel):
    """A JobExecution as the service sends it (notify-next, describe, start-next)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    job_id: str = Field(alias="jobId")
    thing_name: str = Field(default="", alias="thingName")
    status: JobStatus
    status_details: dict[str, str] = Field(default_factory=dict, alias="statusDetails")
    version_number: int = Field(alias="versionNumber")
    execution_number: int = Field(default=1, alias="executionNumber")
    job_document: dict[str, Any] = Field(default_factory=dict, alias="jobDocument")


def validate_status_details(details: Mapping[str, Any]) -> dict[str, str]:
    """``details`` as AWS's statusDetails map, or :class:`InvalidPayload` naming what is wrong.

    AWS allows at most 10 pairs; keys of 1-128 letters, digits, ``:``, ``_`` or ``-``; values
    of 1-1024 characters without control characters. Numbers are turned into strings.
    """
    if len(details) > MAX_STATUS_DETAILS:
        raise InvalidPayload(
            f"statusDetails has {len(details)} entries, over AWS's {MAX_STATUS_DETAILS}; "
            "merge some or put the rest in the shadow"
        )
    checked = {}
    for key, raw in details.items():
        if not isinstance(key, str) or not _DETAIL_KEY.fullmatch(key):
            raise InvalidPayload(
                f"statusDetails key {str(key)[:40]!r} is not allowed: use 1-128 letters, digits, "
                "':', '_' or '-'"
            )
        value = raw if isinstance(raw, str) else str(raw)
        if not 1 <= len(value) <= MAX_DETAIL_VALUE_CHARS:
            raise InvalidPayload(
                f"statusDetails value of {key!r} is {len(value)} characters; AWS allows "
                f"1-{MAX_DETAIL_VALUE_CHARS}"
            )
        if not value.isprintable():
            raise InvalidPayload(
                f"statusDetails value of {key!r} contains a control character (e.g. a newline), "
                "which AWS refuses; put one line of text"
            )
        checked[key] = value
    return checked
