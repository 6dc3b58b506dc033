"""The emergency Lambda against moto's DynamoDB, SNS (read through an SQS subscription) and
iot-data, in process: record once, notify, acknowledge, and survive redelivery and half-failures."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from helpers import load_script
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iotdata.models import iotdata_backends

from ancsync.models import Command, EmergencyEvent
from ancsync.topics import commands_topic

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
LAMBDA_DIR = REPO / "infra" / "lambda"


handler = load_script(LAMBDA_DIR / "emergency_handler" / "handler.py", "emergency_handler")


class Cloud:
    """The AWS side the Lambda talks to, made with the same keys Terraform declares."""

    def __init__(self) -> None:
        dynamodb = boto3.resource("dynamodb", region_name=REGION)
        self.table = dynamodb.create_table(
            TableName="anc-test-emergencies",
            KeySchema=[
                {"AttributeName": "device_id", "KeyType": "HASH"},
                {"AttributeName": "event_id", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "device_id", "AttributeType": "S"},
                {"AttributeName": "event_id", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        self.sns = boto3.client("sns", region_name=REGION)
        self.topic_arn = self.sns.create_topic(Name="anc-test-emergencies")["TopicArn"]
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.queue_url = self.sqs.create_queue(QueueName="inbox")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn)
        self.iot_data = boto3.client(
            "iot-data",
            region_name=REGION,
            endpoint_url=f"https://data-ats.iot.{REGION}.amazonaws.com",
        )

    def notifications(self) -> list[dict[str, Any]]:
        got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
        return [json.loads(m["Body"]) for m in got.get("Messages", [])]

    def published(self) -> list[tuple[str, bytes]]:
        return list(iotdata_backends[DEFAULT_ACCOUNT_ID][REGION].published_payloads)

    def process(self, event: dict[str, Any], topic_arn: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = handler.process(
            event,
            table=self.table,
            sns=self.sns,
            iot_data=self.iot_data,
            topic_arn=topic_arn or self.topic_arn,
        )
        return result


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield Cloud()


def emergency(event_id: str = "e0c1a2b3c4d5e6f708192a3b4c5d6e7f") -> dict[str, Any]:
    """A device's emergency payload as the rule hands it over (plus the rule's received_at)."""
    event = EmergencyEvent(
        device_id="anc-device-001",
        event_id=event_id,
        seq=7,
        timestamp="2025-11-16T14:30:00.123Z",
        is_emergency=True,
        predicted_class="siren",
        confidence=0.93,
        action="anc_off",
        severity="critical",
    )
    return {**event.model_dump(mode="json"), "received_at": 1763303400200}


def test_first_delivery_records_notifies_and_acknowledges(cloud: Cloud) -> None:
    event = emergency()
    result = cloud.process(event)
    assert result["outcome"] == "recorded"

    item = cloud.table.get_item(Key={"device_id": "anc-device-001", "event_id": event["event_id"]})
    stored = item["Item"]
    assert stored["status"] == "acknowledged"
    assert stored["predicted_class"] == "siren"
    assert float(stored["confidence"]) == pytest.approx(0.93)
    assert stored["ack_command_id"] == result["command_id"]

    [note] = cloud.notifications()
    assert "anc-device-001" in note["Subject"]
    assert "siren" in note["Subject"]
    assert event["event_id"] in note["Message"]

    [(topic, payload)] = cloud.published()
    assert topic == commands_topic("anc-device-001")
    # The device parses it with its own model: the ack is a valid Command.
    command = Command.model_validate_json(payload)
    assert command.command == "emergency_ack"
    assert command.params == {"event_id": event["event_id"]}
    assert command.command_id == result["command_id"]


def test_redelivery_is_a_no_op(cloud: Cloud) -> None:
    event = emergency()
    cloud.process(event)
    assert len(cloud.notifications()) == 1

    again = cloud.process(dict(event, received_at=1763303409999))
    assert again["outcome"] == "duplicate"
    assert cloud.notifications() == []
    assert len(cloud.published()) == 1
    items = cloud.table.scan()["Items"]
    assert len(items) == 1
    assert items[0]["received_at"] == 1763303400200  # the first delivery's record is kept


def test_distinct_events_are_each_handled(cloud: Cloud) -> None:
    cloud.process(emergency("a" * 32))
    cloud.process(emergency("b" * 32))
    assert len(cloud.table.scan()["Items"]) == 2
    acks = [Command.model_validate_json(p) for _, p in cloud.published()]
    assert {a.params["event_id"] for a in acks} == {"a" * 32, "b" * 32}
    assert len({a.command_id for a in acks}) == 2


def test_a_failed_notification_is_finished_on_redelivery(cloud: Cloud) -> None:
    event = emergency()
    missing_topic = cloud.topic_arn.replace("anc-test-emergencies", "deleted-topic")
    with pytest.raises(ClientError, match="NotFound"):
        cloud.process(event, topic_arn=missing_topic)
    key = {"device_id": "anc-device-001", "event_id": event["event_id"]}
    assert cloud.table.get_item(Key=key)["Item"]["status"] == "received"
    assert cloud.published() == []

    # Lambda retries the asynchronous invocation: this time SNS works.
    result = cloud.process(event)
    assert result["outcome"] == "completed"
    assert len(cloud.notifications()) == 1
    assert len(cloud.published()) == 1
    assert cloud.table.get_item(Key=key)["Item"]["status"] == "acknowledged"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"event_id": None}, "event_id"),
        ({"device_id": ""}, "device_id"),
        ({"device_id": "a/b"}, "not a valid thing name"),
    ],
)
def test_an_event_without_identity_is_refused(
    cloud: Cloud, change: dict[str, Any], problem: str
) -> None:
    event = {k: v for k, v in {**emergency(), **change}.items() if v is not None}
    with pytest.raises(handler.InvalidEvent, match=problem):
        cloud.process(event)
    assert cloud.table.scan()["Items"] == []
    assert cloud.published() == []


def test_entry_point_reads_its_configuration_from_the_environment(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The variables lambda.tf sets.
    monkeypatch.setenv("EMERGENCY_TABLE", cloud.table.name)
    monkeypatch.setenv("EMERGENCY_TOPIC_ARN", cloud.topic_arn)
    monkeypatch.setenv("IOT_DATA_ENDPOINT", f"https://data-ats.iot.{REGION}.amazonaws.com")
    monkeypatch.setattr(handler, "_clients", {})
    result = handler.handle(emergency(), None)
    assert result["outcome"] == "recorded"
    assert len(cloud.published()) == 1
    lambda_tf = (REPO / "infra" / "terraform" / "lambda.tf").read_text()
    for name in ("EMERGENCY_TABLE", "EMERGENCY_TOPIC_ARN", "IOT_DATA_ENDPOINT"):
        assert f"{name} " in lambda_tf or f"{name}=" in lambda_tf
    assert 'handler          = "handler.handle"' in lambda_tf


def test_package_is_deterministic_and_holds_the_handler(tmp_path: Path) -> None:
    package = load_script(LAMBDA_DIR / "package.py", "lambda_package")
    first = package.build(tmp_path / "one.zip")
    second = package.build(tmp_path / "two.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert archive.namelist() == ["handler.py"]
        source = (LAMBDA_DIR / "emergency_handler" / "handler.py").read_bytes()
        assert archive.read("handler.py") == source


def test_handler_needs_only_fields_every_emergency_carries() -> None:
    # The rule passes the payload through (SELECT *): what the handler requires, the model must.
    required = set(EmergencyEvent.model_json_schema()["required"])
    assert set(handler.REQUIRED_FIELDS) <= required
