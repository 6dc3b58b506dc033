"""AWS IoT Jobs on the device: :class:`DeviceJobs` hands out jobs, :class:`Job` reports on one."""

from ancsync.jobs.client import DeviceJobs, Job, JobHandler
from ancsync.jobs.models import JobExecution, JobStatus, validate_status_details

__all__ = [
    "DeviceJobs",
    "Job",
    "JobExecution",
    "JobHandler",
    "JobStatus",
    "validate_status_details",
]
