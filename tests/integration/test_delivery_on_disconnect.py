"""Every PUBACKed publish is delivered, also when its client disconnects right after.

amqtt acknowledges a QoS 1 publish once it has queued it for the broker, and used to drop what
was still queued when the client's session ended; the emulator broadcasts all of it first.
"""

from __future__ import annotations

import aiomqtt
import anyio
import orjson
from helpers import device_client, operator_client
from publish_log import PublishLog

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import DevCerts
from ancsync.emulator.server import Emulator

DEVICE = "anc-device-001"
TOPIC = f"anc/telemetry/{DEVICE}/anc"
N = 4000
IN_FLIGHT = 50
TIMEOUT = 60


def batch(seq: int) -> bytes:
    return orjson.dumps(
        {
            "device_id": DEVICE,
            "kind": "anc",
            "msg_id": f"m-{seq}",
            "seq": seq,
            "sent_at": "2025-11-16T14:30:00Z",
            "records": [{"timestamp": "2025-11-16T14:30:00Z", "level": seq}],
        }
    )


async def publish_all_then_disconnect(client: aiomqtt.Client, topic: str, count: int) -> None:
    """Publish ``count`` QoS 1 messages, ``IN_FLIGHT`` at a time; disconnect once all are
    PUBACKed."""
    send, receive = anyio.create_memory_object_stream[int](count)
    for seq in range(count):
        send.send_nowait(seq)
    send.close()

    async def publisher() -> None:
        async for seq in receive.clone():
            await client.publish(topic, batch(seq), qos=1)

    async with client, anyio.create_task_group() as publishing:
        for _ in range(IN_FLIGHT):
            publishing.start_soon(publisher)
    receive.close()


async def collect(client: aiomqtt.Client, count: int, into: list[bytes]) -> None:
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        into.append(message.payload)
        if len(into) == count:
            return


async def test_every_acknowledged_publish_reaches_the_rules_sink_and_subscribers(
    emulator: Emulator,
) -> None:
    received: list[bytes] = []
    device = device_client(emulator.port, emulator.certs, DEVICE, max_inflight_messages=100)
    with anyio.fail_after(TIMEOUT):
        async with operator_client(emulator.port, emulator.certs, "cloud") as cloud:
            await cloud.subscribe("anc/telemetry/#", qos=1)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(collect, cloud, N, received)
                await publish_all_then_disconnect(device, TOPIC, N)
            await emulator.rules.wait_for(lambda sink: sink.stats()["telemetry_batches"] == N)
    assert sorted(orjson.loads(p)["seq"] for p in received) == list(range(N))
    assert emulator.rules.stats()["duplicates"] == 0
    assert [b.seq for b in emulator.rules.telemetry_batches()] == list(range(N))


class HeldLog(PublishLog):
    """A publish log that holds the broker's delivery of a client's messages until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = anyio.Event()

    async def __call__(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        await self.release.wait()
        await super().__call__(identity, topic, payload)


async def test_messages_still_queued_at_the_disconnect_are_delivered(dev_certs: DevCerts) -> None:
    """The broker is held on the first message until the client has every PUBACK and is gone:
    all the others are still in the queue when the session ends."""
    log = HeldLog()
    received: list[bytes] = []
    count = 500
    with anyio.fail_after(TIMEOUT):
        async with EmbeddedBroker(dev_certs) as broker:
            broker.add_publish_listener(log)
            async with operator_client(broker.port, dev_certs, "cloud") as cloud:
                await cloud.subscribe("a/#", qos=1)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(collect, cloud, count, received)
                    device = device_client(broker.port, dev_certs, DEVICE)
                    await publish_all_then_disconnect(device, "a/b", count)
                    log.release.set()
            await log.wait_for(lambda log: len(log.messages) == count)
    assert sorted(orjson.loads(p)["seq"] for p in log.on("a/b")) == list(range(count))
    assert sorted(orjson.loads(p)["seq"] for p in received) == list(range(count))
