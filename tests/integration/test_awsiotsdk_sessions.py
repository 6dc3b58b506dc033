"""Interop: AWS's own device SDK (awsiotsdk over awscrt) resumes persistent sessions and runs the
Device Shadow on the emulator, used as AWS's samples use it and unchanged.

- a persistent session (``clean_session=False``): subscribe QoS 1, disconnect; three QoS 1
  messages published meanwhile by another client arrive after the reconnect, which reports
  session present, in order and not flagged retained;
- a clean session after it reports no session and has nothing queued;
- ``awsiot.iotshadow.IotShadowClient``: an update with desired and reported gets the accepted
  document and the delta; after a disconnect, the persistent session still holds the reply
  subscriptions, and get-shadow returns the stored document.
"""

from __future__ import annotations

from typing import Any

import anyio
from awscrt import mqtt
from awsiot import iotshadow
from awsiot_device import TIMEOUT, Events, awsiot_connection, wait
from helpers import operator_client

from ancsync.emulator.server import Emulator

THING = "anc-device-001"
COMMANDS = f"anc/devices/{THING}/commands"
QOS1 = mqtt.QoS.AT_LEAST_ONCE


def on_message(events: Events) -> Any:
    """An awscrt message callback recording ``(topic, payload, qos, retain)`` as a message."""

    def record(
        topic: str, payload: bytes, dup: bool, qos: mqtt.QoS, retain: bool, **_: Any
    ) -> None:
        events.put("message", (topic, payload, qos, retain))

    return record


async def publish_commands(emulator: Emulator, *payloads: bytes) -> None:
    """The cloud side publishes ``payloads`` to COMMANDS at QoS 1, each acknowledged."""
    async with operator_client(emulator.port, emulator.certs, "cloud") as cloud:
        for payload in payloads:
            await cloud.publish(COMMANDS, payload, qos=1)


async def test_a_persistent_session_gets_what_was_published_while_it_was_away(
    emulator: Emulator,
) -> None:
    events = Events()
    connection = awsiot_connection(emulator, THING, clean_session=False)
    with anyio.fail_after(TIMEOUT * 4):
        first = await wait(connection.connect())
        subscribed, _packet_id = connection.subscribe(COMMANDS, QOS1, on_message(events))
        assert (await wait(subscribed))["qos"] == QOS1
        await wait(connection.disconnect())

        await publish_commands(emulator, b"one", b"two", b"three")

        resumed = await wait(connection.connect())
        try:
            messages = [(await events.next("message"))[1] for _ in range(3)]
            await publish_commands(emulator, b"marker")  # online: nothing else was queued
            after = (await events.next("message"))[1]
        finally:
            await wait(connection.disconnect())
    assert first["session_present"] is False
    assert resumed["session_present"] is True
    assert messages == [(COMMANDS, payload, QOS1, False) for payload in (b"one", b"two", b"three")]
    assert after == (COMMANDS, b"marker", QOS1, False)


async def test_a_clean_session_after_it_finds_no_session_and_nothing_queued(
    emulator: Emulator,
) -> None:
    events = Events()
    persistent = awsiot_connection(emulator, THING, clean_session=False)
    clean = awsiot_connection(emulator, THING, clean_session=True)
    with anyio.fail_after(TIMEOUT * 4):
        await wait(persistent.connect())
        subscribed, _packet_id = persistent.subscribe(COMMANDS, QOS1, on_message(events))
        await wait(subscribed)
        await wait(persistent.disconnect())

        await publish_commands(emulator, b"one", b"two", b"three")

        connected = await wait(clean.connect())
        try:
            subscribed, _packet_id = clean.subscribe(COMMANDS, QOS1, on_message(events))
            await wait(subscribed)
            # A queued message would come before this one (one connection, in order).
            await publish_commands(emulator, b"marker")
            first = (await events.next("message"))[1]
        finally:
            await wait(clean.disconnect())
    assert connected["session_present"] is False
    assert first == (COMMANDS, b"marker", QOS1, False)


async def test_the_shadow_client_gets_the_delta_and_after_a_reconnect_the_stored_document(
    emulator: Emulator,
) -> None:
    events = Events()
    connection = awsiot_connection(emulator, THING, clean_session=False)
    shadow = iotshadow.IotShadowClient(connection)
    with anyio.fail_after(TIMEOUT * 4):
        await wait(connection.connect())
        subscriptions = [
            shadow.subscribe_to_update_shadow_accepted(
                iotshadow.UpdateShadowSubscriptionRequest(thing_name=THING),
                QOS1,
                events.on("update-accepted"),
            ),
            shadow.subscribe_to_update_shadow_rejected(
                iotshadow.UpdateShadowSubscriptionRequest(thing_name=THING),
                QOS1,
                events.on("update-rejected"),
            ),
            shadow.subscribe_to_shadow_delta_updated_events(
                iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=THING),
                QOS1,
                events.on("delta"),
            ),
            shadow.subscribe_to_get_shadow_accepted(
                iotshadow.GetShadowSubscriptionRequest(thing_name=THING),
                QOS1,
                events.on("get-accepted"),
            ),
            shadow.subscribe_to_get_shadow_rejected(
                iotshadow.GetShadowSubscriptionRequest(thing_name=THING),
                QOS1,
                events.on("get-rejected"),
            ),
        ]
        for future, _topic in subscriptions:
            await wait(future)

        update = iotshadow.UpdateShadowRequest(
            thing_name=THING,
            state=iotshadow.ShadowState(
                desired={"anc_intensity": 0.8, "anc_enabled": True},
                reported={"anc_intensity": 0.5, "anc_enabled": True},
            ),
            client_token="update-1",
        )
        await wait(shadow.publish_update_shadow(update, QOS1))
        # The accepted document and the delta, in either order.
        replies = dict([await events.next(), await events.next()])
        await wait(connection.disconnect())

        resumed = await wait(connection.connect())
        try:
            request = iotshadow.GetShadowRequest(thing_name=THING, client_token="get-1")
            await wait(shadow.publish_get_shadow(request, QOS1))
            kind, stored = await events.next()
        finally:
            await wait(connection.disconnect())

    assert set(replies) == {"update-accepted", "delta"}
    accepted, delta = replies["update-accepted"], replies["delta"]
    assert accepted.client_token == "update-1"
    assert accepted.version == 1
    assert accepted.state.desired == {"anc_intensity": 0.8, "anc_enabled": True}
    assert accepted.state.reported == {"anc_intensity": 0.5, "anc_enabled": True}
    assert delta.state == {"anc_intensity": 0.8}
    assert delta.version == 1

    assert resumed["session_present"] is True  # the reply subscriptions were kept
    assert kind == "get-accepted"
    assert stored.client_token == "get-1"
    assert stored.version == 1
    assert stored.state.desired == {"anc_intensity": 0.8, "anc_enabled": True}
    assert stored.state.reported == {"anc_intensity": 0.5, "anc_enabled": True}
    assert stored.state.delta == {"anc_intensity": 0.8}
