"""The shadow service's own logic (admission, 429, 500, reply topics) with an in-memory broker.

The conformance of the documents is tested over MQTT in tests/integration/test_shadow_service.py;
here a recording stand-in for the broker makes the timing-dependent paths deterministic.
"""

from __future__ import annotations

from typing import Any

import anyio
import orjson

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.shadow_documents import ShadowLimits, ShadowStore
from ancsync.emulator.shadows import ShadowService

DEVICE = ClientIdentity("anc-device-001", "anc-device-001")
PREFIX = "$aws/things/anc-device-001/shadow"


class RecordingBroker:
    """Records what the service publishes; ``expect(n)`` waits until ``n`` messages arrived."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self._changed = anyio.Event()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        self.published.append((topic, orjson.loads(payload)))
        self._changed.set()
        self._changed = anyio.Event()

    def add_reserved_route(self, matches: Any, handler: Any) -> None:
        self.route = (matches, handler)

    async def expect(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        while len(self.published) < count:
            await self._changed.wait()
        return self.published


async def test_requests_beyond_the_in_flight_limit_get_429_at_once() -> None:
    service = ShadowService(limits=ShadowLimits(max_in_flight=2), clock=lambda: 42.9)
    broker = RecordingBroker()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            service.attach(broker)  # type: ignore[arg-type]
            await tasks.start(service.run)
            # Admitting a request never yields, so the first two are both queued (in flight)
            # when the third arrives.
            for token in ("a", "b", "c"):
                payload = orjson.dumps({"state": {"reported": {"x": token}}, "clientToken": token})
                await service.handle_request(DEVICE, f"{PREFIX}/update", payload)
            published = await broker.expect(5)
            tasks.cancel_scope.cancel()
    assert published[0] == (
        f"{PREFIX}/update/rejected",
        {"code": 429, "message": "Too Many Requests", "timestamp": 42, "clientToken": "c"},
    )
    assert [topic for topic, _ in published[1:]] == [
        f"{PREFIX}/update/accepted",
        f"{PREFIX}/update/documents",
        f"{PREFIX}/update/accepted",
        f"{PREFIX}/update/documents",
    ]
    assert service.stats() == {"requests": 2, "throttled": 1, "failed": 0}


async def test_the_in_flight_count_is_released_after_each_request() -> None:
    service = ShadowService(limits=ShadowLimits(max_in_flight=1, max_requests_per_second=None))
    broker = RecordingBroker()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            service.attach(broker)  # type: ignore[arg-type]
            await tasks.start(service.run)
            for count in range(1, 4):
                await service.handle_request(DEVICE, f"{PREFIX}/get", b"")
                await broker.expect(count)
            tasks.cancel_scope.cancel()
    assert [document["code"] for _, document in broker.published] == [404, 404, 404]


class BrokenStore(ShadowStore):
    def update(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")


async def test_an_unexpected_failure_is_a_500_and_the_service_goes_on() -> None:
    service = ShadowService(store=BrokenStore(), clock=lambda: 7)
    broker = RecordingBroker()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            service.attach(broker)  # type: ignore[arg-type]
            await tasks.start(service.run)
            payload = b'{"state": {}, "clientToken": "t"}'
            await service.handle_request(DEVICE, f"{PREFIX}/name/cfg/update", payload)
            await service.handle_request(DEVICE, f"{PREFIX}/name/cfg/get", b"")
            published = await broker.expect(2)
            tasks.cancel_scope.cancel()
    assert published[0] == (
        f"{PREFIX}/name/cfg/update/rejected",
        {"code": 500, "message": "Internal service failure", "timestamp": 7, "clientToken": "t"},
    )
    assert published[1][0] == f"{PREFIX}/name/cfg/get/rejected"
    assert service.stats()["failed"] == 1


async def test_a_response_topic_is_not_a_request() -> None:
    service = ShadowService()
    service.attach(RecordingBroker())  # type: ignore[arg-type]
    async with service:
        await service.handle_request(DEVICE, f"{PREFIX}/update/accepted", b"{}")
    assert service.stats()["requests"] == 0
