"""Every IoT rule agrees with the payloads the SDK sends.

The rule SQL lives in infra/terraform/rules/*.sql (Terraform reads the same files). For each rule:
its FROM filter matches the topics the SDK publishes that payload on, every field it reads in
SELECT, WHERE and the S3 key exists at the top level of the payload's JSON Schema with the type
the SQL compares it to, and the DynamoDB key attributes are in what it selects. The previous
version of this platform shipped rules that never matched the device's payloads; this is the
check that would have caught it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ancsync.models import json_schemas
from ancsync.topics import (
    TELEMETRY_KINDS,
    commands_topic,
    emergency_topic,
    matches,
    status_topic,
    telemetry_topic,
)

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "infra" / "terraform"
THING = "anc-device-001"
SCHEMAS = json_schemas()

# Every topic the SDK publishes on, with the payload model and what the SDK puts in the fields
# that are also topic levels (DESIGN 4: the device id equals the thing name).
SDK_TOPICS: dict[str, tuple[str, dict[str, str]]] = {
    emergency_topic(THING): ("EmergencyEvent", {"device_id": THING}),
    status_topic(THING): ("DeviceStatus", {"device_id": THING}),
    **{
        telemetry_topic(THING, kind): ("TelemetryBatch", {"device_id": THING, "kind": kind})
        for kind in TELEMETRY_KINDS
    },
}
KEYWORDS = {"select", "from", "where", "as", "and", "or", "not", "true", "false", "null", "is"}
_SQL = re.compile(
    r"^\s*SELECT\s+(?P<select>.+?)\s+FROM\s+'(?P<source>[^']+)'(?:\s+WHERE\s+(?P<where>.+?))?\s*$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass
class Rule:
    name: str
    block: str
    select: str
    source: str
    where: str

    @property
    def topics(self) -> list[str]:
        return [t for t in SDK_TOPICS if matches(self.source, t)]

    @property
    def model(self) -> str:
        models = {SDK_TOPICS[t][0] for t in self.topics}
        assert len(models) == 1, f"{self.name} matches topics of {models or 'no'} payload models"
        return models.pop()

    @property
    def schema(self) -> dict[str, Any]:
        return SCHEMAS[self.model]


def strip_literals(expression: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", expression)


def payload_fields(expression: str) -> set[str]:
    """The payload fields an expression reads: identifiers that are not functions or keywords."""
    expression = strip_literals(expression)
    expression = re.sub(r"\bAS\s+\w+", "", expression, flags=re.IGNORECASE)
    names = re.findall(r"(?<![\w.])([A-Za-z_]\w*)(?!\w|\s*\()", expression)
    return {name for name in names if name.lower() not in KEYWORDS}


def aliases(select: str) -> set[str]:
    return set(re.findall(r"\bAS\s+(\w+)", strip_literals(select), flags=re.IGNORECASE))


def rule_blocks() -> dict[str, str]:
    """Each ``aws_iot_topic_rule`` resource's body, by resource name."""
    text = "\n".join(path.read_text() for path in sorted(TERRAFORM.glob("*.tf")))
    blocks: dict[str, str] = {}
    for found in re.finditer(
        r'^resource "aws_iot_topic_rule" "(\w+)" \{\n(.*?)^\}', text, re.M | re.S
    ):
        blocks[found.group(1)] = found.group(2)
    return blocks


def load_rules() -> list[Rule]:
    rules = []
    for name, block in rule_blocks().items():
        used = re.search(r"^\s*sql\s*=\s*local\.rule_sql_one_line\.(\w+)\s*$", block, re.M)
        assert used, f"rule {name}: sql must come from rules/*.sql through local.rule_sql_one_line"
        # The one template variable (main.tf) rendered as Terraform would.
        sql = (TERRAFORM / "rules" / f"{used.group(1)}.sql").read_text()
        sql = sql.replace("${ttl_seconds}", "2592000")
        parsed = _SQL.match(sql)
        assert parsed, f"rule {name}: cannot read SELECT ... FROM '...' [WHERE ...] in {sql!r}"
        rules.append(Rule(name, block, parsed["select"], parsed["source"], parsed["where"] or ""))
    return rules


RULES = load_rules()
RULE_IDS = [rule.name for rule in RULES]


