"""The blocking API: the original SDK's calls, for a control loop that runs in a plain thread.

Code written for the original SDK calls ``orchestrator.start()``, ``publish_metrics(...)`` and
``run_forever()`` from a synchronous control loop. :class:`DataSyncOrchestrator` here takes the
same arguments and offers the same names as :class:`ancsync.DataSyncOrchestrator`, and keeps its
promises, without ``async``::

    from ancsync.blocking import DataSyncOrchestrator

    orchestrator = DataSyncOrchestrator.from_env()
    orchestrator.start()
    try:
        while running:
            orchestrator.publish_metrics(anc_metrics={"latency_ms": 35.2, ...})  # microseconds
            ...
    finally:
        orchestrator.stop()

The asynchronous core runs on one event loop in a background thread (an anyio blocking
portal), started by :meth:`DataSyncOrchestrator.start`; every method hands its call to that loop
and waits for the result, so any number of threads may call them at once. ``publish_metrics``
never waits for the network; ``report_emergency`` returns once the event is on disk.

Handlers (:meth:`~DataSyncOrchestrator.on_desired_state`, :meth:`~DataSyncOrchestrator.on_command`)
are plain functions; they run in a worker thread, never on the event loop, so a handler that
blocks (talking to a DSP) delays only the next call of that handler.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal
from pydantic import BaseModel

from ancsync import orchestrator as _async
from ancsync.errors import NotStarted
from ancsync.models import AncMetrics, AudioMetrics, Command, EmergencyEvent, SystemMetrics
from ancsync.status import OrchestratorStatus

__all__ = ["DataSyncOrchestrator"]

BlockingDesiredHandler = Callable[[dict[str, Any]], Mapping[str, Any] | BaseModel | None]
"""``handler(changes) -> applied``: a plain function, run in a worker thread."""


class DataSyncOrchestrator:
    """:class:`ancsync.DataSyncOrchestrator` for synchronous code: the same arguments and names.

    Raises what the asynchronous one raises, from the calling thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._core = _async.DataSyncOrchestrator(*args, **kwargs)
        self._portal_context: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._running_task: Future[None] | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @classmethod
    def from_env(cls, **options: Any) -> DataSyncOrchestrator:
        """Build from the environment (see :meth:`ancsync.DataSyncOrchestrator.from_env`)."""
        return cls(**options)

    @classmethod
    def from_config_file(cls, path: str | Path, **options: Any) -> DataSyncOrchestrator:
        """Build from a config file (see :meth:`ancsync.DataSyncOrchestrator.from_config_file`)."""
        return cls(config_file=path, **options)

    @property
    def thing_name(self) -> str:
        """The device's thing name."""
        return self._core.thing_name

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the event loop thread and the orchestrator; return at once (offline is fine)."""
        with self._lock:
            if self._portal is not None:
                raise NotStarted("this orchestrator was already started; create a new one")
            context = start_blocking_portal(name="ancsync")
            portal = context.__enter__()
            try:
                # One task for the orchestrator's whole life: it is started and stopped in it.
                self._running_task, _ = portal.start_task(self._core.run_forever)
            except BaseException:
                context.__exit__(None, None, None)
                raise
            self._portal_context, self._portal = context, portal

    def stop(self) -> None:
        """Flush and stop (see :meth:`ancsync.DataSyncOrchestrator.stop`), then end the loop
        thread. Safe to call twice and from any thread; :meth:`run_forever` returns."""
        with self._lock:
            context, task = self._portal_context, self._running_task
            self._portal_context = self._portal = self._running_task = None
        if context is None or task is None:
            return
        task.cancel()  # the orchestrator stops on cancellation, flushing within stop_timeout
        context.__exit__(None, None, None)  # waits for that
        self._stopped.set()

    def run_forever(self) -> None:
        """Block until :meth:`stop` (from another thread) or Ctrl-C, then stop cleanly.

        Starts the orchestrator if needed. On Ctrl-C it stops, then raises ``KeyboardInterrupt``
        so the program ends as it would have.
        """
        if self._portal is None:
            self.start()
        try:
            while not self._stopped.wait(0.5):  # a timeout, so Ctrl-C reaches this thread
                pass
        except KeyboardInterrupt:
            self.stop()
            raise

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected (see :meth:`ancsync.DataSyncOrchestrator.wait_connected`)."""
        self._running().call(self._core.wait_connected, timeout)

    # --- what the control loop calls ---------------------------------------------------------

    def publish_metrics(
        self,
        anc_metrics: Mapping[str, Any] | AncMetrics | None = None,
        audio_metrics: Mapping[str, Any] | AudioMetrics | None = None,
        system_metrics: Mapping[str, Any] | SystemMetrics | None = None,
    ) -> None:
        """Queue metrics records; never waits for the network (see
        :meth:`ancsync.DataSyncOrchestrator.publish_metrics`)."""
        self._running().call(self._core.publish_metrics, anc_metrics, audio_metrics, system_metrics)

    def update_anc_state(
        self,
        enabled: bool | None = None,
        intensity: float | None = None,
        algorithm: str | None = None,
        *,
        wait: bool = False,
        **fields: Any,
    ) -> None:
        """Report ANC state in the shadow (see
        :meth:`ancsync.DataSyncOrchestrator.update_anc_state`)."""
        update = partial(
            self._core.update_anc_state, enabled, intensity, algorithm, wait=wait, **fields
        )
        self._running().call(update)

    def report_emergency(
        self,
        event: Mapping[str, Any] | BaseModel | None = None,
        *,
        wait_for_ack: bool = False,
        timeout: float | None = None,
        **fields: Any,
    ) -> EmergencyEvent:
        """Report an emergency; returns once it is on disk (see
        :meth:`ancsync.DataSyncOrchestrator.report_emergency`)."""
        report = partial(
            self._core.report_emergency, event, wait_for_ack=wait_for_ack, timeout=timeout, **fields
        )
        return self._running().call(report)

    def get_status(self) -> OrchestratorStatus:
        """Everything worth watching (see :meth:`ancsync.DataSyncOrchestrator.get_status`)."""
        if self._portal is None:
            return self._core.get_status()
        return self._running().call(self._core.get_status)

    # --- what the cloud asks for -------------------------------------------------------------

    def on_desired_state(self, handler: BlockingDesiredHandler) -> BlockingDesiredHandler:
        """Apply desired ANC changes with the plain function ``handler`` (usable as a
        decorator); it runs in a worker thread and returns what it applied."""

        async def in_a_thread(changes: dict[str, Any]) -> Mapping[str, Any] | BaseModel | None:
            return await anyio.to_thread.run_sync(handler, changes)

        self._core.on_desired_state(in_a_thread)
        return handler

    def on_command(
        self, name: str, handler: Callable[[Command], object]
    ) -> Callable[[Command], object]:
        """Handle the command ``name`` with the plain function ``handler``, in a worker thread
        (see :meth:`ancsync.DataSyncOrchestrator.on_command`)."""

        async def in_a_thread(command: Command) -> None:
            await anyio.to_thread.run_sync(handler, command)

        self._core.on_command(name, in_a_thread)
        return handler

    # --- the bridge ----------------------------------------------------------------------------

    def _running(self) -> BlockingPortal:
        """The portal to the event loop thread; every call goes through it."""
        portal = self._portal
        if portal is None:
            raise NotStarted("call start() first (or use `with DataSyncOrchestrator(...)`)")
        return portal
