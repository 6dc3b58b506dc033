"""DeviceShadowSync against the emulator's shadow service, over a real broker with real TLS.

The device is an IoTConnection with its dev certificate; the operator (the cloud side) is a plain
MQTT client with the operator certificate that sets desired state on the real request topics and
watches ``update/documents`` to see what the service holds. Nothing waits by sleeping: every wait
is for a message, an event or a state the test can name, under ``anyio.fail_after``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import anyio
import orjson
import pytest
from device import THING, device_connection
from faultproxy import FaultProxy
from helpers import mqtt_client

from ancsync import (
    BackoffPolicy,
    DeviceShadowSync,
    IoTConnection,
    PayloadTooLarge,
)
from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.server import Emulator
from ancsync.topics import ShadowTopics, parse_shadow_topic

FAST = BackoffPolicy(base=0.02, cap=0.1)
TIMEOUT = 10
Document = dict[str, Any]


class Operator:
    """The cloud side: sets desired state and follows the shadow's ``update/documents``."""

    def __init__(self, client: aiomqtt.Client, shadow_name: str | None = None) -> None:
        self.client = client
        self.topics = ShadowTopics(THING, shadow_name)

    async def set_desired(self, desired: Document) -> None:
        payload = orjson.dumps({"state": {"desired": desired}})
        await self.client.publish(self.topics.update, payload, qos=1)

    async def until(self, holds: Callable[[Document], bool]) -> Document:
        """The first stored state (``{"desired", "reported"}``) from now on for which ``holds``."""
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            state = orjson.loads(message.payload)["current"]["state"]
            if holds(state):
                return dict(state)
        raise AssertionError("the operator's message stream ended")


@asynccontextmanager
async def operator(emulator: Emulator, shadow_name: str | None = None) -> AsyncIterator[Operator]:
    certs = emulator.certs
    async with mqtt_client(emulator.port, certs, certs.operator, "shadow-operator") as client:
        ops = Operator(client, shadow_name)
        await client.subscribe(ops.topics.update_documents, qos=1)
        yield ops


def reported(key: str, value: Any) -> Callable[[Document], bool]:
    return lambda state: state.get("reported", {}).get(key) == value


class AncDevice:
    """A fake ANC control loop: applies what it is asked, or fails while ``broken``."""

    def __init__(self) -> None:
        self.applied: list[Document] = []
        self.broken = False

    async def apply(self, changes: Document) -> Document:
        if self.broken:
            raise RuntimeError("DSP not ready")
        self.applied.append(changes)
        return changes


def new_shadow(iot: IoTConnection, **options: Any) -> DeviceShadowSync:
    options.setdefault("sync_interval", 60)
    options.setdefault("request_timeout", 2.0)
    options.setdefault("retry_backoff", FAST)
    return DeviceShadowSync(iot, **options)


def stored(emulator: Emulator, shadow_name: str | None = None) -> Any:
    shadow = emulator.shadows.store.shadow(THING, shadow_name)
    assert shadow is not None
    return shadow


async def test_classic_and_named_shadows(emulator: Emulator) -> None:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    classic = new_shadow(iot)
    named = new_shadow(iot, shadow_name="anc-config")
    with anyio.fail_after(TIMEOUT):
        async with iot:
            assert (await named.get()).exists is False
            await classic.update_reported({"anc_enabled": True, "battery_level": 85})
            state = await named.update_reported({"anc_algorithm": "fxlms"})
            assert (state.version, state.reported) == (1, {"anc_algorithm": "fxlms"})
            await named.update_reported({"anc_intensity": 0.7})
            fresh = await classic.get()
    assert (fresh.version, fresh.reported) == (1, {"anc_enabled": True, "battery_level": 85})
    assert stored(emulator).state == {"reported": {"anc_enabled": True, "battery_level": 85}}
    assert stored(emulator, "anc-config").version == 2
    assert stored(emulator, "anc-config").state["reported"] == {
        "anc_algorithm": "fxlms",
        "anc_intensity": 0.7,
    }


