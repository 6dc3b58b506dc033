"""The supervisor: restarts a failing part through its own lifecycle, records why, stops all."""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from ancsync.lifecycle import Component, ComponentState
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.supervisor import Supervisor

QUICK = BackoffPolicy(base=0.001, cap=0.001)


class Part(Component):
    """Fails its first ``failures`` runs (after or before it is ready), then runs."""

    def __init__(self, name: str, *, failures: int = 0, before_ready: bool = False) -> None:
        super().__init__()
        self.name = name
        self.failures = failures
        self.before_ready = before_ready
        self.runs = 0
        self.shutdowns = 0
        self.serving = anyio.Event()

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        self.runs += 1
        if self.runs <= self.failures and self.before_ready:
            raise RuntimeError(f"{self.name} failure {self.runs}")
        task_status.started()
        if self.runs <= self.failures:
            await anyio.lowlevel.checkpoint()
            raise RuntimeError(f"{self.name} failure {self.runs}")
        self.serving.set()
        await anyio.sleep_forever()

    async def _shutdown(self) -> None:
        self.shutdowns += 1


async def test_a_failing_part_is_run_again_and_its_error_recorded() -> None:
    flaky, steady = Part("flaky", failures=2), Part("steady")
    supervisor = Supervisor([flaky, steady], backoff=QUICK)
    with anyio.fail_after(5):
        async with supervisor:
            await flaky.serving.wait()
            status = supervisor.status()
    assert status["flaky"]["running"] is True
    assert status["flaky"]["restarts"] == 2
    assert status["flaky"]["last_error"] is not None
    assert status["flaky"]["last_error"]["message"] == "flaky failure 2"
    assert flaky.shutdowns == 3  # each failed run shut down too, then the last one on stop
    assert (steady.runs, steady.shutdowns, status["steady"]["restarts"]) == (1, 1, 0)
    assert supervisor.status()["flaky"]["running"] is False


async def test_a_part_failing_its_first_start_does_not_keep_the_others_from_starting() -> None:
    broken, steady = Part("broken", failures=1, before_ready=True), Part("steady")
    supervisor = Supervisor([broken, steady], backoff=QUICK)
    with anyio.fail_after(5):
        async with supervisor:
            assert supervisor.running
            await broken.serving.wait()
            await steady.serving.wait()
    assert supervisor.status()["broken"]["restarts"] == 1


async def test_cancelling_the_owner_stops_every_part_through_its_shutdown() -> None:
    parts = [Part("a"), Part("b")]
    supervisor = Supervisor(parts)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            tg.cancel_scope.cancel()
    assert [part.state for part in parts] == [ComponentState.STOPPED] * 2
    assert [part.shutdowns for part in parts] == [1, 1]


async def test_a_part_that_returns_is_not_run_again() -> None:
    class Once(Part):
        async def _serve(self, task_status: TaskStatus[None]) -> None:
            self.runs += 1
            task_status.started()

    once = Once("once")
    with anyio.fail_after(5):
        async with Supervisor([once], backoff=QUICK) as supervisor:
            while once.state is not ComponentState.STOPPED:
                await anyio.lowlevel.checkpoint()
            assert supervisor.status()["once"]["restarts"] == 0
    assert once.runs == 1


async def test_the_stop_deadline_reaches_the_parts() -> None:
    class Slow(Part):
        async def _shutdown(self) -> None:
            await anyio.sleep_forever()  # cut short by the deadline

    slow = Slow("slow")
    supervisor = Supervisor([slow], stop_timeout=60)
    with anyio.fail_after(5):  # not 60 s: aclose's timeout is passed on
        async with supervisor:
            await slow.serving.wait()
            await supervisor.aclose(timeout=0.2)
    assert slow.state is ComponentState.STOPPED
