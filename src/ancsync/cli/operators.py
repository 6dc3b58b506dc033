"""How ``ancsync jobs`` and ``ancsync certs`` reach the cloud side: the emulator or AWS.

Against the emulator (the default) a command connects over MQTT with the operator certificate,
with the connection options of ``ancsync shadow``; with ``--aws`` (or an ``--endpoint`` under
amazonaws.com) it calls AWS IoT through boto3 instead. :func:`run_operator` picks one and runs
the command's work with it; the library's errors go up to the command's
:func:`~ancsync.cli.output.reports_errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from ancsync.cli.output import setup_logging
from ancsync.cli.shadow import credentials_from_options

if TYPE_CHECKING:
    from ancsync.connection import IoTConnection

__all__ = ["run_operator", "uses_aws"]

T = TypeVar("T")


def uses_aws(aws: bool, endpoint: str) -> bool:
    """Whether to call AWS through boto3: ``--aws``, or an endpoint under amazonaws.com."""
    return aws or endpoint.endswith(".amazonaws.com")


def run_operator(
    work: Callable[[T], Awaitable[None]],
    *,
    on_aws: Callable[[], AbstractAsyncContextManager[T]],
    on_emulator: Callable[[IoTConnection], AbstractAsyncContextManager[T]],
    aws: bool,
    mqtt: tuple[Any, ...],
    timeout: float,
    verbose: bool,
) -> None:
    """Run ``work`` with the operator ``on_aws()`` or ``on_emulator(connection)`` opens.

    ``mqtt`` holds the emulator connection options, in the order of
    :func:`~ancsync.cli.shadow.credentials_from_options` (the endpoint first).
    """
    import anyio

    setup_logging(verbose, default=logging.CRITICAL)

    async def session() -> None:
        if uses_aws(aws, str(mqtt[0])):
            async with on_aws() as operator:
                await work(operator)
        else:
            connection = credentials_from_options(*mqtt).connection(connect_timeout=timeout)
            async with on_emulator(connection) as emulator:
                await work(emulator)

    anyio.run(session)