async def test_desired_change_is_applied_and_reported(emulator: Emulator) -> None:
    device = AncDevice()
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    shadow.on_delta(device.apply)
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as ops, iot, shadow:
            await ops.set_desired({"anc_enabled": False, "anc_intensity": 0.4})
            state = await ops.until(reported("anc_intensity", 0.4))
    assert device.applied == [{"anc_enabled": False, "anc_intensity": 0.4}]
    assert state["reported"] == {"anc_enabled": False, "anc_intensity": 0.4}


async def test_only_what_the_handler_applied_is_reported(emulator: Emulator) -> None:
    # The DSP takes the intensity but not the algorithm: reporting the algorithm anyway would
    # tell the cloud the device runs a filter it does not, and end the delta that asks for it.
    async def apply_intensity_only(changes: Document) -> Document:
        return {key: value for key, value in changes.items() if key == "anc_intensity"}

    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    shadow.on_delta(apply_intensity_only)
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as ops, iot, shadow:
            await shadow.update_reported({"anc_intensity": 0.5, "anc_algorithm": "nlms"})
            await ops.set_desired({"anc_intensity": 0.9, "anc_algorithm": "fxlms"})
            state = await ops.until(reported("anc_intensity", 0.9))
    assert state["reported"]["anc_algorithm"] == "nlms"
    assert stored(emulator).state["reported"]["anc_algorithm"] == "nlms"
    assert shadow.get_state().delta == {"anc_algorithm": "fxlms"}


async def test_offline_desired_change_is_applied_on_reconnect(emulator: Emulator) -> None:
    device = AncDevice()
    with anyio.fail_after(TIMEOUT):
        async with FaultProxy(emulator.port) as proxy, operator(emulator) as ops:
            iot = device_connection(emulator.certs, proxy.port, reconnect=FAST)
            shadow = new_shadow(iot)
            shadow.on_delta(device.apply)
            async with iot, shadow:
                await shadow.update_reported({"anc_intensity": 0.2})
                with iot.events() as events:
                    proxy.refuse = True
                    await proxy.cut()
                    async for event in events:
                        if event.kind == "disconnected":
                            break
                    # The device is offline: this delta never reaches it.
                    await ops.set_desired({"anc_intensity": 0.9})
                    await ops.until(lambda state: "desired" in state)
                    assert device.applied == []
                    proxy.refuse = False
                    state = await ops.until(reported("anc_intensity", 0.9))
    assert device.applied == [{"anc_intensity": 0.9}]
    assert state["reported"] == {"anc_intensity": 0.9}


async def test_broker_restart_in_the_middle_of_an_update(tmp_path: Path) -> None:
    """The service applies an update, then the broker goes down before the reply leaves: the
    device cannot know the outcome, retries after reconnecting, and converges.

    The device reaches the broker through a fault proxy that is cut as the broker stops (the
    device sees the connection drop, as it would) and follows the broker to its new port.
    """
    emulator = Emulator(tmp_path / "certs", [THING])
    forward = emulator.shadows.handle_request
    swallowed = anyio.Event()

    async def apply_then_crash(identity: ClientIdentity, topic: str, payload: bytes) -> None:
        parsed = parse_shadow_topic(topic)
        is_update = parsed is not None and parsed.operation == "update"
        if is_update and b"uptime" in payload and not swallowed.is_set():
            emulator.shadows.store.handle("update", THING, None, payload, int(time.time()))
            swallowed.set()  # applied, but the reply is lost with the broker
            return
        await forward(identity, topic, payload)

    emulator.shadows.handle_request = apply_then_crash  # type: ignore[method-assign]
    await emulator.start()
    try:
        with anyio.fail_after(TIMEOUT):
            async with FaultProxy(emulator.port) as proxy:
                iot = device_connection(emulator.certs, proxy.port, reconnect=FAST)
                shadow = new_shadow(iot, request_timeout=0.5)
                async with iot, shadow:
                    await shadow.update_reported({"battery_level": 80})  # version 1
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(shadow.update_reported, {"battery_level": 79, "uptime": 60})
                        await swallowed.wait()
                        proxy.refuse = True
                        await proxy.cut()
                        await emulator.stop()
                        await emulator.start()
                        proxy.upstream_port = emulator.port
                        proxy.refuse = False
                    state, status = shadow.get_state(), shadow.get_status()
                    assert iot.get_status()["reconnect_count"] == 1
    finally:
        await emulator.stop()
    assert stored(emulator).state["reported"] == {"battery_level": 79, "uptime": 60}
    assert state.reported == {"battery_level": 79, "uptime": 60}
    assert state.version == stored(emulator).version == 3
    # The outcome was unknown: the retry carried the old version, and the conflict resolved it.
    assert status["requests"]["timeouts"] >= 1
    assert status["conflicts"] == 1


