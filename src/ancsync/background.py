"""A component's task run in the background of its ``async with`` block.

``__aenter__`` cannot hold a task group open across the caller's block, so the group lives in an
:class:`~contextlib.AsyncExitStack` that ``__aexit__`` closes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

import anyio

__all__ = ["start_in_background"]


async def start_in_background(run: Callable[..., Coroutine[Any, Any, Any]]) -> AsyncExitStack:
    """Start ``run`` in a new task group and return once it calls ``task_status.started()``.

    ``await stack.aclose()`` on the returned stack cancels ``run`` and waits for it to end. If
    ``run`` fails before it has started, the group is closed and the error raised here.
    """
    stack = AsyncExitStack()
    tasks = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(tasks.cancel_scope.cancel)  # runs before the group is exited
    try:
        await tasks.start(run)
    except BaseException:
        await stack.aclose()
        raise
    return stack
