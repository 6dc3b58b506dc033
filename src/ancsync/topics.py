"""MQTT topics: the ancsync topic templates, AWS IoT topic limits and filter matching.

Every topic the SDK publishes to goes through :func:`validate_topic`, every filter it subscribes
to through :func:`validate_filter`, so a bad thing name or an over-long topic is refused with a
clear :class:`~ancsync.errors.InvalidTopic` before anything reaches the broker (AWS IoT may drop
the whole connection instead of answering).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast, get_args

from ancsync.errors import InvalidTopic

__all__ = [
    "CREATE_CERTIFICATE_FROM_CSR_TOPIC",
    "CREATE_KEYS_AND_CERTIFICATE_TOPIC",
    "MAX_FILTERS_PER_SUBSCRIBE",
    "MAX_SUBSCRIPTIONS",
    "MAX_TOPIC_BYTES",
    "MAX_TOPIC_SLASHES",
    "OPERATOR_CERTIFICATES_PREFIX",
    "OPERATOR_JOBS_PREFIX",
    "TELEMETRY_KINDS",
    "JobsTopics",
    "ProvisioningOperation",
    "ShadowOperation",
    "ShadowSuffix",
    "ShadowTopic",
    "ShadowTopics",
    "TelemetryKind",
    "commands_topic",
    "emergency_topic",
    "is_jobs_request_topic",
    "is_provisioning_request_topic",
    "is_shadow_request_topic",
    "matches",
    "parse_provisioning_topic",
    "parse_shadow_topic",
    "register_thing_topic",
    "split_jobs_topic",
    "status_topic",
    "telemetry_topic",
    "validate_filter",
    "validate_shadow_name",
    "validate_thing_name",
    "validate_topic",
]

# AWS IoT Core message-broker limits (shared/reference/aws-iot-core.md).
MAX_TOPIC_BYTES = 256
MAX_TOPIC_SLASHES = 7
MAX_SUBSCRIPTIONS = 50
MAX_FILTERS_PER_SUBSCRIBE = 8

TelemetryKind = Literal["anc", "audio", "system", "errors"]
"""A telemetry record's kind: its topic is ``anc/telemetry/{thing}/{kind}``."""
TELEMETRY_KINDS: tuple[TelemetryKind, ...] = get_args(TelemetryKind)
"""Every :data:`TelemetryKind`, in the order status and batches list them."""

ShadowOperation = Literal["get", "update", "delete"]
ShadowSuffix = Literal["accepted", "rejected", "delta", "documents"]

_NAME_CHARS = r"[a-zA-Z0-9:_-]"
_THING_NAME = re.compile(rf"{_NAME_CHARS}{{1,128}}")
_SHADOW_NAME = re.compile(rf"{_NAME_CHARS}{{1,64}}")
_ALLOWED_CHARS = "letters, digits, ':', '_' and '-'"

# One pattern for every shadow topic, request or response. `delta` and `documents` exist only
# under `update`, so they get their own alternative.
_SHADOW_TOPIC = re.compile(
    rf"\$aws/things/(?P<thing>{_NAME_CHARS}{{1,128}})/shadow"
    rf"(?:/name/(?P<shadow>{_NAME_CHARS}{{1,64}}))?"
    r"/(?:(?P<op>get|update|delete)(?:/(?P<suffix>accepted|rejected))?"
    r"|(?P<update_op>update)/(?P<update_suffix>delta|documents))"
)


def _show(value: str, width: int = 80) -> str:
    """Quote a value for an error message, shortened so a 10 KB topic does not flood the log."""
    if len(value) > width:
        return repr(value[:width] + "...")
    return repr(value)


def validate_thing_name(name: str) -> str:
    """Return ``name`` if it is a valid AWS IoT thing name, else raise :class:`InvalidTopic`.

    A thing name is 1 to 128 characters of letters, digits, ``:``, ``_`` and ``-``. It becomes a
    topic level, so ``/``, ``+``, ``#`` and ``$`` are refused.
    """
    if not _THING_NAME.fullmatch(name):
        raise InvalidTopic(
            f"thing name {_show(name)} is not allowed: use 1 to 128 characters of {_ALLOWED_CHARS}"
        )
    return name


def validate_shadow_name(name: str) -> str:
    """Return ``name`` if it is a valid named-shadow name, else raise :class:`InvalidTopic`.

    A shadow name is 1 to 64 characters of letters, digits, ``:``, ``_`` and ``-``.
    """
    if not _SHADOW_NAME.fullmatch(name):
        raise InvalidTopic(
            f"shadow name {_show(name)} is not allowed: use 1 to 64 characters of {_ALLOWED_CHARS}"
        )
    return name


