"""How a service plugs into the emulator: attached to the broker, then run beside it.

A service (the Device Shadow service, the rules sink, and the Jobs or provisioning services to
come) is an :class:`EmulatorService`. The :class:`~ancsync.emulator.server.Emulator`

1. creates its broker, then calls :meth:`EmulatorService.attach` on every service, where the
   service registers what it needs: a route for its reserved request topics
   (:meth:`~ancsync.emulator.broker.EmbeddedBroker.add_reserved_route`), a publish listener
   (:meth:`~ancsync.emulator.broker.EmbeddedBroker.add_publish_listener`), and keeps the broker
   to publish its replies (:meth:`~ancsync.emulator.broker.EmbeddedBroker.publish`);
2. runs every service in its task group (``_serve``: open what it holds, call
   ``task_status.started()``, work until cancelled), then the broker;
3. stops them all together on the way out; each service's ``_shutdown`` closes what it holds.

A route or listener may be called while the service is starting or stopping: answer only when
running (:attr:`~ancsync.lifecycle.Component.running`) and drop the rest quietly.
"""

from __future__ import annotations

from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.component import EmulatorComponent

__all__ = ["EmulatorService"]


class EmulatorService(EmulatorComponent):
    """A service of the emulator: attached to the broker, then run in the emulator's task group."""

    def attach(self, broker: EmbeddedBroker) -> None:
        """Register routes and listeners on ``broker`` (before it starts); keep it to publish.

        Called once per run of the emulator, each time with its new broker.
        """
        raise NotImplementedError
