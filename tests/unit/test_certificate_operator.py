"""The emulator's operator certificates API without a broker: the AWS shapes of its records,
and who may use it."""

from __future__ import annotations

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.certificate_operator import (
    CertificateOperatorService,
    certificate_description,
    certificate_summary,
)
from ancsync.emulator.certificates import (
    OPERATOR_POLICY,
    CertificateRecord,
    CertificateRegistry,
    CertificateStatus,
)
from ancsync.emulator.certs import DevCerts

RECORD = CertificateRecord("ab" * 32, "PEM", CertificateStatus.INACTIVE, "anc-1", None, 0.0)


def test_a_summary_is_shaped_as_list_certificates() -> None:
    assert certificate_summary(RECORD, region="eu-west-1", account_id="123") == {
        "certificateId": "ab" * 32,
        "certificateArn": f"arn:aws:iot:eu-west-1:123:cert/{'ab' * 32}",
        "status": "INACTIVE",
        "creationDate": "1970-01-01T00:00:00+00:00",
        "thingName": "anc-1",
    }


def test_a_description_adds_the_pem() -> None:
    described = certificate_description(RECORD)
    assert described["certificatePem"] == "PEM"
    assert described.items() >= certificate_summary(RECORD).items()


async def _update(certificate_id: str, status: CertificateStatus) -> CertificateRecord:
    raise AssertionError("not called")


def test_only_the_operator_may_use_the_api(dev_certs: DevCerts) -> None:
    registry = CertificateRegistry()
    operator = registry.register(dev_certs.operator.cert.read_text(), policy=OPERATOR_POLICY)
    device = registry.register(
        dev_certs.device("anc-device-001").cert.read_text(), thing_name="anc-device-001"
    )
    service = CertificateOperatorService(registry, _update)
    assert service.is_operator(ClientIdentity("ops", "operator", operator.certificate_id))
    thing = "anc-device-001"
    assert not service.is_operator(ClientIdentity(thing, thing, device.certificate_id))
    assert not service.is_operator(ClientIdentity("x", "x", "0" * 64))  # not in the registry
    assert service.is_operator(ClientIdentity("ops", None))  # the plain listener
