"""Waiting for the broker to drop an aiomqtt client, for the requests AWS answers that way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiomqtt
import anyio
import pytest
from helpers import next_message


async def until_disconnected(
    client: aiomqtt.Client, request: Callable[[], Awaitable[object]]
) -> None:
    """Make ``request`` and wait until the broker drops ``client`` (bound it with fail_after).

    aiomqtt's QoS 1 publish and its subscribe wait for an ack that never comes (until their
    timeout), so the disconnect is seen on the message stream; the request is then cancelled.
    """
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(request)
        with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
            await next_message(client)
        tasks.cancel_scope.cancel()