async def test_rapid_reports_are_coalesced(emulator: Emulator) -> None:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    with anyio.fail_after(TIMEOUT):
        async with iot:
            await iot.wait_connected()
            before = emulator.shadows.stats()["requests"]
            async with anyio.create_task_group() as tg:
                for n in range(100):
                    tg.start_soon(shadow.update_reported, {"battery_level": n, "uptime": n})
            requests = emulator.shadows.stats()["requests"] - before
    assert requests <= 5, f"100 reports took {requests} shadow requests"
    assert stored(emulator).state["reported"] == {"battery_level": 99, "uptime": 99}
    assert shadow.get_state().reported == {"battery_level": 99, "uptime": 99}


async def test_reports_without_waiting_are_coalesced_too(emulator: Emulator) -> None:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    with anyio.fail_after(TIMEOUT):
        async with iot, shadow:
            await iot.wait_connected()
            before = emulator.shadows.stats()["requests"]
            for n in range(100):
                shadow.report({"battery_level": n})  # returns at once
            await shadow.flush()
            requests = emulator.shadows.stats()["requests"] - before
    assert requests <= 5, f"100 reports took {requests} shadow requests"
    assert stored(emulator).state["reported"] == {"battery_level": 99}


async def test_concurrent_operator_update_conflict_is_resolved(emulator: Emulator) -> None:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    with anyio.fail_after(TIMEOUT):
        async with iot:
            await shadow.update_reported({"battery_level": 70})
            # The operator's update lands between the device's read and its write (the device
            # gets no message about it): the write carries an outdated version.
            operator_update = orjson.dumps({"state": {"desired": {"anc_enabled": False}}})
            emulator.shadows.store.handle("update", THING, None, operator_update, 1)
            state = await shadow.update_reported({"battery_level": 69})
    assert shadow.get_status()["conflicts"] == 1
    assert stored(emulator).state == {
        "desired": {"anc_enabled": False},
        "reported": {"battery_level": 69},
    }
    assert (state.version, state.desired) == (3, {"anc_enabled": False})


async def test_stale_delta_is_discarded(emulator: Emulator) -> None:
    device = AncDevice()
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    shadow.on_delta(device.apply)
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as ops, iot, shadow:
            await ops.set_desired({"anc_intensity": 0.4})
            await ops.until(reported("anc_intensity", 0.4))
            # A delta from the past (version 1) arrives late, then a real change follows it.
            stale = {"version": 1, "timestamp": 1, "state": {"anc_intensity": 0.1}}
            await emulator.broker.publish(shadow.topics.update_delta, orjson.dumps(stale), qos=1)
            await ops.set_desired({"anc_intensity": 0.5})
            await ops.until(reported("anc_intensity", 0.5))
    assert device.applied == [{"anc_intensity": 0.4}, {"anc_intensity": 0.5}]
    assert shadow.get_status()["stale_deltas"] >= 1


