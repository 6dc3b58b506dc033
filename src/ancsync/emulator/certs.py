"""Development certificates for the local emulator: a dev CA, a server, devices and an operator.

:func:`ensure_dev_certs` writes this layout under a certificates directory and returns its paths::

    ca.pem  ca.key                          the dev CA (self-signed) and its key
    server/cert.pem  server/private.key     the broker (SAN localhost, 127.0.0.1, ::1)
    <thing>/cert.pem  <thing>/private.key   one per device, subject CN = thing name
    operator/cert.pem  operator/private.key the cloud side, CN = operator
    claim/cert.pem  claim/private.key       fleet provisioning claim, CN = claim (on request)

Keys are EC P-256 and written with mode 0600. Running it again reuses every file that is still
valid (parses, matches its key, is signed by the current CA, has the expected names and is not
about to expire) and regenerates the rest, so it is cheap to call at every start.

The lower-level helpers (:func:`generate_ca`, :func:`issue_certificate`, :func:`write_pair`) let
tests build deliberately bad certificates: expired, from another CA, with the wrong name.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ancsync.errors import ConfigError
from ancsync.topics import validate_thing_name

__all__ = [
    "CLAIM_NAME",
    "OPERATOR_NAME",
    "SERVER_NAMES",
    "CertPair",
    "CertificateAuthority",
    "DevCerts",
    "PrivateKey",
    "ensure_dev_certs",
    "generate_ca",
    "issue_certificate",
    "load_ca",
    "private_key_pem",
    "sign_csr",
    "write_pair",
]

log = logging.getLogger("ancsync.emulator.certs")

PrivateKey = ec.EllipticCurvePrivateKey
CertificateAuthority = tuple[x509.Certificate, PrivateKey]

OPERATOR_NAME = "operator"
CLAIM_NAME = "claim"
SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CA_COMMON_NAME = "ancsync dev CA"

_CERT_FILE = "cert.pem"
_KEY_FILE = "private.key"
_CA_FILE = "ca.pem"
_CA_KEY_FILE = "ca.key"
_RESERVED_DIRS = frozenset({"server", OPERATOR_NAME, CLAIM_NAME})

# A dev CA outlives its leaves so that regenerating a device never invalidates the others.
_CA_LIFETIME = timedelta(days=3650)
_LEAF_LIFETIME = timedelta(days=825)
# Tolerate a client clock slightly behind ours, and renew a little before the end.
_CLOCK_SKEW = timedelta(minutes=5)
_RENEW_BEFORE = timedelta(days=1)


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevCerts:
    """Paths of a development certificate set (the layout is in the module docstring)."""

    root: Path
    ca: Path
    ca_key: Path
    server: CertPair
    operator: CertPair
    devices: dict[str, CertPair] = field(default_factory=dict)
    #: The fleet provisioning claim certificate (``ensure_dev_certs(..., claim=True)``), or None.
    claim: CertPair | None = None

    def device(self, thing_name: str) -> CertPair:
        """The certificate of ``thing_name``; :class:`ConfigError` if none was generated."""
        try:
            return self.devices[thing_name]
        except KeyError:
            known = ", ".join(sorted(self.devices)) or "none"
            raise ConfigError(
                f"no device certificate for thing {thing_name!r} in {self.root} (generated: "
                f"{known}); pass it to ensure_dev_certs(things=...) or `--thing {thing_name}`"
            ) from None


def _now() -> datetime:
    return datetime.now(UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ancsync development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def generate_ca(common_name: str = CA_COMMON_NAME) -> CertificateAuthority:
    """Create a self-signed certificate authority valid for ten years."""
    key = _new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _subject_alternative_names(server_names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in server_names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _leaf_certificate(
    ca: CertificateAuthority,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    server_names: Sequence[str] = (),
    client: bool = True,
) -> x509.Certificate:
    """A leaf certificate for ``public_key`` signed by ``ca`` (see :func:`issue_certificate`)."""
    ca_cert, ca_key = ca
    now = _now()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - _CLOCK_SKEW)
        .not_valid_after(not_after or now + _LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        builder = builder.add_extension(_subject_alternative_names(server_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def issue_certificate(
    ca: CertificateAuthority,
    common_name: str,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    server_names: Sequence[str] = (),
    client: bool = True,
) -> tuple[x509.Certificate, PrivateKey]:
    """Issue a leaf certificate signed by ``ca`` with a fresh EC P-256 key.

    ``server_names`` (DNS names or IP addresses) go into the subject alternative names and make
    it usable as a TLS server certificate; ``client`` allows TLS client authentication. The
    validity defaults to now (minus a few minutes of clock skew) plus 825 days.
    """
    key = _new_key()
    cert = _leaf_certificate(
        ca,
        _name(common_name),
        key.public_key(),
        not_before=not_before,
        not_after=not_after,
        server_names=server_names,
        client=client,
    )
    return cert, key


def sign_csr(ca: CertificateAuthority, csr: x509.CertificateSigningRequest) -> x509.Certificate:
    """A TLS client certificate for the key of ``csr``, signed by ``ca`` (its subject kept).

    Raises :class:`ValueError` if the request's signature does not verify (it was not made
    with the key it carries). The key itself never leaves the device.
    """
    if not csr.is_signature_valid:
        raise ValueError("the certificate signing request's signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise ValueError("the certificate signing request's key is neither EC nor RSA")  # noqa: TRY004
    return _leaf_certificate(ca, csr.subject, public_key)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (never world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or an old file widened it
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS #8 PEM (what ``private.key`` files hold)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pair(directory: Path, cert: x509.Certificate, key: PrivateKey) -> CertPair:
    """Write ``cert.pem`` (0644) and ``private.key`` (0600) into ``directory`` (created 0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pair = CertPair(cert=directory / _CERT_FILE, key=directory / _KEY_FILE)
    _write_file(pair.key, private_key_pem(key), 0o600)
    _write_file(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return pair


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, PrivateKey] | None:
    """Load a certificate and its key, or None if either is missing, unreadable or they differ."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _still_valid(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now and now + _RENEW_BEFORE < cert.not_valid_after_utc


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _server_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return ips | set(san.get_values_for_type(x509.DNSName))


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _ensure_ca(root: Path) -> CertificateAuthority:
    loaded = _load(root / _CA_FILE, root / _CA_KEY_FILE)
    if loaded is not None and _still_valid(loaded[0]):
        return loaded
    log.info("generating a new dev CA in %s", root)
    cert, key = generate_ca()
    _write_file(root / _CA_KEY_FILE, private_key_pem(key), 0o600)
    _write_file(root / _CA_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _ensure_leaf(
    ca: CertificateAuthority,
    directory: Path,
    common_name: str,
    server_names: Sequence[str] = (),
) -> CertPair:
    pair = CertPair(cert=directory / _CERT_FILE, key=directory / _KEY_FILE)
    loaded = _load(pair.cert, pair.key)
    if loaded is not None:
        cert = loaded[0]
        if (
            _still_valid(cert)
            and _issued_by(cert, ca[0])
            and _common_name(cert) == common_name
            and set(server_names) <= _server_names(cert)
        ):
            return pair
    log.info("issuing a dev certificate for %r in %s", common_name, directory)
    cert, key = issue_certificate(
        ca, common_name, server_names=server_names, client=not server_names
    )
    return write_pair(directory, cert, key)


def load_ca(certs: DevCerts) -> CertificateAuthority:
    """The dev CA of ``certs`` (certificate and key), to sign certificates with."""
    loaded = _load(certs.ca, certs.ca_key)
    if loaded is None:
        raise ConfigError(f"cannot read the dev CA {certs.ca} and its key {certs.ca_key}")
    return loaded


def ensure_dev_certs(
    certs_dir: Path, things: Iterable[str] = ("anc-device-001",), *, claim: bool = False
) -> DevCerts:
    """Create or reuse the development certificates under ``certs_dir`` and return their paths.

    ``things`` are the device thing names; each gets a certificate whose subject CN is the name.
    ``claim`` adds the fleet provisioning claim certificate (``claim/``, CN ``claim``).
    Invalid thing names raise :class:`~ancsync.errors.InvalidTopic`; the names ``server`` and
    ``operator`` are taken by the layout and raise :class:`~ancsync.errors.ConfigError`.
    """
    names = [validate_thing_name(thing) for thing in things]
    clashes = sorted(_RESERVED_DIRS.intersection(names))
    if clashes:
        raise ConfigError(
            f"thing name {clashes[0]!r} is reserved by the certificate layout "
            f"(directories {', '.join(sorted(_RESERVED_DIRS))}); choose another thing name"
        )
    root = Path(certs_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = _ensure_ca(root)
    return DevCerts(
        root=root,
        ca=root / _CA_FILE,
        ca_key=root / _CA_KEY_FILE,
        server=_ensure_leaf(ca, root / "server", "localhost", SERVER_NAMES),
        operator=_ensure_leaf(ca, root / OPERATOR_NAME, OPERATOR_NAME),
        devices={name: _ensure_leaf(ca, root / name, name) for name in names},
        claim=_ensure_leaf(ca, root / CLAIM_NAME, CLAIM_NAME) if claim else None,
    )
