"""Device Shadow sync: :class:`DeviceShadowSync` and the pure document rules it builds on.

- :mod:`ancsync.shadow.document`: delta, merge, limits and the device's local copy (pure).
- :mod:`ancsync.shadow.requests`: requests and replies (clientToken, timeouts, retries, limits).
- :mod:`ancsync.shadow.reporting`: coalesced reported updates, one batch in flight.
- :mod:`ancsync.shadow.deltas`: from a delta to an honest report (validation, handler, errors).
- :mod:`ancsync.shadow.sync`: the state machine that ties them together (versions, re-sync).
"""

from ancsync.shadow.deltas import Applied, DeltaHandler
from ancsync.shadow.document import ShadowState
from ancsync.shadow.sync import DeviceShadowSync

__all__ = ["Applied", "DeltaHandler", "DeviceShadowSync", "ShadowState"]
