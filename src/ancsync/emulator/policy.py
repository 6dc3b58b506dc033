"""Device authorisation for the emulator: the AWS IoT device policy, evaluated locally.

The permissions live in one data file, ``device_policy.json.tpl``: an AWS IoT policy document
written as a Terraform template (``${region}``, ``${account_id}``; policy variables escaped as
``$${iot:Connection.Thing.ThingName}``). Terraform renders it with ``templatefile`` for the real
account; :func:`render_policy_template` renders it the same way here, and :class:`DevicePolicy`
evaluates it for each connection with AWS semantics:

- a request is allowed when an ``Allow`` statement matches its action and resource, and no
  ``Deny`` statement does (default deny);
- ``Action`` and ``Resource`` accept ``*`` (any characters, ``/`` included) and ``?`` (one);
- ``${iot:Connection.Thing.ThingName}`` (the certificate CN) and ``${iot:ClientId}`` are
  substituted per connection. Because the Connect resource is ``client/${...ThingName}``, a
  device must use its thing name as client id.

The ``operator`` certificate is the cloud side: it may use every topic, with any client id that
is not a thing name. ``iot:Receive`` is checked when a filter is subscribed (the filter is
matched as a topic), not per delivered message. On the plain loopback listener there is no
certificate: a client whose id is a known thing acts as that device, any other as the operator.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from ancsync.emulator.auth import ClientIdentity, Denial
from ancsync.emulator.certs import OPERATOR_NAME
from ancsync.errors import ConfigError, InvalidTopic
from ancsync.topics import validate_thing_name

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_REGION",
    "DevicePolicy",
    "PolicyStatement",
    "load_claim_policy",
    "load_device_policy",
    "render_policy_template",
]

log = logging.getLogger("ancsync.emulator.policy")

DEFAULT_REGION = "local-1"
DEFAULT_ACCOUNT_ID = "000000000000"
TEMPLATE_NAME = "device_policy.json.tpl"
CLAIM_TEMPLATE_NAME = "claim_policy.json.tpl"

# Terraform template tokens: `$${` is a literal `${`; `${name}` interpolates a variable.
_TEMPLATE_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_POLICY_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def render_policy_template(text: str, variables: dict[str, str]) -> str:
    """Render a policy template like Terraform's ``templatefile`` (plain variables only)."""

    def substitute(token: re.Match[str]) -> str:
        if token.group(0) == "$${":
            return "${"
        name = token.group(1).strip()
        if name not in variables:
            raise ConfigError(
                f"the policy template uses ${{{name}}}, which is not one of {sorted(variables)}; "
                "escape AWS policy variables as $${...}"
            )
        return variables[name]

    return _TEMPLATE_TOKEN.sub(substitute, text)


@dataclass(frozen=True)
class PolicyStatement:
    """One statement of a policy document, with ``Action``/``Resource`` always as tuples.

    ``sid`` is the statement's ``Sid`` (optional in AWS too); refusals name it.
    """

    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    sid: str | None = None


def _as_tuple(value: Any, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"policy statement {what} must be a string or a list of strings")
    return tuple(items)


def _parse_policy(document: Any) -> tuple[PolicyStatement, ...]:
    statements = document.get("Statement") if isinstance(document, dict) else None
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        raise ConfigError("the device policy has no Statement list")
    parsed = []
    for statement in statements:
        effect = statement.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise ConfigError(f"policy statement Effect {effect!r} is not Allow or Deny")
        actions = _as_tuple(statement.get("Action"), "Action")
        sid = statement.get("Sid")
        if sid is not None and not isinstance(sid, str):
            raise ConfigError(f"policy statement Sid {sid!r} is not a string")
        resources = _as_tuple(statement.get("Resource"), "Resource")
        parsed.append(PolicyStatement(effect, actions, resources, sid))
    return tuple(parsed)


def _load_policy(name: str, variables: dict[str, str]) -> tuple[PolicyStatement, ...]:
    text = resources.files("ancsync.emulator").joinpath(name).read_text("utf-8")
    return _parse_policy(orjson.loads(render_policy_template(text, variables)))


def load_device_policy(
    region: str = DEFAULT_REGION, account_id: str = DEFAULT_ACCOUNT_ID
) -> tuple[PolicyStatement, ...]:
    """Render and parse the packaged ``device_policy.json.tpl``."""
    return _load_policy(TEMPLATE_NAME, {"region": region, "account_id": account_id})


def load_claim_policy(
    region: str = DEFAULT_REGION, account_id: str = DEFAULT_ACCOUNT_ID, template: str = "*"
) -> tuple[PolicyStatement, ...]:
    """Render and parse the packaged ``claim_policy.json.tpl``: the fleet provisioning topics
    only (CreateKeysAndCertificate, CreateCertificateFromCsr, RegisterThing of ``template``;
    ``*``: every template)."""
    variables = {"region": region, "account_id": account_id, "template": template}
    return _load_policy(CLAIM_TEMPLATE_NAME, variables)


