"""Development certificates: layout, permissions, names, reuse and regeneration."""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ancsync.emulator.certs import (
    DevCerts,
    ensure_dev_certs,
    generate_ca,
    issue_certificate,
    write_pair,
)
from ancsync.errors import ConfigError, InvalidTopic

THINGS = ("anc-device-001", "anc-device-002")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def all_files(certs: DevCerts) -> list[Path]:
    pairs = [certs.server, certs.operator, *certs.devices.values()]
    return [certs.ca, certs.ca_key, *(p for pair in pairs for p in (pair.cert, pair.key))]


def snapshot(certs: DevCerts) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in all_files(certs)}


def ca_of(certs: DevCerts) -> tuple[x509.Certificate, object]:
    key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    return load(certs.ca), key


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Key files must be 0600 even when the process umask would allow more."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_layout(tmp_path: Path) -> None:
    certs = ensure_dev_certs(tmp_path, THINGS)
    assert certs.root == tmp_path
    assert certs.ca == tmp_path / "ca.pem"
    assert certs.ca_key == tmp_path / "ca.key"
    assert (certs.server.cert, certs.server.key) == (
        tmp_path / "server" / "cert.pem",
        tmp_path / "server" / "private.key",
    )
    assert certs.operator.cert == tmp_path / "operator" / "cert.pem"
    for thing in THINGS:
        assert certs.device(thing).cert == tmp_path / thing / "cert.pem"
        assert certs.device(thing).key == tmp_path / thing / "private.key"
    assert all(path.is_file() for path in all_files(certs))


def test_private_keys_are_0600_and_certificates_readable(
    tmp_path: Path, permissive_umask: None
) -> None:
    certs = ensure_dev_certs(tmp_path, THINGS)
    keys = [certs.ca_key, certs.server.key, certs.operator.key]
    keys += [pair.key for pair in certs.devices.values()]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(certs.ca.stat().st_mode) == 0o644
    assert stat.S_IMODE(certs.device(THINGS[0]).cert.stat().st_mode) == 0o644


def test_names_usages_and_chain(tmp_path: Path) -> None:
    certs = ensure_dev_certs(tmp_path, THINGS)
    ca = load(certs.ca)
    for thing in THINGS:
        device = load(certs.device(thing).cert)
        assert common_name(device) == thing
        device.verify_directly_issued_by(ca)
        usages = device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert common_name(load(certs.operator.cert)) == "operator"

    server = load(certs.server.cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_second_call_reuses_every_file(tmp_path: Path) -> None:
    first = snapshot(ensure_dev_certs(tmp_path, THINGS))
    assert snapshot(ensure_dev_certs(tmp_path, THINGS)) == first


def test_a_new_thing_is_added_without_touching_the_others(tmp_path: Path) -> None:
    before = snapshot(ensure_dev_certs(tmp_path, THINGS))
    certs = ensure_dev_certs(tmp_path, (*THINGS, "anc-device-003"))
    assert {path: path.read_bytes() for path in before} == before
    assert common_name(load(certs.device("anc-device-003").cert)) == "anc-device-003"


def test_an_expired_device_certificate_is_regenerated(tmp_path: Path) -> None:
    certs = ensure_dev_certs(tmp_path, THINGS)
    now = datetime.now(UTC)
    expired = issue_certificate(
        ca_of(certs),  # type: ignore[arg-type]
        THINGS[0],
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    write_pair(tmp_path / THINGS[0], *expired)
    others = {p: p.read_bytes() for p in all_files(certs) if THINGS[0] not in p.parts}

    renewed = ensure_dev_certs(tmp_path, THINGS)

    cert = load(renewed.device(THINGS[0]).cert)
    assert cert.not_valid_after_utc > now + timedelta(days=30)
    assert common_name(cert) == THINGS[0]
    cert.verify_directly_issued_by(load(renewed.ca))
    assert {path: path.read_bytes() for path in others} == others


def test_a_key_that_does_not_match_its_certificate_is_regenerated(tmp_path: Path) -> None:
    certs = ensure_dev_certs(tmp_path, THINGS)
    pair = certs.device(THINGS[1])
    pair.key.write_bytes(certs.device(THINGS[0]).key.read_bytes())

    renewed = ensure_dev_certs(tmp_path, THINGS).device(THINGS[1])

    key = serialization.load_pem_private_key(renewed.key.read_bytes(), password=None)
    assert key.public_key() == load(renewed.cert).public_key()


def test_a_certificate_from_another_ca_is_regenerated(tmp_path: Path) -> None:
    certs = ensure_dev_certs(tmp_path, THINGS)
    write_pair(tmp_path / THINGS[0], *issue_certificate(generate_ca("stranger"), THINGS[0]))

    renewed = ensure_dev_certs(tmp_path, THINGS)

    load(renewed.device(THINGS[0]).cert).verify_directly_issued_by(load(certs.ca))


def test_a_lost_ca_key_reissues_everything(tmp_path: Path) -> None:
    before = snapshot(ensure_dev_certs(tmp_path, THINGS))
    (tmp_path / "ca.key").unlink()

    certs = ensure_dev_certs(tmp_path, THINGS)

    ca = load(certs.ca)
    assert certs.ca.read_bytes() != before[certs.ca]
    for pair in (certs.server, certs.operator, *certs.devices.values()):
        load(pair.cert).verify_directly_issued_by(ca)


def test_issue_certificate_honours_validity_and_server_names() -> None:
    ca = generate_ca("test CA")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    cert, key = issue_certificate(
        ca,
        "broker.local",
        not_before=start,
        not_after=start + timedelta(days=2),
        server_names=["broker.local", "10.0.0.1"],
        client=False,
    )
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (
        start,
        start + timedelta(days=2),
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.local"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    assert key.public_key() == cert.public_key()


def test_unknown_device_names_the_fix(tmp_path: Path) -> None:
    certs = ensure_dev_certs(tmp_path, THINGS)
    with pytest.raises(ConfigError, match=r"no device certificate for thing .nope.*--thing nope"):
        certs.device("nope")


@pytest.mark.parametrize("thing", ["operator", "server", "claim"])
def test_layout_names_cannot_be_thing_names(tmp_path: Path, thing: str) -> None:
    with pytest.raises(ConfigError, match=f"thing name '{thing}' is reserved"):
        ensure_dev_certs(tmp_path, [thing])


def test_the_claim_certificate_is_made_on_request_and_reused(tmp_path: Path) -> None:
    assert ensure_dev_certs(tmp_path, THINGS).claim is None
    certs = ensure_dev_certs(tmp_path, THINGS, claim=True)
    assert certs.claim is not None
    assert certs.claim.cert == tmp_path / "claim" / "cert.pem"
    assert common_name(load(certs.claim.cert)) == "claim"
    assert stat.S_IMODE(os.stat(certs.claim.key).st_mode) == 0o600
    again = ensure_dev_certs(tmp_path, THINGS, claim=True)
    assert again.claim is not None
    assert again.claim.cert.read_bytes() == certs.claim.cert.read_bytes()


def test_invalid_thing_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidTopic):
        ensure_dev_certs(tmp_path, ["../escape"])
