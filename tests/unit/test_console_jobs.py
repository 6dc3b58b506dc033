"""The console's Jobs panel: its rows from the Jobs service, and its wake-ups."""

from __future__ import annotations

import anyio

from ancsync.emulator.console.jobs import JobsSection
from ancsync.emulator.console.web import LiveSection
from ancsync.emulator.job_executions import JobStore
from ancsync.emulator.jobs import JobsService


def test_one_row_per_execution_newest_job_first() -> None:
    store = JobStore(clock=lambda: 1_800_000_000.0)
    store.create_job("first", ["a", "b"], {"operation": "calibrate"})
    store.create_job("second", ["b"], {"operation": "update_noise_model"})
    store.handle("b", "first/update", b'{"status": "IN_PROGRESS", "statusDetails": {"s": "1"}}')
    rows = JobsSection(JobsService(store=store)).snapshot()
    assert [(row["job"], row["thing"], row["status"]) for row in rows] == [
        ("second", "b", "QUEUED"),
        ("first", "a", "QUEUED"),
        ("first", "b", "IN_PROGRESS"),
    ]
    assert rows[2]["statusDetails"] == {"s": "1"}
    assert rows[2]["version"] == 2
    assert rows[0]["operation"] == "update_noise_model"
    assert rows[0]["job status"] == "IN_PROGRESS"
    assert rows[0]["updated"] == "2027-01-15T08:00:00Z"


async def test_the_panel_is_live_it_wakes_the_page_on_every_publish() -> None:
    jobs = JobsService()
    section = JobsSection(jobs)
    assert isinstance(section, LiveSection)
    woken = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(section.watch, woken.set)
        await anyio.wait_all_tasks_blocked()
        await jobs.create_job("j", ["a"], {"operation": "x"})
        with anyio.fail_after(5):
            await woken.wait()
        tasks.cancel_scope.cancel()
