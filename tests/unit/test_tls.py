"""build_ssl_context: the checks on the certificate files, and the context it builds."""

from __future__ import annotations

import asyncio
import logging
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives import serialization

from ancsync.emulator.certs import (
    SERVER_NAMES,
    CertPair,
    DevCerts,
    generate_ca,
    issue_certificate,
    write_pair,
)
from ancsync.errors import ConfigError
from ancsync.mqtt.tls import AWS_ALPN_PROTOCOL, build_ssl_context

THING = "anc-device-001"


def _build(
    pair: CertPair, ca: Path | None, port: int = 8883, key: Path | None = None
) -> ssl.SSLContext:
    return build_ssl_context(
        cert_path=pair.cert,
        key_path=key or pair.key,
        root_ca_path=ca,
        port=port,
        endpoint="127.0.0.1",
    )


def test_a_valid_pair_gives_a_verifying_tls12_context(dev_certs: DevCerts) -> None:
    context = _build(dev_certs.device(THING), dev_certs.ca)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


async def _negotiated_alpn(client: ssl.SSLContext, certs: DevCerts) -> str | None:
    """Handshake with a local TLS server that offers the AWS ALPN protocol; what was chosen."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certs.server.cert, certs.server.key)
    server.set_alpn_protocols([AWS_ALPN_PROTOCOL])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
        )
        chosen: str | None = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        return chosen
    finally:
        listener.close()


async def test_alpn_offered_on_port_443_only(dev_certs: DevCerts) -> None:
    assert "127.0.0.1" in SERVER_NAMES
    with anyio.fail_after(5):
        on_443 = _build(dev_certs.device(THING), dev_certs.ca, port=443)
        assert await _negotiated_alpn(on_443, dev_certs) == AWS_ALPN_PROTOCOL
        on_8883 = _build(dev_certs.device(THING), dev_certs.ca, port=8883)
        assert await _negotiated_alpn(on_8883, dev_certs) is None


def test_system_trust_store_when_no_ca_is_given(dev_certs: DevCerts) -> None:
    context = _build(dev_certs.device(THING), None)
    assert context.verify_mode is ssl.CERT_REQUIRED


def test_missing_certificate_file(dev_certs: DevCerts, tmp_path: Path) -> None:
    pair = CertPair(cert=tmp_path / "nope.pem", key=dev_certs.device(THING).key)
    with pytest.raises(ConfigError, match=r"cert_path: the file .*nope.pem does not exist"):
        _build(pair, dev_certs.ca)


def test_file_that_is_not_a_certificate(dev_certs: DevCerts, tmp_path: Path) -> None:
    bogus = tmp_path / "cert.pem"
    bogus.write_text("hello")
    pair = CertPair(cert=bogus, key=dev_certs.device(THING).key)
    with pytest.raises(ConfigError, match="is not a PEM certificate"):
        _build(pair, dev_certs.ca)


def test_file_that_is_not_a_key(dev_certs: DevCerts) -> None:
    pair = dev_certs.device(THING)
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        _build(pair, dev_certs.ca, key=pair.cert)


def test_key_of_another_certificate(dev_certs: DevCerts) -> None:
    other_key = dev_certs.device("anc-device-002").key
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        _build(dev_certs.device(THING), dev_certs.ca, key=other_key)


def test_encrypted_key(dev_certs: DevCerts, tmp_path: Path) -> None:
    pair = dev_certs.device(THING)
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="encrypted with a password"):
        _build(pair, dev_certs.ca, key=encrypted)


@pytest.mark.parametrize(
    ("starts", "ends", "message"),
    [
        (timedelta(days=-30), timedelta(days=-29), "expired on"),
        (timedelta(days=1), timedelta(days=30), "is not valid before"),
    ],
)
def test_certificate_outside_its_validity(
    tmp_path: Path, starts: timedelta, ends: timedelta, message: str
) -> None:
    ca = generate_ca()
    now = datetime.now(UTC)
    cert, key = issue_certificate(ca, THING, not_before=now + starts, not_after=now + ends)
    pair = write_pair(tmp_path / "device", cert, key)
    with pytest.raises(ConfigError, match=message):
        _build(pair, None)


def test_ca_file_without_a_certificate(dev_certs: DevCerts, tmp_path: Path) -> None:
    empty = tmp_path / "ca.pem"
    empty.write_text("not a CA\n")
    with pytest.raises(ConfigError, match=r"root_ca_path: .* holds no PEM CA certificate"):
        _build(dev_certs.device(THING), empty)


def test_warns_when_the_key_is_readable_by_others(
    dev_certs: DevCerts, caplog: pytest.LogCaptureFixture
) -> None:
    pair = dev_certs.device(THING)
    with caplog.at_level(logging.WARNING, logger="ancsync.mqtt.tls"):
        _build(pair, dev_certs.ca)
        assert not caplog.records  # written 0600 by the dev CA
        pair.key.chmod(0o644)
        _build(pair, dev_certs.ca)
    assert "readable by other users" in caplog.text
    assert "chmod 600" in caplog.text
    assert "PRIVATE KEY" not in caplog.text  # the key itself is never logged
