"""Fleet provisioning templates of the emulator, and the pre-provisioning hook as a callable.

AWS describes a provisioning template in JSON (``Parameters``, ``Resources``,
``DeviceConfiguration``); the emulator takes the parts a device can observe, in Python:

- ``parameters``: name -> default (None: required), like ``Parameters`` with ``Default``;
- ``thing_name``: the ``AWS::IoT::Thing`` resource's ``ThingName`` as a format string over the
  parameters (``"anc-{SerialNumber}"`` is ``{"Fn::Join": ["", ["anc-", {"Ref":
  "SerialNumber"}]]}``);
- ``device_configuration``: ``DeviceConfiguration``, each value a format string too;
- ``certificate_status``: the ``AWS::IoT::Certificate`` resource's ``Status`` (ACTIVE/INACTIVE);
- the policy attached is always the device policy (``AWS::IoT::Policy`` ``PolicyName``);
- ``pre_provisioning_hook``: AWS's Lambda, here a callable given a :class:`HookRequest` that
  returns a :class:`HookResult` (or an awaitable of one).
"""

from __future__ import annotations

import re
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ancsync.emulator.certificates import CertificateStatus
from ancsync.errors import ConfigError

__all__ = [
    "DEFAULT_TEMPLATE_NAME",
    "HookRequest",
    "HookResult",
    "PreProvisioningHook",
    "ProvisioningTemplate",
    "default_template",
]

DEFAULT_TEMPLATE_NAME = "anc-fleet"
"""The template every emulator registers (thing ``anc-{SerialNumber}``)."""

_TEMPLATE_NAME = re.compile(r"[0-9A-Za-z_-]{1,36}")


@dataclass(frozen=True)
class HookRequest:
    """What AWS sends a pre-provisioning hook (its ``claimCertificateId``, ``certificateId``,
    ``certificatePem``, ``templateArn``, ``clientId`` and ``parameters``)."""

    claim_certificate_id: str | None
    certificate_id: str
    certificate_pem: str
    template_arn: str
    client_id: str
    parameters: Mapping[str, str]


@dataclass(frozen=True)
class HookResult:
    """A hook's answer: ``allow`` (AWS's ``allowProvisioning``), ``reason`` (returned to the
    device in the rejection's errorMessage; AWS logs it only) and ``parameter_overrides``
    (merged into the request's parameters before the template runs)."""

    allow: bool
    reason: str = ""
    parameter_overrides: Mapping[str, str] = field(default_factory=dict)


PreProvisioningHook = Callable[[HookRequest], HookResult | Awaitable[HookResult]]
"""A pre-provisioning hook: called once per RegisterThing, before the template runs."""


def _fields(text: str) -> set[str]:
    return {name for _literal, name, _spec, _conv in string.Formatter().parse(text) if name}


@dataclass(frozen=True)
class ProvisioningTemplate:
    """A fleet provisioning template (see the module docstring for the AWS equivalent)."""

    name: str
    thing_name: str
    parameters: Mapping[str, str | None] = field(default_factory=dict)
    device_configuration: Mapping[str, str] = field(default_factory=dict)
    certificate_status: CertificateStatus = CertificateStatus.ACTIVE
    pre_provisioning_hook: PreProvisioningHook | None = None

    def __post_init__(self) -> None:
        if not _TEMPLATE_NAME.fullmatch(self.name):
            raise ConfigError(
                f"template name {self.name!r} is not 1-36 of letters, digits, '_' and '-'"
            )
        if self.certificate_status not in (CertificateStatus.ACTIVE, CertificateStatus.INACTIVE):
            raise ConfigError("a template activates its certificate ACTIVE or INACTIVE only")
        for where, text in (("thing_name", self.thing_name), *self.device_configuration.items()):
            unknown = _fields(text) - set(self.parameters)
            if unknown:
                raise ConfigError(
                    f"template {self.name!r}: {where} uses {sorted(unknown)}, which are not "
                    f"parameters ({sorted(self.parameters)}); declare them in parameters"
                )

    def resolve(self, given: Mapping[str, str]) -> dict[str, str]:
        """The parameters with the defaults applied; :class:`KeyError` names a missing one."""
        values = {name: default for name, default in self.parameters.items() if default is not None}
        values.update(given)
        for name in self.parameters:
            if name not in values:
                raise KeyError(name)
        return values

    def render_thing_name(self, values: Mapping[str, str]) -> str:
        """The thing name for resolved parameter ``values``."""
        return self.thing_name.format_map(values)

    def render_device_configuration(self, values: Mapping[str, str]) -> dict[str, str]:
        """The ``deviceConfiguration`` for resolved parameter ``values``."""
        return {key: text.format_map(values) for key, text in self.device_configuration.items()}


def default_template() -> ProvisioningTemplate:
    """``anc-fleet``: ``SerialNumber`` (required) and ``Model`` (default ``anc-1``) -> thing
    ``anc-{SerialNumber}``, certificate ACTIVE, device configuration ``{"Model": ...}``."""
    return ProvisioningTemplate(
        DEFAULT_TEMPLATE_NAME,
        thing_name="anc-{SerialNumber}",
        parameters={"SerialNumber": None, "Model": "anc-1"},
        device_configuration={"Model": "{Model}"},
    )
