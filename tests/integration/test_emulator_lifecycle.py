"""The emulator and its parts follow the one Component lifecycle, over real sockets."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import aiomqtt
import anyio
import pytest
from anyio.abc import TaskStatus
from helpers import HOST, device_client, next_message, operator_client

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.server import Emulator
from ancsync.emulator.service import EmulatorService
from ancsync.errors import ConfigError, NotStarted
from ancsync.lifecycle import ComponentState

DEVICE = "anc-device-001"
TIMEOUT = 10


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


async def test_cancelling_the_owner_stops_the_broker_and_every_service(tmp_path: Path) -> None:
    emulator = Emulator(tmp_path / "certs", [DEVICE])

    async def own(*, task_status: TaskStatus[anyio.CancelScope]) -> None:
        """The emulator's owner: a task group, in a task of its own so the test can watch."""
        async with anyio.create_task_group() as owner:
            await owner.start(emulator.run)
            task_status.started(owner.cancel_scope)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as test:
            owner_scope = await test.start(own)
            port, broker = emulator.port, emulator.broker
            assert broker.running
            assert all(service.running for service in emulator.services)
            async with device_client(port, emulator.certs, DEVICE) as device:
                await device.subscribe(f"anc/devices/{DEVICE}/commands")
                owner_scope.cancel()
                with pytest.raises(aiomqtt.MqttError):
                    await next_message(device)  # the stop disconnected it
    assert emulator.state is ComponentState.STOPPED
    assert broker.state is ComponentState.STOPPED
    assert [service.state for service in emulator.services] == [ComponentState.STOPPED] * len(
        emulator.services
    )
    assert port_is_free(port)
    with pytest.raises(NotStarted):
        emulator.rules.emergencies()


async def test_start_and_stop_from_different_tasks_and_run_again(tmp_path: Path) -> None:
    """The shadows outlive a restart of the same emulator; a new port is bound each run."""
    emulator = Emulator(tmp_path / "certs", [DEVICE])
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(emulator.start)
        first_port = emulator.port
        emulator.shadows.store.handle("update", DEVICE, None, b'{"state":{"reported":{"a":1}}}', 1)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(emulator.stop)
        assert emulator.state is ComponentState.STOPPED
        assert port_is_free(first_port)

        async with emulator:
            assert emulator.shadows.running
            shadow = emulator.shadows.store.shadow(DEVICE)
            assert shadow is not None
            assert shadow.state == {"reported": {"a": 1}}
            async with device_client(emulator.port, emulator.certs, DEVICE) as device:
                await device.publish(f"anc/telemetry/{DEVICE}/anc", b"{}")  # served again


async def test_a_part_that_cannot_start_fails_the_emulator_with_its_own_error(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        emulator = Emulator(tmp_path / "certs", [DEVICE], port=port)
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(ConfigError, match=f"port {port}.*choose a free port"):
                async with emulator:
                    pass
            async with anyio.create_task_group() as owner:
                with pytest.raises(ConfigError, match=f"port {port}"):
                    await owner.start(emulator.run)
    # the services it had started were stopped again (the rules database is closed)
    assert [service.state for service in emulator.services] == [ComponentState.STOPPED] * len(
        emulator.services
    )


class DefenderLikeService(EmulatorService):
    """A service of the test's own: answers Device Defender's metrics topic with its payload."""

    name = "defender"

    def __init__(self) -> None:
        super().__init__()
        self.broker: EmbeddedBroker | None = None
        self.served = 0

    def attach(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        broker.add_reserved_route(
            lambda topic: topic.endswith("/defender/metrics/json"), self.handle
        )

    async def handle(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        assert self.broker is not None
        assert self.running
        self.served += 1
        await self.broker.publish(f"{topic}/accepted", payload, qos=1)

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep_forever()


async def test_a_service_of_your_own_plugs_in_beside_the_others(tmp_path: Path) -> None:
    defender = DefenderLikeService()
    request = f"$aws/things/{DEVICE}/defender/metrics/json"
    with anyio.fail_after(TIMEOUT):
        async with (
            Emulator(tmp_path / "certs", [DEVICE], services=[defender]) as emulator,
            operator_client(emulator.port, emulator.certs, "console") as console,
        ):
            assert defender.running
            await console.subscribe(f"{request}/accepted", qos=1)
            await console.publish(request, b'{"clientToken":"j-1"}', qos=1)
            reply = await next_message(console)
            assert (reply.topic.value, reply.payload) == (
                f"{request}/accepted",
                b'{"clientToken":"j-1"}',
            )
    assert defender.served == 1
    assert defender.state is ComponentState.STOPPED


class StuckService(DefenderLikeService):
    """A service whose shutdown never ends by itself."""

    async def _shutdown(self) -> None:
        await anyio.sleep_forever()


async def test_a_stuck_shutdown_is_cut_at_its_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = StuckService()
    stuck.stop_timeout = 0.2
    emulator = Emulator(tmp_path / "certs", [DEVICE], services=[stuck])
    with anyio.fail_after(TIMEOUT):
        await emulator.start()
        port = emulator.port
        with caplog.at_level(logging.WARNING, logger="ancsync.lifecycle"):
            await emulator.stop()
    assert emulator.state is ComponentState.STOPPED
    assert port_is_free(port)  # the broker stopped beside it, not after it
    assert "the defender component did not finish stopping within 0.2 s" in caplog.text
