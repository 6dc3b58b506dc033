"""Fleet provisioning templates: validation, parameters and rendering; the provisioning topics."""

from __future__ import annotations

import pytest

from ancsync.emulator.certificates import CertificateStatus
from ancsync.emulator.provisioning_templates import ProvisioningTemplate, default_template
from ancsync.errors import ConfigError
from ancsync.topics import (
    CREATE_CERTIFICATE_FROM_CSR_TOPIC,
    CREATE_KEYS_AND_CERTIFICATE_TOPIC,
    parse_provisioning_topic,
    register_thing_topic,
)


def test_the_default_template_names_the_thing_after_the_serial_number() -> None:
    template = default_template()
    values = template.resolve({"SerialNumber": "SN1"})
    assert values == {"SerialNumber": "SN1", "Model": "anc-1"}
    assert template.render_thing_name(values) == "anc-SN1"
    assert template.render_device_configuration(values) == {"Model": "anc-1"}
    with pytest.raises(KeyError, match="SerialNumber"):
        template.resolve({"Model": "anc-2"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bad name"}, "template name"),
        ({"name": "x" * 37}, "template name"),
        ({"thing_name": "anc-{Serial}"}, "Serial"),
        ({"device_configuration": {"Url": "{Nope}"}}, "Nope"),
        ({"certificate_status": CertificateStatus.REVOKED}, "ACTIVE or INACTIVE"),
    ],
)
def test_bad_templates_are_refused(kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {
        "name": "ok",
        "thing_name": "anc-{SerialNumber}",
        "parameters": {"SerialNumber": None},
    }
    with pytest.raises(ConfigError, match=match):
        ProvisioningTemplate(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_provisioning_topics_parse() -> None:
    assert parse_provisioning_topic(CREATE_KEYS_AND_CERTIFICATE_TOPIC) == (
        "CreateKeysAndCertificate",
        None,
    )
    assert parse_provisioning_topic(CREATE_CERTIFICATE_FROM_CSR_TOPIC) == (
        "CreateCertificateFromCsr",
        None,
    )
    assert parse_provisioning_topic(register_thing_topic("anc-fleet")) == (
        "RegisterThing",
        "anc-fleet",
    )
    for topic in (
        f"{CREATE_KEYS_AND_CERTIFICATE_TOPIC}/accepted",
        "$aws/certificates/create/cbor",
        "$aws/provisioning-templates/a b/provision/json",
        f"{register_thing_topic('anc-fleet')}/rejected",
    ):
        assert parse_provisioning_topic(topic) is None
