"""Device keys, certificate signing requests and AWS certificate ids."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ancsync.errors import ProvisionError

__all__ = ["certificate_id", "certificate_request", "new_private_key"]


def new_private_key() -> bytes:
    """A new EC P-256 private key (AWS IoT accepts ECDSA P-256 device certificates), PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_request(key_pem: bytes, common_name: str) -> str:
    """A PEM certificate signing request for ``key_pem``'s public key: the key stays here."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError("the device key must be an EC key (made by new_private_key)")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def certificate_id(certificate: x509.Certificate | bytes | str) -> str:
    """AWS IoT's ``certificateId``: the SHA-256 of the DER certificate, 64 lowercase hex digits.

    ``certificate`` is a loaded certificate, its PEM (text or bytes) or its DER bytes.
    """
    if isinstance(certificate, str):
        certificate = certificate.encode()
    if isinstance(certificate, bytes) and certificate.lstrip().startswith(b"-----BEGIN"):
        certificate = x509.load_pem_x509_certificate(certificate)
    if isinstance(certificate, x509.Certificate):
        certificate = certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(certificate).hexdigest()