async def test_invalid_desired_is_not_applied_and_reported_as_error(emulator: Emulator) -> None:
    device = AncDevice()
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    shadow.on_delta_callback = device.apply
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as ops, iot, shadow:
            await shadow.update_reported({"anc_intensity": 0.3})
            await ops.set_desired({"anc_intensity": 5.0})
            state = await ops.until(lambda state: "last_error" in state.get("reported", {}))
            await shadow.flush()
    assert device.applied == []
    assert state["reported"]["anc_intensity"] == 0.3  # kept its value, never echoed 5.0
    assert "anc_intensity" in state["reported"]["last_error"]
    assert "less than or equal to 1" in state["reported"]["last_error"]
    assert shadow.get_state().delta == {"anc_intensity": 5.0}  # still visible to the cloud
    assert shadow.get_status()["invalid_desired"] == 1


async def test_oversize_state_is_rejected_before_sending(emulator: Emulator) -> None:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot, model=None)
    with anyio.fail_after(TIMEOUT):
        async with iot:
            await shadow.update_reported({"firmware_version": "1.0.0"})
            before = emulator.shadows.stats()["requests"]
            with pytest.raises(PayloadTooLarge, match=r"is 9\d{3} bytes, over .* 8192 bytes"):
                await shadow.update_reported({"log": "x" * 9000})
            assert emulator.shadows.stats()["requests"] == before
            state = await shadow.update_reported({"battery_level": 50})
    assert state.reported == {"firmware_version": "1.0.0", "battery_level": 50}


async def test_handler_exception_is_isolated(emulator: Emulator) -> None:
    device = AncDevice()
    device.broken = True
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    shadow.on_delta(device.apply)
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as ops, iot, shadow:
            await ops.set_desired({"anc_enabled": True})
            state = await ops.until(lambda state: "last_error" in state.get("reported", {}))
            assert "RuntimeError: DSP not ready" in state["reported"]["last_error"]
            assert "anc_enabled" not in state["reported"]
            device.broken = False
            await ops.set_desired({"anc_enabled": False})
            state = await ops.until(reported("anc_enabled", False))
    assert state["reported"] == {"anc_enabled": False}  # the old error is cleared
    assert shadow.get_status()["handler_errors"] == 1


async def test_periodic_resync_finds_changes_whose_delta_was_missed(emulator: Emulator) -> None:
    device = AncDevice()
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot, sync_interval=0.2)
    shadow.on_delta(device.apply)
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as ops, iot, shadow:
            await shadow.update_reported({"anc_enabled": True})
            # Changed behind the device's back: no delta message is ever published for it.
            change = orjson.dumps({"state": {"desired": {"anc_enabled": False}}})
            emulator.shadows.store.handle("update", THING, None, change, 1)
            await ops.until(reported("anc_enabled", False))
    assert device.applied == [{"anc_enabled": False}]
    assert shadow.get_status()["resyncs"] >= 2


async def test_update_desired_delete_and_recreate(emulator: Emulator) -> None:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot)
    with anyio.fail_after(TIMEOUT):
        async with iot:
            state = await shadow.update_desired({"anc_intensity": 0.6})
            assert (state.version, state.delta) == (1, {"anc_intensity": 0.6})
            await shadow.delete()
            assert (shadow.get_state().exists, shadow.version) == (False, 1)
            assert emulator.shadows.store.shadow(THING) is None
            state = await shadow.update_reported({"anc_intensity": 0.6})
    assert (state.exists, state.version, state.desired) == (True, 2, {})


async def test_the_previous_sdks_names_still_work(emulator: Emulator) -> None:
    """``update_reported_state`` and ``json.dumps(shadow.get_state())`` from the old README."""
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    shadow = new_shadow(iot, thing_name=THING)
    with anyio.fail_after(TIMEOUT):
        async with iot:
            await iot.wait_connected()
            await shadow.update_reported_state({"anc_enabled": True, "battery_level": 85})
    state = shadow.get_state()
    size = len(json.dumps(state))
    assert orjson.loads(json.dumps(state)) == {
        "desired": {},
        "reported": {"anc_enabled": True, "battery_level": 85},
        "delta": {},
        "version": state.version,
        "exists": True,
    }
    assert state.version == stored(emulator).version
    assert 0 < size < 8192