def _check_common(value: str, what: str) -> None:
    """The rules topics and filters share: non-empty, no NUL, UTF-8, AWS length and depth."""
    if not value:
        raise InvalidTopic(f"{what} is empty: give at least one character")
    if "\x00" in value:
        raise InvalidTopic(f"{what} {_show(value)} contains a NUL character, which MQTT forbids")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidTopic(
            f"{what} {_show(value)} is not valid UTF-8 ({exc.reason} at index {exc.start})"
        ) from None
    if size > MAX_TOPIC_BYTES:
        raise InvalidTopic(
            f"{what} {_show(value)} is {size} bytes (UTF-8), over the AWS IoT limit of "
            f"{MAX_TOPIC_BYTES} bytes; use shorter names"
        )
    slashes = value.count("/")
    if slashes > MAX_TOPIC_SLASHES:
        raise InvalidTopic(
            f"{what} {_show(value)} has {slashes} slashes, over the AWS IoT limit of "
            f"{MAX_TOPIC_SLASHES} (at most {MAX_TOPIC_SLASHES + 1} levels); use fewer levels"
        )


def validate_topic(topic: str) -> str:
    """Return ``topic`` if a device may PUBLISH to it, else raise :class:`InvalidTopic`.

    Checks: non-empty, no ``+``/``#`` wildcards, no NUL, at most 256 UTF-8 bytes and 7 slashes.
    Topics starting with ``$`` are reserved by AWS IoT (publishing there can end the connection),
    so the only ones allowed are the Device Shadow request topics (``.../get``, ``/update``,
    ``/delete``), the Jobs request topics (see :func:`is_jobs_request_topic`) and the fleet
    provisioning requests (see :func:`is_provisioning_request_topic`).
    """
    _check_common(topic, "topic")
    for wildcard in ("+", "#"):
        if wildcard in topic:
            raise InvalidTopic(
                f"topic {_show(topic)} contains the wildcard {wildcard!r}: wildcards are only "
                "allowed in subscription filters; publish to a concrete topic"
            )
    if (
        topic.startswith("$")
        and not is_shadow_request_topic(topic)
        and not is_jobs_request_topic(topic)
        and not is_provisioning_request_topic(topic)
    ):
        raise InvalidTopic(
            f"topic {_show(topic)} starts with '$', which AWS IoT reserves; the only '$' topics "
            "a device may publish to are the shadow requests "
            "$aws/things/{thing}/shadow[/name/{shadow}]/get|update|delete, the jobs requests "
            "$aws/things/{thing}/jobs/get|start-next|{jobId}/get|{jobId}/update and the fleet "
            "provisioning requests $aws/certificates/create[-from-csr]/json and "
            "$aws/provisioning-templates/{template}/provision/json"
        )
    return topic


