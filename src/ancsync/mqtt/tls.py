"""The TLS context of a device connection: TLS 1.2+, client certificate, server verification.

:func:`build_ssl_context` checks the certificate files itself before handing them to :mod:`ssl`,
because OpenSSL's own messages ("[SSL] PEM lib", "KEY_VALUES_MISMATCH") do not tell a user which
file is wrong or what to do. It runs before every connect attempt, so a certificate rotated on
disk is picked up at the next reconnect and one that expires while the device runs is reported
as such instead of as an opaque handshake failure.
"""

from __future__ import annotations

import logging
import ssl
import stat
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ancsync.errors import ConfigError

__all__ = ["AWS_ALPN_PROTOCOL", "build_ssl_context"]

log = logging.getLogger("ancsync.mqtt.tls")

#: ALPN protocol name AWS IoT Core needs for MQTT with client certificates on port 443.
AWS_ALPN_PROTOCOL = "x-amzn-mqtt-ca"


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{setting}: the file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{setting}: {path} is a directory; give the PEM file") from None
    except OSError as exc:
        raise ConfigError(
            f"{setting}: the file {path} cannot be read ({exc.strerror}); "
            "check its permissions for the user running the device"
        ) from None


def _load_certificate(path: Path) -> x509.Certificate:
    data = _read(path, "cert_path")  # outside the try: ConfigError is a ValueError too
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(
            f"cert_path: {path} is not a PEM certificate (expected '-----BEGIN CERTIFICATE-----'); "
            "use the certificate file AWS IoT issued for this thing"
        ) from None


def _load_private_key(path: Path) -> PrivateKeyTypes:
    data = _read(path, "key_path")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"key_path: the private key {path} is encrypted with a password; "
            "store it unencrypted with permissions 0600"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"key_path: {path} is not a PEM private key; use the private key file created "
            "together with the certificate"
        ) from None


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"cert_path: the certificate {path} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC; check the device clock "
            "or issue a certificate that is valid now"
        )
    if now > cert.not_valid_after_utc:
        raise ConfigError(
            f"cert_path: the certificate {path} expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC; issue a new certificate "
            "for this thing and attach it"
        )


def _check_key_matches(cert: x509.Certificate, key: PrivateKeyTypes, cert_path: Path) -> None:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise ConfigError(
            f"key_path: the private key does not belong to the certificate {cert_path}; "
            "use the key file that was created together with this certificate"
        )


def _warn_if_readable_by_others(key_path: Path) -> None:
    mode = key_path.stat().st_mode
    if mode & 0o077:
        log.warning(
            "the private key %s is readable by other users (mode %s); restrict it with "
            "`chmod 600 %s`",
            key_path,
            stat.filemode(mode),
            key_path,
        )


def build_ssl_context(
    *,
    cert_path: Path,
    key_path: Path,
    root_ca_path: Path | None,
    port: int,
    endpoint: str,
) -> ssl.SSLContext:
    """Build the TLS context for a connection to ``endpoint`` with an X.509 client certificate.

    - TLS 1.2 minimum; the server certificate is verified and its name checked against the
      endpoint (the connect passes the endpoint as SNI ``server_hostname``).
    - ``root_ca_path`` is the CA to trust (e.g. Amazon Root CA 1, or the emulator's dev CA);
      ``None`` uses the system trust store, which includes Amazon's roots.
    - On port 443 it offers ALPN ``x-amzn-mqtt-ca``, which AWS IoT needs for MQTT there.

    Raises:
        ConfigError: a file is missing, unreadable or not PEM; the key is encrypted or does not
            belong to the certificate; the certificate is expired or not yet valid. A private
            key readable by group or others only logs a warning.
    """
    cert = _load_certificate(cert_path)
    _check_validity(cert, cert_path)
    key = _load_private_key(key_path)
    _check_key_matches(cert, key, cert_path)
    _warn_if_readable_by_others(key_path)

    # PROTOCOL_TLS_CLIENT verifies the server certificate and its host name by default.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if root_ca_path is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        # Trust only the given CA: a device pinned to Amazon's root must not accept others.
        _read(root_ca_path, "root_ca_path")
        try:
            context.load_verify_locations(cafile=str(root_ca_path))
        except ssl.SSLError:
            raise ConfigError(
                f"root_ca_path: {root_ca_path} holds no PEM CA certificate; use the CA file "
                "(for AWS IoT: AmazonRootCA1.pem), or leave root_ca_path unset to use the "
                "system trust store"
            ) from None
    try:
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    except ssl.SSLError as exc:
        # Checked above; this catches what cryptography accepts and OpenSSL does not.
        raise ConfigError(
            f"cert_path/key_path: OpenSSL refused the certificate {cert_path} with key "
            f"{key_path} ({exc.reason or exc}); regenerate the pair"
        ) from None
    if port == 443:
        context.set_alpn_protocols([AWS_ALPN_PROTOCOL])
    log.debug("TLS context for %s:%d ready (certificate %s)", endpoint, port, cert_path)
    return context
