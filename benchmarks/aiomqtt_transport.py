"""The transport ancsync had before PahoTransport: aiomqtt, reaching into aiomqtt's and paho's
private attributes. Kept only as a baseline for benchmarks/bench_publish.py (not shipped, not
used by the library), reduced to what publishing needs: its connect, publish and close work as
they did; its error mapping is gone (see ancsync.mqtt.paho_errors for the one in use).

Its privates, which is why it was replaced: ``aiomqtt.Client._client`` (the paho client, for a
synchronous publish without a task per message and for its PUBACK callback), paho's
``_ping_t`` (for the half-open check), and positional paho callback arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiomqtt
import anyio
from paho.mqtt.client import MQTT_ERR_SUCCESS

from ancsync.errors import ConnectError
from ancsync.mqtt.transport import ConnectOptions, IncomingMessage

__all__ = ["AiomqttTransport"]


class AiomqttTransport:
    """The old :class:`~ancsync.mqtt.transport.Transport` on an :class:`aiomqtt.Client`."""

    def __init__(self, *, max_inflight: int = 20) -> None:
        self._max_inflight = max_inflight
        self._client: aiomqtt.Client | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._acks: dict[int, Callable[[], None]] = {}

    async def connect(self, options: ConnectOptions) -> None:
        w = options.will
        client = aiomqtt.Client(
            options.host,
            options.port,
            identifier=options.client_id,
            keepalive=options.keep_alive,
            clean_session=options.clean_session,
            will=aiomqtt.Will(w.topic, w.payload, w.qos, w.retain) if w else None,
            tls_context=options.ssl_context,
            timeout=options.connect_timeout,
            max_inflight_messages=self._max_inflight,
        )
        client.pending_calls_threshold = self._max_inflight + 10
        paho = client._client
        aiomqtt_on_publish = paho.on_publish

        def on_publish(*args: Any, **kwargs: Any) -> None:
            on_done = self._acks.pop(args[2], None)  # (client, userdata, mid, reason, props)
            if on_done is not None:
                on_done()
            aiomqtt_on_publish(*args, **kwargs)

        paho.on_publish = on_publish
        with anyio.CancelScope(shield=True):
            await client.__aenter__()
        self._client = client
        if options.keep_alive > 0:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.create_task(self._watch_keepalive(options.keep_alive))

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, on_done: Callable[[], None]
    ) -> None:
        if self._client is None:
            raise ConnectError("not connected")
        info = self._client._client.publish(topic, payload, qos, retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise ConnectError("connection lost")
        if info.is_published():
            on_done()
        else:
            self._acks[info.mid] = on_done

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        assert self._client is not None
        codes = await self._client.subscribe(list(filters))
        return [getattr(code, "value", code) for code in codes]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        assert self._client is not None
        await self._client.unsubscribe(list(filters))

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        assert self._client is not None
        try:
            async for message in self._client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                yield IncomingMessage(message.topic.value, payload, message.qos, message.retain)
        except aiomqtt.MqttError as exc:
            raise ConnectError(f"connection lost: {exc}") from exc
        raise ConnectError("connection lost: the broker closed it")

    async def close(self) -> None:
        self._acks.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)

    async def _watch_keepalive(self, keep_alive: int) -> None:
        """The old half-open check: paho's private ``_ping_t`` unanswered for keep-alive / 2."""
        assert self._client is not None
        paho = self._client._client
        while True:
            await asyncio.sleep(min(1.0, keep_alive / 8))  # ok: a periodic check
            paho.loop_misc()
            ping_sent: float = getattr(paho, "_ping_t", 0.0)
            if ping_sent and time.monotonic() - ping_sent >= keep_alive / 2:
                sock = paho.socket()
                if sock is not None:
                    sock.close()
                return