def validate_filter(topic_filter: str) -> str:
    """Return ``topic_filter`` if it is a valid SUBSCRIBE filter, else raise :class:`InvalidTopic`.

    MQTT rules: ``+`` must fill a whole level; ``#`` must fill the last level. The AWS limits of
    :func:`validate_topic` apply too. ``$aws/...`` filters are allowed (shadow responses).
    """
    _check_common(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise InvalidTopic(
                f"topic filter {_show(topic_filter)} uses '#' inside a level or before the end: "
                "'#' must be the whole last level, as in 'a/b/#'"
            )
        if "+" in level and level != "+":
            raise InvalidTopic(
                f"topic filter {_show(topic_filter)} uses '+' inside the level {level!r}: "
                "'+' must be a whole level, as in 'a/+/c'"
            )
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the subscription filter ``topic_filter`` (MQTT 3.1.1 rules).

    ``+`` matches exactly one level, ``#`` the rest of the topic including nothing (``a/#``
    matches ``a``). A wildcard in the first level never matches a topic starting with ``$``.
    Both arguments are assumed valid (see :func:`validate_filter`); matching does not re-check.
    """
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, wanted in enumerate(filter_levels):
        if wanted == "#":
            return True
        if index >= len(topic_levels):
            return False
        if wanted != "+" and wanted != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def _device_topic(thing_name: str, leaf: str) -> str:
    return f"anc/devices/{validate_thing_name(thing_name)}/{leaf}"


def status_topic(thing_name: str) -> str:
    """``anc/devices/{thing}/status``: retained online/offline status (also the last will)."""
    return _device_topic(thing_name, "status")


def commands_topic(thing_name: str) -> str:
    """``anc/devices/{thing}/commands``: commands from the cloud to the device."""
    return _device_topic(thing_name, "commands")


def emergency_topic(thing_name: str) -> str:
    """``anc/devices/{thing}/emergency``: emergency events, always QoS 1."""
    return _device_topic(thing_name, "emergency")


def telemetry_topic(thing_name: str, kind: TelemetryKind) -> str:
    """``anc/telemetry/{thing}/{kind}`` for ``kind`` in :data:`TELEMETRY_KINDS`."""
    if kind not in TELEMETRY_KINDS:
        raise InvalidTopic(
            f"telemetry kind {_show(str(kind))} is not allowed: use one of "
            + ", ".join(TELEMETRY_KINDS)
        )
    return f"anc/telemetry/{validate_thing_name(thing_name)}/{kind}"


@dataclass(frozen=True)
class ShadowTopics:
    """The Device Shadow topics of one thing's classic shadow, or of a named shadow.

    >>> ShadowTopics("anc-device-001").update_delta
    '$aws/things/anc-device-001/shadow/update/delta'
    """

    thing_name: str
    shadow_name: str | None = None

    def __post_init__(self) -> None:
        validate_thing_name(self.thing_name)
        if self.shadow_name is not None:
            validate_shadow_name(self.shadow_name)

    @property
    def prefix(self) -> str:
        """``$aws/things/{thing}/shadow`` or ``$aws/things/{thing}/shadow/name/{shadow}``."""
        base = f"$aws/things/{self.thing_name}/shadow"
        return base if self.shadow_name is None else f"{base}/name/{self.shadow_name}"

    @property
    def get(self) -> str:
        """Request topic: publish here to read the shadow."""
        return f"{self.prefix}/get"

    @property
    def get_accepted(self) -> str:
        return f"{self.prefix}/get/accepted"

    @property
    def get_rejected(self) -> str:
        return f"{self.prefix}/get/rejected"

    @property
    def update(self) -> str:
        """Request topic: publish an update document here."""
        return f"{self.prefix}/update"

    @property
    def update_accepted(self) -> str:
        return f"{self.prefix}/update/accepted"

    @property
    def update_rejected(self) -> str:
        return f"{self.prefix}/update/rejected"

    @property
    def update_delta(self) -> str:
        return f"{self.prefix}/update/delta"

    @property
    def update_documents(self) -> str:
        return f"{self.prefix}/update/documents"

    @property
    def delete(self) -> str:
        """Request topic: publish here to delete the shadow."""
        return f"{self.prefix}/delete"

    @property
    def delete_accepted(self) -> str:
        return f"{self.prefix}/delete/accepted"

    @property
    def delete_rejected(self) -> str:
        return f"{self.prefix}/delete/rejected"

    @property
    def all_responses(self) -> str:
        """One filter for every response topic of this shadow: ``{prefix}/+/+``.

        Two levels after the prefix match exactly the responses (``get/accepted``,
        ``update/delta``...) and not the request topics, so a device never receives its own
        requests back; for the classic shadow it also excludes named shadows (``name/x/...`` has
        more levels). One subscription instead of eight matters under the 50-subscription limit.
        """
        return f"{self.prefix}/+/+"


@dataclass(frozen=True)
class ShadowTopic:
    """A shadow topic taken apart by :func:`parse_shadow_topic`."""

    thing_name: str
    shadow_name: str | None
    operation: ShadowOperation
    suffix: ShadowSuffix | None


def parse_shadow_topic(topic: str) -> ShadowTopic | None:
    """Take a Device Shadow request or response topic apart; ``None`` for any other topic.

    >>> parse_shadow_topic("$aws/things/t1/shadow/name/cfg/update/delta")
    ShadowTopic(thing_name='t1', shadow_name='cfg', operation='update', suffix='delta')
    """
    found = _SHADOW_TOPIC.fullmatch(topic)
    if found is None:
        return None
    # The regex admits only the literal values of these types, so the casts cannot lie.
    operation = cast(ShadowOperation, found["op"] or found["update_op"])
    suffix = cast("ShadowSuffix | None", found["suffix"] or found["update_suffix"])
    return ShadowTopic(found["thing"], found["shadow"], operation, suffix)


def is_shadow_request_topic(topic: str) -> bool:
    """Whether ``topic`` is a shadow request topic a device may publish to.

    Exactly ``$aws/things/{thing}/shadow[/name/{shadow}]/(get|update|delete)`` with valid names.
    """
    parsed = parse_shadow_topic(topic)
    return parsed is not None and parsed.suffix is None


#: The emulator's operator Jobs API: requests on ``{prefix}/create|list|describe|cancel``.
OPERATOR_JOBS_PREFIX = "ancsync/emulator/jobs"
#: The emulator's operator certificates API: requests on ``{prefix}/list|describe|update``.
OPERATOR_CERTIFICATES_PREFIX = "ancsync/emulator/certificates"

# Every publish under a thing's jobs namespace: the service answers even the ones that map to
# no API (with InvalidTopic), so the matcher takes the whole namespace.
_JOBS_NAMESPACE = re.compile(rf"\$aws/things/(?P<thing>{_NAME_CHARS}{{1,128}})/jobs/(?P<rest>.+)")
_JOBS_REQUEST = re.compile(r"get|start-next|[a-zA-Z0-9_$-]{1,64}/(?:get|update)")


@dataclass(frozen=True)
class JobsTopics:
    """The AWS IoT Jobs MQTT topics of one thing (``$aws/things/{thing}/jobs/...``)."""

    thing_name: str

    def __post_init__(self) -> None:
        validate_thing_name(self.thing_name)

    @property
    def prefix(self) -> str:
        """``$aws/things/{thing}/jobs``."""
        return f"$aws/things/{self.thing_name}/jobs"

    @property
    def notify(self) -> str:
        """The ListNotification topic."""
        return f"{self.prefix}/notify"

    @property
    def notify_next(self) -> str:
        """The NextNotification topic."""
        return f"{self.prefix}/notify-next"

    @property
    def get(self) -> str:
        """GetPendingJobExecutions."""
        return f"{self.prefix}/get"

    @property
    def start_next(self) -> str:
        """StartNextPendingJobExecution."""
        return f"{self.prefix}/start-next"

    def describe(self, job_id: str) -> str:
        """DescribeJobExecution of ``job_id`` (or ``$next``)."""
        return f"{self.prefix}/{job_id}/get"

    def update(self, job_id: str) -> str:
        """UpdateJobExecution of ``job_id``."""
        return f"{self.prefix}/{job_id}/update"

    @property
    def reply_filters(self) -> tuple[str, ...]:
        """The filters of every accepted/rejected reply, each one the device policy allows."""
        return (
            f"{self.prefix}/get/+",
            f"{self.prefix}/start-next/+",
            f"{self.prefix}/+/get/+",
            f"{self.prefix}/+/update/+",
        )


def split_jobs_topic(topic: str) -> tuple[str, str] | None:
    """``(thing, rest)`` for a topic under ``$aws/things/{thing}/jobs/``; ``None`` otherwise."""
    found = _JOBS_NAMESPACE.fullmatch(topic)
    return None if found is None else (found["thing"], found["rest"])


def is_jobs_request_topic(topic: str) -> bool:
    """Whether ``topic`` is a Jobs request a device may publish to.

    ``$aws/things/{thing}/jobs/`` then ``get``, ``start-next``, ``{jobId}/get`` or
    ``{jobId}/update``.
    """
    split = split_jobs_topic(topic)
    return split is not None and _JOBS_REQUEST.fullmatch(split[1]) is not None


# -- fleet provisioning ----------------------------------------------------------------------

CREATE_KEYS_AND_CERTIFICATE_TOPIC = "$aws/certificates/create/json"
"""CreateKeysAndCertificate's request topic (JSON); replies on ``/accepted`` and ``/rejected``."""
CREATE_CERTIFICATE_FROM_CSR_TOPIC = "$aws/certificates/create-from-csr/json"
"""CreateCertificateFromCsr's request topic (JSON); replies on ``/accepted`` and ``/rejected``."""

