"""The console's one error: an action the page asked for could not be done."""

from __future__ import annotations

from ancsync.errors import AncSyncError

__all__ = ["ConsoleError"]


class ConsoleError(AncSyncError):
    """A console action could not be done; the message says why and how to fix it.

    The page shows it next to the action; the console keeps running.
    """
