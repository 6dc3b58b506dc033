"""The certificate registry, the authorizer that applies a certificate's policy, and CSR signing."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.certificates import (
    CLAIM_POLICY,
    DEVICE_POLICY,
    OPERATOR_POLICY,
    CertificateRegistry,
    CertificateStatus,
    certificate_id,
)
from ancsync.emulator.certs import generate_ca, issue_certificate, sign_csr
from ancsync.emulator.policy import DevicePolicy, load_claim_policy
from ancsync.emulator.principals import PrincipalAuthorizer
from ancsync.errors import ConfigError

THING = "anc-device-001"


def new_pem(common_name: str = THING) -> str:
    cert, _key = issue_certificate(generate_ca(), common_name)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_the_certificate_id_is_the_sha256_of_the_der_certificate() -> None:
    pem = new_pem()
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    assert certificate_id(pem) == certificate_id(der) == certificate_id(cert) == expected
    assert len(expected) == 64


def test_statuses_move_as_update_certificate_allows() -> None:
    registry = CertificateRegistry(clock=lambda: 100.0)
    record = registry.register(new_pem(), thing_name=THING)
    assert (record.status, record.policy, record.created_at) == (
        CertificateStatus.ACTIVE,
        DEVICE_POLICY,
        100.0,
    )
    assert registry.connect_refusal(record.certificate_id) is None
    registry.set_status(record.certificate_id, CertificateStatus.INACTIVE)
    assert "inactive" in (registry.connect_refusal(record.certificate_id) or "")
    registry.set_status(record.certificate_id, CertificateStatus.ACTIVE)
    registry.set_status(record.certificate_id, CertificateStatus.REVOKED)
    assert "revoked" in (registry.connect_refusal(record.certificate_id) or "")
    registry.set_status(record.certificate_id, CertificateStatus.REVOKED)  # idempotent
    with pytest.raises(ConfigError, match="final"):
        registry.set_status(record.certificate_id, CertificateStatus.ACTIVE)
    with pytest.raises(ConfigError, match="PENDING_ACTIVATION"):
        registry.set_status(record.certificate_id, CertificateStatus.PENDING_ACTIVATION)
    with pytest.raises(ConfigError, match="no certificate"):
        registry.set_status("0" * 64, CertificateStatus.ACTIVE)
    assert registry.connect_refusal(None) is None  # the plain listener: no certificate
    assert registry.connect_refusal("f" * 64) is None  # not issued by the emulator


def authorizer() -> tuple[CertificateRegistry, PrincipalAuthorizer]:
    registry = CertificateRegistry()
    device_policy = DevicePolicy([THING])
    claim_policy = DevicePolicy(statements=load_claim_policy())
    return registry, PrincipalAuthorizer(registry, device_policy, claim_policy)


def test_a_provisioned_certificate_acts_as_the_thing_it_is_attached_to() -> None:
    registry, auth = authorizer()
    # its CN says operator, but the registry attached it to a thing with the device policy
    record = registry.register(new_pem("operator"), thing_name=THING, policy=DEVICE_POLICY)
    identity = ClientIdentity(THING, "operator", record.certificate_id)
    assert auth.authorize_connect(identity) is None
    assert auth.authorize_publish(identity, f"anc/telemetry/{THING}/anc")
    assert not auth.authorize_publish(identity, "anc/telemetry/anc-device-002/anc")
    assert not auth.authorize_subscribe(identity, "#")


def test_the_claim_policy_allows_the_provisioning_topics_only() -> None:
    registry, auth = authorizer()
    record = registry.register(new_pem("claim"), policy=CLAIM_POLICY)
    claim = ClientIdentity("factory-1", "claim", record.certificate_id)
    assert auth.authorize_connect(claim) is None
    for topic in (
        "$aws/certificates/create/json",
        "$aws/certificates/create-from-csr/json",
        "$aws/provisioning-templates/anc-fleet/provision/json",
    ):
        assert auth.authorize_publish(claim, topic)
        assert auth.authorize_subscribe(claim, f"{topic}/accepted")
        assert auth.authorize_subscribe(claim, f"{topic}/rejected")
    for topic in (
        f"anc/telemetry/{THING}/anc",
        f"$aws/things/{THING}/shadow/update",
        "$aws/certificates/create/cbor",
    ):
        assert not auth.authorize_publish(claim, topic)
    assert not auth.authorize_subscribe(claim, f"$aws/things/{THING}/shadow/update/accepted")
    denial = auth.explain_publish(claim, f"anc/telemetry/{THING}/anc")
    assert denial is not None
    assert denial.statement is None  # implicit deny


def test_connects_follow_the_status_and_the_attachments() -> None:
    registry, auth = authorizer()
    operator = registry.register(new_pem("operator"), policy=OPERATOR_POLICY)
    assert (
        auth.authorize_connect(ClientIdentity("cloud", "operator", operator.certificate_id)) is None
    )
    pending = registry.register(
        new_pem("AWS IoT Certificate"), CertificateStatus.PENDING_ACTIVATION, policy=None
    )
    reason = auth.authorize_connect(
        ClientIdentity("x", "AWS IoT Certificate", pending.certificate_id)
    )
    assert reason is not None
    assert "pending activation" in reason
    unattached = registry.register(new_pem("AWS IoT Certificate"), policy=None)
    identity = ClientIdentity("x", "AWS IoT Certificate", unattached.certificate_id)
    assert "not attached" in (auth.authorize_connect(identity) or "")
    assert not auth.authorize_publish(identity, "anything")
    # a certificate the registry does not know keeps the CN rule
    assert auth.authorize_connect(ClientIdentity(THING, THING, "a" * 64)) is None


def test_sign_csr_keeps_the_key_and_the_subject() -> None:
    ca = generate_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my-device")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    cert = sign_csr(ca, csr)
    assert cert.public_key() == key.public_key()
    assert cert.subject == subject
    cert.verify_directly_issued_by(ca[0])