ProvisioningOperation = Literal[
    "CreateKeysAndCertificate", "CreateCertificateFromCsr", "RegisterThing"
]
_REGISTER_THING_TOPIC = re.compile(
    r"\$aws/provisioning-templates/(?P<template>[0-9A-Za-z_-]{1,36})/provision/json"
)


def register_thing_topic(template_name: str) -> str:
    """RegisterThing's request topic (JSON) for ``template_name``."""
    return f"$aws/provisioning-templates/{template_name}/provision/json"


def is_provisioning_request_topic(topic: str) -> bool:
    """Whether ``topic`` is a fleet provisioning request a device may publish to.

    ``$aws/certificates/create/json``, ``$aws/certificates/create-from-csr/json`` and
    ``$aws/provisioning-templates/{template}/provision/json`` (JSON only: ancsync does not speak
    the CBOR variants).
    """
    return parse_provisioning_topic(topic) is not None


def parse_provisioning_topic(topic: str) -> tuple[ProvisioningOperation, str | None] | None:
    """``(operation, template name or None)`` for a fleet provisioning request topic (JSON),
    else None (also for the ``/accepted`` and ``/rejected`` reply topics)."""
    if topic == CREATE_KEYS_AND_CERTIFICATE_TOPIC:
        return "CreateKeysAndCertificate", None
    if topic == CREATE_CERTIFICATE_FROM_CSR_TOPIC:
        return "CreateCertificateFromCsr", None
    found = _REGISTER_THING_TOPIC.fullmatch(topic)
    return None if found is None else ("RegisterThing", found["template"])
