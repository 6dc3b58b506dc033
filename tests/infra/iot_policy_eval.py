"""Render the device policy template as Terraform does, and evaluate AWS IoT policy semantics.

A deliberately small evaluator for the tests in this directory: Allow/Deny statements, action
wildcards, resource wildcards (``*`` any characters including ``/``, ``?`` one character) and
the ``${iot:Connection.Thing.ThingName}`` / ``${iot:ClientId}`` policy variables. An explicit
Deny wins; no matching Allow means denied, as in AWS.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "src" / "ancsync" / "emulator" / "device_policy.json.tpl"

# Terraform template syntax: `$${` is a literal `${`, `${name}` interpolates, `%{` is a
# directive (`%%{` literal). The device policy only needs plain variables.
_TEMPLATE_TOKEN = re.compile(r"\$\$\{|%%\{|\$\{([^}]*)\}|%\{")
_POLICY_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def render_template(text: str, variables: dict[str, str]) -> str:
    """Substitute like Terraform's ``templatefile``; an unknown variable is an error, as there."""

    def substitute(found: re.Match[str]) -> str:
        token = found.group(0)
        if token == "$${":
            return "${"
        if token == "%%{":
            return "%{"
        if token == "%{":
            raise ValueError("template directives (%{...}) are not expected in the device policy")
        name = found.group(1).strip()
        if name not in variables:
            raise KeyError(f"template uses ${{{name}}} but only {sorted(variables)} are given")
        return variables[name]

    return _TEMPLATE_TOKEN.sub(substitute, text)


def _wildcard_regex(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(_wildcard_regex(pattern), re.DOTALL)


@dataclass(frozen=True)
class Connection:
    thing_name: str
    client_id: str


class DevicePolicy:
    """A rendered IoT policy document, evaluated for one connection."""

    def __init__(self, document: dict[str, Any], region: str, account_id: str) -> None:
        self.document = document
        self.arn_prefix = f"arn:aws:iot:{region}:{account_id}"

    @classmethod
    def from_template(
        cls, region: str = "eu-west-1", account_id: str = "123456789012"
    ) -> DevicePolicy:
        text = render_template(TEMPLATE.read_text(), {"region": region, "account_id": account_id})
        return cls(json.loads(text), region, account_id)

    def _resource_regex(self, pattern: str, connection: Connection) -> re.Pattern[str] | None:
        """The resource pattern as a regex, policy variables substituted as literal text."""
        values = {
            "iot:Connection.Thing.ThingName": connection.thing_name,
            "iot:ClientId": connection.client_id,
        }
        parts: list[str] = []
        position = 0
        for found in _POLICY_VARIABLE.finditer(pattern):
            if found.group(1) not in values:
                return None  # AWS: a statement whose variable cannot be resolved does not match
            parts.append(_wildcard_regex(pattern[position : found.start()]))
            parts.append(re.escape(values[found.group(1)]))
            position = found.end()
        parts.append(_wildcard_regex(pattern[position:]))
        return re.compile("".join(parts), re.DOTALL)

    def _statement_matches(
        self, statement: dict[str, Any], action: str, arn: str, connection: Connection
    ) -> bool:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        if not any(_wildcard(a).fullmatch(action) for a in actions):
            return False
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        for pattern in resources:
            regex = self._resource_regex(pattern, connection)
            if regex is not None and regex.fullmatch(arn):
                return True
        return False

    def allows(self, action: str, resource: str, connection: Connection) -> bool:
        """Whether ``action`` on ``resource`` (e.g. ``topic/a/b``) is allowed for ``connection``."""
        arn = f"{self.arn_prefix}:{resource}"
        matching = [
            s
            for s in self.document["Statement"]
            if self._statement_matches(s, action, arn, connection)
        ]
        if any(s["Effect"] == "Deny" for s in matching):
            return False
        return any(s["Effect"] == "Allow" for s in matching)

    # The four checks a broker makes, in its own words.
    def can_connect(self, client_id: str, thing_name: str) -> bool:
        return self.allows("iot:Connect", f"client/{client_id}", Connection(thing_name, client_id))

    def can_publish(self, thing_name: str, topic: str, *, retain: bool = False) -> bool:
        conn = Connection(thing_name, thing_name)
        allowed = self.allows("iot:Publish", f"topic/{topic}", conn)
        if retain:
            allowed = allowed and self.allows("iot:RetainPublish", f"topic/{topic}", conn)
        return allowed

    def can_subscribe(self, thing_name: str, topic_filter: str) -> bool:
        conn = Connection(thing_name, thing_name)
        return self.allows("iot:Subscribe", f"topicfilter/{topic_filter}", conn)

    def can_receive(self, thing_name: str, topic: str) -> bool:
        return self.allows("iot:Receive", f"topic/{topic}", Connection(thing_name, thing_name))
