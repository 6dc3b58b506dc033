"""Requests the broker answers by closing the connection: AWS IoT's "not allowed" on MQTT 3.1.1.

AWS IoT Core does not refuse a publish or a subscription the device policy denies with an error
code: it disconnects the client. Retrying the same request after every reconnect would then
disconnect the device forever. So when a connection is lost, the session treats the requests it
had outstanding as suspects:

- the publishes in flight go back in the outbox as usual, marked: when its turn comes, each is
  sent **alone** (the session waits for the others' PUBACKs first, and for its own before
  sending more);
- the filters of a SUBSCRIBE in flight are subscribed again one at a time, first.

A suspect that loses the connection again while it is alone, :data:`REFUSAL_STRIKES` times, is
refused: a publish fails its handle with :class:`~ancsync.errors.TopicNotAllowed` (a durable
message stays in its store), a filter is no longer subscribed, and the session emits a
``refused`` :class:`~ancsync.mqtt.session.ConnectionEvent`. A suspect that gets its answer is
cleared, so an ordinary network failure costs one lone round trip per message in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ancsync.errors import TopicNotAllowed
from ancsync.mqtt.outbox import OutgoingMessage

__all__ = ["REFUSAL_STRIKES", "Refusals"]

log = logging.getLogger("ancsync.mqtt.refusals")

REFUSAL_STRIKES = 2
"""Lost connections, with the request alone on the wire, after which it counts as refused."""


def not_allowed(action: str, topic: str) -> TopicNotAllowed:
    """The error for a request the broker keeps answering by disconnecting."""
    resource = "topicfilter" if action == "iot:Subscribe" else "topic"
    verb = "subscribed to" if action == "iot:Subscribe" else "published to"
    return TopicNotAllowed(
        f"the broker closed the connection every time the device {verb} {topic!r} alone: AWS "
        f"IoT Core does that when the policy does not allow {action} on {resource}/{topic}; "
        f"allow it in the device policy (or stop using the topic). ancsync no longer sends it.",
        topic=topic,
    )


@dataclass
class Refusals:
    """The suspects and the refused topics of one session (see the module docstring)."""

    strikes: int = REFUSAL_STRIKES
    #: Filters that were being subscribed at a lost connection, to subscribe alone.
    suspect_filters: list[str] = field(default_factory=list)
    refused_filters: set[str] = field(default_factory=set)
    refused_topics: set[str] = field(default_factory=set)
    # msg_id of each publish in flight at a lost connection -> its losses while alone.
    _suspects: dict[str, int] = field(default_factory=dict)
    _filter_strikes: dict[str, int] = field(default_factory=dict)

    def is_suspect(self, message: OutgoingMessage) -> bool:
        """Whether ``message`` must be sent alone."""
        return message.msg_id in self._suspects

    def connection_lost(
        self,
        in_flight: list[OutgoingMessage],
        subscribing: list[str],
        *,
        alone: OutgoingMessage | None,
    ) -> tuple[list[OutgoingMessage], list[TopicNotAllowed]]:
        """Take the outstanding requests of a lost connection.

        Returns the publishes to put back in the outbox (now suspects) and the errors of the
        requests now refused (their handles failed).
        """
        again: list[OutgoingMessage] = []
        refused: list[TopicNotAllowed] = []
        for message in in_flight:
            strikes = self._suspects.get(message.msg_id, 0) + (message is alone)
            if strikes >= self.strikes:
                del self._suspects[message.msg_id]
                error = not_allowed("iot:Publish", message.topic)
                self.refused_topics.add(message.topic)
                message.handle.fail(error)
                log.error("message %s not sent: %s", message.msg_id, error)
                refused.append(error)
            else:
                self._suspects[message.msg_id] = strikes
                again.append(message)
        lone = len(subscribing) == 1 and subscribing[0] in self.suspect_filters
        for topic_filter in subscribing:
            strikes = self._filter_strikes.get(topic_filter, 0) + lone
            if strikes >= self.strikes:
                self.suspect_filters.remove(topic_filter)
                del self._filter_strikes[topic_filter]
                self.refused_filters.add(topic_filter)
                error = not_allowed("iot:Subscribe", topic_filter)
                log.error("subscription given up: %s", error)
                refused.append(error)
                continue
            self._filter_strikes[topic_filter] = strikes
            if topic_filter not in self.suspect_filters:
                self.suspect_filters.append(topic_filter)
        return again, refused

    def answered(self, message: OutgoingMessage) -> None:
        """A publish was acknowledged: not a refusal."""
        self._suspects.pop(message.msg_id, None)

    def subscribed(self, topic_filter: str) -> None:
        """A filter was granted (or refused with a SUBACK code): not a disconnecting refusal."""
        if topic_filter in self.suspect_filters:
            self.suspect_filters.remove(topic_filter)
        self._filter_strikes.pop(topic_filter, None)
