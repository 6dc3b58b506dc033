"""Device Shadow sync: :class:`DeviceShadowSync` and the pure document rules it builds on.

- :mod:`ancsync.shadow.document`: delta, merge, limits and the device's local copy (pure).
- :mod:`ancsync.shadow.requests`: requests and replies (clientToken, timeouts, retries, limits).
- :mod:`ancsync.shadow.sync`: the state machine (coalescing, versions, deltas, re-sync).
"""

from ancsync.shadow.document import ShadowState
from ancsync.shadow.sync import Applied, DeltaHandler, DeviceShadowSync

__all__ = ["Applied", "DeltaHandler", "DeviceShadowSync", "ShadowState"]