def test_every_rule_is_checked() -> None:
    assert set(RULE_IDS) == {"telemetry_to_dynamodb", "telemetry_to_s3", "emergency_to_lambda"}
    sql_files = {path.stem for path in (TERRAFORM / "rules").glob("*.sql")}
    main_tf = (TERRAFORM / "main.tf").read_text()
    for stem in sql_files:
        assert f"rules/{stem}.sql" in main_tf, f"rules/{stem}.sql is not read by Terraform"


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_from_filter_matches_what_the_sdk_publishes(rule: Rule) -> None:
    assert rule.topics, f"{rule.source!r} matches no topic the SDK publishes"
    assert not matches(rule.source, commands_topic(THING)), "a rule must not consume commands"
    if rule.model == "TelemetryBatch":
        # A kind the filter misses would be published and never stored.
        assert rule.topics == [telemetry_topic(THING, kind) for kind in TELEMETRY_KINDS]


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_fields_read_exist_at_the_top_level_of_the_payload(rule: Rule) -> None:
    properties = rule.schema["properties"]
    read = payload_fields(rule.select.replace("*", "")) | payload_fields(rule.where)
    missing = read - set(properties)
    assert not missing, f"{rule.name} reads {sorted(missing)}, not in {rule.model}"
    # A computed column must not silently overwrite a field of the payload.
    assert not aliases(rule.select) & set(properties)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_where_comparisons_hold_for_sdk_payloads(rule: Rule) -> None:
    properties = rule.schema["properties"]
    where = strip_literals(rule.where)
    for field, level in re.findall(r"\b(\w+)\s*=\s*topic\((\d+)\)", where):
        for topic in rule.topics:
            sdk_value = SDK_TOPICS[topic][1][field]
            assert topic.split("/")[int(level) - 1] == sdk_value, (rule.name, field, topic)
    # A comparison with a literal of another type is never true: the rule would never fire.
    for field, literal in re.findall(r"\b(\w+)\s*=\s*(true|false|'|\d)", rule.where, re.I):
        expected = {"'": {"string"}}.get(literal, {"number", "integer"})
        if literal.lower() in ("true", "false"):
            expected = {"boolean"}
        assert properties[field]["type"] in expected, (rule.name, field, literal)


def test_emergency_rule_reads_is_emergency_at_the_top_level() -> None:
    [rule] = [r for r in RULES if r.name == "emergency_to_lambda"]
    assert re.search(r"\bis_emergency\s*=\s*true\b", rule.where)
    assert rule.model == "EmergencyEvent"


def dynamodb_table_keys(resource: str) -> set[str]:
    storage = (TERRAFORM / "storage.tf").read_text()
    block = re.search(
        rf'resource "aws_dynamodb_table" "{resource}" \{{(.*?)^\}}', storage, re.M | re.S
    )
    assert block, resource
    keys = re.findall(r'^\s*(?:hash_key|range_key)\s*=\s*"(\w+)"', block.group(1), re.M)
    ttl = re.findall(
        r'^\s*attribute_name\s*=\s*"(\w+)"\s*$', block.group(1).split("ttl {")[-1], re.M
    )
    return set(keys) | (set(ttl) if "ttl {" in block.group(1) else set())


@pytest.mark.parametrize(
    "rule", [r for r in RULES if "dynamodbv2" in r.block], ids=lambda r: r.name
)
def test_dynamodb_items_carry_the_table_keys(rule: Rule) -> None:
    table = re.search(r"table_name\s*=\s*aws_dynamodb_table\.(\w+)\.name", rule.block)
    assert table, rule.name
    needed = dynamodb_table_keys(table.group(1))
    selected = payload_fields(rule.select) | aliases(rule.select)
    assert needed <= selected, f"{rule.name} does not select {sorted(needed - selected)}"
    # Key fields must always be present in the payload, or the put fails.
    required = set(rule.schema["required"])
    assert (needed - aliases(rule.select)) <= required


@pytest.mark.parametrize(
    "rule", [r for r in RULES if re.search(r"^\s*s3 \{", r.block, re.M)], ids=lambda r: r.name
)
def test_s3_keys_use_payload_fields_that_exist(rule: Rule) -> None:
    [key] = re.findall(r'^\s*key\s*=\s*"(.*)"\s*$', rule.block, re.M)
    templates = re.findall(r"\$\$\{(.*?)\}(?=[/.]|$)", key)
    assert templates, key
    properties = rule.schema["properties"]
    fields = set().union(*(payload_fields(t.replace('\\"', "'")) for t in templates))
    assert fields <= set(properties), f"{rule.name} key uses {sorted(fields - set(properties))}"
    # The object name is the message's identity, so a redelivery overwrites instead of adding.
    identity = "msg_id" if rule.model == "TelemetryBatch" else "event_id"
    assert f"$${{{identity}}}.json" in key
    assert "$${topic(3)}" in key  # by device


def test_parser_sees_fields_and_skips_functions_literals_and_aliases() -> None:
    # The checks above are only as good as this: show it on a known expression.
    expression = (
        "a, b AS c, floor(timestamp() / 1000) + 5 AS d, 'x y' AS e WHERE f = topic(3) AND g = true"
    )
    assert payload_fields(expression) == {"a", "b", "f", "g"}
    assert aliases(expression) == {"c", "d", "e"}