def _wildcard(pattern: str) -> re.Pattern[str]:
    """An IAM-style wildcard as a regex: ``*`` any characters, ``?`` exactly one."""
    parts = (".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True)
class _CompiledStatement:
    allow: bool
    actions: tuple[str, ...]
    resources: tuple[re.Pattern[str], ...]
    name: str  # the Sid, or "#<index>" in the document

    def covers(self, action: str, resource: str) -> bool:
        return any(fnmatch.fnmatchcase(action, wanted) for wanted in self.actions) and any(
            pattern.fullmatch(resource) for pattern in self.resources
        )


class DevicePolicy:
    """The emulator's :class:`~ancsync.emulator.auth.Authorizer`: the device policy per thing.

    ``things`` are the registered thing names: the operator may not take one as its client id,
    and on the plain listener they tell devices from the operator. ``statements`` defaults to
    the packaged device policy rendered for ``region``/``account_id``.
    """

    def __init__(
        self,
        things: Iterable[str] = (),
        *,
        statements: Iterable[PolicyStatement] | None = None,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT_ID,
    ) -> None:
        self.things = frozenset(things)
        self.region = region
        self.account_id = account_id
        self.statements = tuple(
            statements if statements is not None else load_device_policy(region, account_id)
        )
        self._compiled: dict[tuple[str, str], tuple[_CompiledStatement, ...]] = {}

    def add_thing(self, thing_name: str) -> None:
        """Register one more thing (fleet provisioning creates things at run time)."""
        self.things = self.things | {validate_thing_name(thing_name)}

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:{kind}/{name}"

    def _thing_of(self, identity: ClientIdentity) -> str | None:
        """The thing a client acts as, or None for the operator."""
        if identity.common_name is None:  # plain loopback listener: no certificate
            return identity.client_id if identity.client_id in self.things else None
        return None if identity.common_name == OPERATOR_NAME else identity.common_name

    def _statements_for(self, thing: str, client_id: str) -> tuple[_CompiledStatement, ...]:
        """The statements with this connection's policy variables substituted (cached)."""
        key = (thing, client_id)
        if key not in self._compiled:
            values = {"iot:Connection.Thing.ThingName": thing, "iot:ClientId": client_id}
            compiled = []
            for index, statement in enumerate(self.statements):
                patterns = []
                for resource in statement.resources:
                    names = _POLICY_VARIABLE.findall(resource)
                    if all(name in values for name in names):  # unresolved: never matches
                        concrete = _POLICY_VARIABLE.sub(lambda m: values[m.group(1)], resource)
                        patterns.append(_wildcard(concrete))
                allow = statement.effect == "Allow"
                name = statement.sid or f"#{index}"
                compiled.append(_CompiledStatement(allow, statement.actions, tuple(patterns), name))
            self._compiled[key] = tuple(compiled)
        return self._compiled[key]

    def allows(self, identity: ClientIdentity, action: str, kind: str, name: str) -> bool:
        """Whether ``identity`` may do ``action`` on the resource ``kind/name`` (e.g. topic/a/b)."""
        return self.denial(identity, action, kind, name) is None

    def denial(self, identity: ClientIdentity, action: str, kind: str, name: str) -> Denial | None:
        """None if ``identity`` may do ``action`` on ``kind/name``; else the statement that
        denies it (an explicit ``Deny``), or ``statement=None`` when no ``Allow`` covers it."""
        thing = self._thing_of(identity)
        if thing is None:
            return None  # the operator is the cloud side: every topic
        resource = self._arn(kind, name)
        matching = [
            s for s in self._statements_for(thing, identity.client_id) if s.covers(action, resource)
        ]
        denying = next((s for s in matching if not s.allow), None)
        if denying is not None:
            return Denial(action, resource, denying.name)
        return None if matching else Denial(action, resource, None)

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        """None to accept; else why the certificate and client id may not connect."""
        if identity.common_name == OPERATOR_NAME:
            if identity.client_id in self.things:
                return (
                    f"the operator certificate may not use the thing name "
                    f"{identity.client_id!r} as client id; choose another client id"
                )
            return None
        if identity.common_name is not None:
            try:
                validate_thing_name(identity.common_name)
            except InvalidTopic:
                return f"certificate CN {identity.common_name!r} is not a thing name"
        if not self.allows(identity, "iot:Connect", "client", identity.client_id):
            thing = self._thing_of(identity)
            return (
                f"client id {identity.client_id!r} is not allowed for thing {thing!r}: "
                "a device must connect with its thing name as client id"
            )
        return None

    def authorize_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> bool:
        """``iot:Publish`` on ``topic/<topic>``, and ``iot:RetainPublish`` if ``retain``."""
        return self.allows(identity, "iot:Publish", "topic", topic) and (
            not retain or self.allows(identity, "iot:RetainPublish", "topic", topic)
        )

    def authorize_retain_publish(self, identity: ClientIdentity, topic: str) -> bool:
        """``authorize_publish(identity, topic, retain=True)``."""
        return self.authorize_publish(identity, topic, retain=True)

    def explain_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> Denial | None:
        """None if :meth:`authorize_publish` allows it, else the action and statement denying."""
        denial = self.denial(identity, "iot:Publish", "topic", topic)
        if denial is None and retain:
            denial = self.denial(identity, "iot:RetainPublish", "topic", topic)
        return denial

    def explain_subscribe(self, identity: ClientIdentity, topic_filter: str) -> Denial | None:
        """None if :meth:`authorize_subscribe` allows it, else the action and statement denying."""
        return self.denial(identity, "iot:Subscribe", "topicfilter", topic_filter) or self.denial(
            identity, "iot:Receive", "topic", topic_filter
        )

    def authorize_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        """``iot:Subscribe`` on ``topicfilter/<filter>``, and ``iot:Receive`` on it as a topic.

        AWS checks Receive per delivered message; checking it once for the filter is stricter
        for wildcard filters and means a device never receives what it may not.
        """
        return self.allows(identity, "iot:Subscribe", "topicfilter", topic_filter) and self.allows(
            identity, "iot:Receive", "topic", topic_filter
        )
