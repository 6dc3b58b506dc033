"""The Device Shadow service over MQTT: the conformance table against the running emulator.

Every case of tests/shadow_cases.py runs here with a device connected over TLS with its own
certificate, publishing on the real request topics and reading the real response topics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import anyio
import orjson
import pytest
from helpers import device_client, operator_client
from shadow_cases import CASES, Clock, Document, Replies, encode

from ancsync.emulator.server import Emulator
from ancsync.emulator.shadow_documents import ShadowLimits
from ancsync.topics import ShadowTopics, parse_shadow_topic

DEVICE = "anc-device-001"
TIMEOUT = 10


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One certificate directory for the module's emulators (certificates are reused)."""
    return tmp_path_factory.mktemp("shadow-certs")


class MqttShadowClient:
    """Sends shadow requests as ``thing`` and collects the replies from the response topics."""

    def __init__(self, client: aiomqtt.Client, thing: str = DEVICE) -> None:
        self.client = client
        self.thing = thing
        self._subscribed: set[str | None] = set()

    async def request(
        self, operation: str, payload: Document | bytes | None = None, *, shadow: str | None = None
    ) -> Replies:
        topics = ShadowTopics(self.thing, shadow)
        if shadow not in self._subscribed:
            await self.client.subscribe(topics.all_responses, qos=1)
            self._subscribed.add(shadow)
        await self.client.publish(f"{topics.prefix}/{operation}", encode(payload), qos=1)
        replies: list[tuple[str, Document]] = []
        async for message in self.client.messages:
            parsed = parse_shadow_topic(message.topic.value)
            assert parsed is not None
            assert (parsed.shadow_name, parsed.operation) == (shadow, operation), message.topic
            assert isinstance(message.payload, bytes)
            suffix = f"{parsed.operation}/{parsed.suffix}"
            replies.append((suffix, orjson.loads(message.payload)))
            if parsed.suffix == "rejected" or suffix in (
                "get/accepted",
                "delete/accepted",
                "update/documents",
            ):
                break
        return Replies(replies)


@asynccontextmanager
async def shadow_client(emulator: Emulator, thing: str = DEVICE) -> AsyncIterator[MqttShadowClient]:
    async with device_client(emulator.port, emulator.certs, thing) as client:
        yield MqttShadowClient(client, thing)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_conformance_over_mqtt(name: str, certs_dir: Path) -> None:
    clock = Clock()
    with anyio.fail_after(TIMEOUT):
        async with (
            Emulator(certs_dir, [DEVICE], clock=clock) as emulator,
            shadow_client(emulator) as client,
        ):
            await CASES[name](client, clock)


async def test_cloud_desired_change_reaches_the_device_as_a_delta(certs_dir: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            Emulator(certs_dir, [DEVICE]) as emulator,
            shadow_client(emulator) as device,
            operator_client(emulator.port, emulator.certs, "cloud-console") as operator,
        ):
            topics = ShadowTopics(DEVICE)
            await device.client.subscribe(topics.update_delta, qos=1)
            await operator.publish(
                topics.update, orjson.dumps({"state": {"desired": {"anc_intensity": 0.4}}}), qos=1
            )
            message = await anext(aiter(device.client.messages))
    assert message.topic.value == topics.update_delta
    assert isinstance(message.payload, bytes)
    delta = orjson.loads(message.payload)
    assert (delta["state"], delta["version"]) == ({"anc_intensity": 0.4}, 1)


async def flood(client: MqttShadowClient, count: int) -> list[Document]:
    """Publish ``count`` gets at once, then collect one reply per request (in any order)."""
    topics = ShadowTopics(client.thing)
    await client.client.subscribe(topics.all_responses, qos=1)
    for index in range(count):
        await client.client.publish(topics.get, orjson.dumps({"clientToken": f"r{index}"}))
    replies = []
    async for message in client.client.messages:
        assert isinstance(message.payload, bytes)
        replies.append(orjson.loads(message.payload))
        if len(replies) == count:
            break
    return replies


async def test_too_many_requests_in_flight_are_throttled(certs_dir: Path) -> None:
    # With 200 ms per request (a slow cloud round trip), 10 requests published at once cannot all
    # be served before the third arrives.
    limits = ShadowLimits(max_in_flight=2, max_requests_per_second=None)
    with anyio.fail_after(TIMEOUT):
        async with (
            Emulator(certs_dir, [DEVICE], limits=limits, shadow_latency=0.2) as emulator,
            shadow_client(emulator) as client,
        ):
            replies = await flood(client, 10)
            stats = emulator.shadows.stats()
    throttled = [reply for reply in replies if reply.get("code") == 429]
    assert throttled, "10 requests published at once never had more than 2 in flight"
    assert {reply["message"] for reply in throttled} == {"Too Many Requests"}
    assert all(reply.get("code") in (404, 429) for reply in replies)
    # Every request got exactly one reply, carrying its own token.
    assert sorted(reply["clientToken"] for reply in replies) == sorted(f"r{i}" for i in range(10))
    assert stats["throttled"] == len(throttled)


async def test_requests_per_second_over_the_limit_are_throttled(certs_dir: Path) -> None:
    limits = ShadowLimits(max_requests_per_second=5)
    with anyio.fail_after(TIMEOUT):
        async with (
            Emulator(certs_dir, [DEVICE], limits=limits) as emulator,
            shadow_client(emulator) as client,
        ):
            replies = await flood(client, 12)
    codes = [reply.get("code") for reply in replies]
    # All 12 arrive well within one second: the first 5 are served (404: no shadow yet).
    assert codes.count(404) == 5
    assert codes.count(429) == 7
