"""The AWS shapes of the emulator's certificate records (pure)."""

from __future__ import annotations

from ancsync.emulator.certificate_operator import certificate_description, certificate_summary
from ancsync.emulator.certificates import CertificateRecord, CertificateStatus

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
