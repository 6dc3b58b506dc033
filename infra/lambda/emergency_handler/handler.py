"""Emergency handler: the Lambda behind the IoT rule ``emergency_to_lambda``.

For each emergency event (the flat payload of ``anc/devices/{id}/emergency``, see
``infra/terraform/rules/emergency_to_lambda.sql``) it:

1. records the event once in DynamoDB, keyed by (device_id, event_id), with a conditional put;
2. notifies the SNS topic;
3. publishes an ``emergency_ack`` command to ``anc/devices/{id}/commands`` (iot-data API, QoS 1);
4. marks the record acknowledged.

The device sends emergencies at least once (QoS 1, retried across reconnects), so the same
event can arrive again. A redelivery of an acknowledged event is a no-op. A redelivery of an
event whose first invocation failed half-way (recorded, but not acknowledged) finishes the job,
so an SNS or IoT outage never loses the notification. The ack's ``command_id`` is derived from
the event, so a repeated ack is recognisable as the same command on the device.

Runs on the Lambda Python runtime with its bundled boto3; no other dependency.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
from botocore.exceptions import ClientError

logger = logging.getLogger("ancsync.emergency_handler")
logger.setLevel(logging.INFO)

RECEIVED = "received"
ACKNOWLEDGED = "acknowledged"
REQUIRED_FIELDS = ("device_id", "event_id")
# Namespace of the deterministic ack command ids (uuid5 of device and event).
_ACK_NAMESPACE = uuid.UUID("0b7e3c6a-4f0e-5d35-9c55-6a2f3b1e8d40")


class InvalidEvent(ValueError):
    """The event lacks a field the handler needs; the rule or the device is out of step."""


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds and ``Z``, the timestamp form of the wire format."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ack_command(device_id: str, event_id: str, issued_at: str) -> dict[str, Any]:
    """The ``emergency_ack`` command for one event (the device's ``Command`` payload)."""
    return {
        "command_id": uuid.uuid5(_ACK_NAMESPACE, f"{device_id}/{event_id}").hex,
        "command": "emergency_ack",
        "params": {"event_id": event_id},
        "issued_at": issued_at,
    }


def commands_topic(device_id: str) -> str:
    return f"anc/devices/{device_id}/commands"


def _check(event: dict[str, Any]) -> tuple[str, str]:
    missing = [f for f in REQUIRED_FIELDS if not isinstance(event.get(f), str) or not event[f]]
    if missing:
        raise InvalidEvent(
            f"emergency event lacks {', '.join(missing)} (got fields {sorted(event)}); "
            "the device payload and the rule SQL must keep these top-level string fields"
        )
    # A '/', '+' or '#' in the device id would publish the ack to another topic.
    if any(c in event["device_id"] for c in "/+#"):
        raise InvalidEvent(f"device_id {event['device_id']!r} is not a valid thing name")
    return event["device_id"], event["event_id"]


def _record_once(table: Any, event: dict[str, Any], received_at: str) -> bool:
    """Put the event unless (device_id, event_id) is already stored; True if this put wrote it."""
    # DynamoDB rejects floats: numbers go in as Decimal.
    item = json.loads(json.dumps(event), parse_float=Decimal)
    item.update(status=RECEIVED, recorded_at=received_at)
    try:
        table.put_item(
            Item=item,
            ConditionExpression="attribute_not_exists(event_id)",
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _notify(sns: Any, topic_arn: str, event: dict[str, Any]) -> None:
    device_id = event["device_id"]
    what = event.get("predicted_class", "emergency")
    subject = f"ANC emergency on {device_id}: {what}"
    lines = [
        f"Device {device_id} reported an emergency.",
        f"Class: {what} (confidence {event.get('confidence', '?')})",
        f"Severity: {event.get('severity', '?')}",
        f"Action taken on the device: {event.get('action', '?')}",
        f"Device time: {event.get('timestamp', '?')}",
        f"Event id: {event['event_id']}",
        "",
        json.dumps(event, sort_keys=True, default=str),
    ]
    sns.publish(
        TopicArn=topic_arn,
        # SNS subjects are at most 100 printable ASCII characters.
        Subject=subject.encode("ascii", "replace").decode()[:100],
        Message="\n".join(lines),
        MessageAttributes={
            "device_id": {"DataType": "String", "StringValue": device_id},
            "severity": {"DataType": "String", "StringValue": str(event.get("severity", ""))},
        },
    )


def process(
    event: dict[str, Any],
    *,
    table: Any,
    sns: Any,
    iot_data: Any,
    topic_arn: str,
    now: Callable[[], str] = utc_now,
) -> dict[str, Any]:
    """Handle one emergency event; say what was done: recorded, completed or duplicate."""
    device_id, event_id = _check(event)
    key = {"device_id": device_id, "event_id": event_id}
    outcome = "recorded"
    if not _record_once(table, event, now()):
        stored = table.get_item(Key=key, ConsistentRead=True).get("Item", {})
        if stored.get("status") == ACKNOWLEDGED:
            logger.info(
                "event %s of %s already acknowledged: redelivery ignored", event_id, device_id
            )
            return {"outcome": "duplicate", **key}
        logger.info(
            "event %s of %s recorded earlier but not acknowledged: finishing", event_id, device_id
        )
        outcome = "completed"

    _notify(sns, topic_arn, event)
    command = ack_command(device_id, event_id, now())
    iot_data.publish(topic=commands_topic(device_id), qos=1, payload=json.dumps(command).encode())
    table.update_item(
        Key=key,
        UpdateExpression="SET #status = :done, acknowledged_at = :at, ack_command_id = :cid",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={
            ":done": ACKNOWLEDGED,
            ":at": command["issued_at"],
            ":cid": command["command_id"],
        },
    )
    logger.info("event %s of %s %s, notified and acknowledged", event_id, device_id, outcome)
    return {"outcome": outcome, "command_id": command["command_id"], **key}


_clients: dict[str, Any] = {}


def handle(event: dict[str, Any], context: object) -> dict[str, Any]:
    """Lambda entry point (``handler.handle``); clients are made once per container."""
    if not _clients:
        _clients["table"] = boto3.resource("dynamodb").Table(os.environ["EMERGENCY_TABLE"])
        _clients["sns"] = boto3.client("sns")
        _clients["iot_data"] = boto3.client(
            "iot-data", endpoint_url=os.environ["IOT_DATA_ENDPOINT"]
        )
    return process(event, topic_arn=os.environ["EMERGENCY_TOPIC_ARN"], **_clients)
