"""provision_by_claim on the FakeBroker, with the fleet provisioning service played by the test.

Real TLS against the emulator's provisioning service, and SIGKILLed device processes, are in
tests/integration and tests/reliability; here each step and each interruption is driven one at
a time: what is on disk after it, what is asked of the service, and what a rerun does.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from helpers import fake_connection

from ancsync import IoTConnection
from ancsync.config import Settings
from ancsync.emulator.certs import (
    CertificateAuthority,
    generate_ca,
    issue_certificate,
    private_key_pem,
    write_pair,
)
from ancsync.errors import ProvisionError, ProvisioningRejected, TLSError
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.provisioning.claim import PROGRESS_FILE, provision_by_claim
from ancsync.provisioning.identity import DeviceIdentity
from ancsync.provisioning.keys import certificate_id
from ancsync.provisioning.rotation import finish_interrupted_rotation, rotate_certificate
from ancsync.testing import FakeBroker

TEMPLATE = "AncFleet"
CSR_TOPIC = "$aws/certificates/create-from-csr/json"
KEYS_TOPIC = "$aws/certificates/create/json"
REGISTER_TOPIC = f"$aws/provisioning-templates/{TEMPLATE}/provision/json"
TIMEOUT = 5


class Interrupted(Exception):
    """Stands for the power going out right after a step reached the disk."""


def power_cut_after(step: str) -> Callable[[str], None]:
    """An ``on_step`` that cuts the power once ``step`` is done."""

    def on_step(done: str) -> None:
        if done == step:
            raise Interrupted(done)

    return on_step


class FleetService:
    """The provisioning service, answering on the FakeBroker as AWS IoT would."""

    def __init__(self, broker: FakeBroker, ca: CertificateAuthority) -> None:
        self.broker = broker
        self.ca = ca
        self.issued: dict[str, str] = {}  # ownership token -> certificate id
        self.registered: list[str] = []
        self.refuse_register: tuple[int, str, str] | None = None
        self.silent = False
        self._seen = 0

    def requests(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(body) for t, body, _, _ in self.broker.published if t == topic]

    async def serve(self) -> None:
        while True:
            await self.broker.wait_until(lambda: len(self.broker.published) > self._seen)
            for topic, body, _, _ in self.broker.published[self._seen :]:
                if not self.silent and topic in (CSR_TOPIC, KEYS_TOPIC, REGISTER_TOPIC):
                    self.answer(topic, orjson.loads(body))
            self._seen = len(self.broker.published)

    def reply(self, topic: str, outcome: str, body: dict[str, Any]) -> None:
        self.broker.deliver(f"{topic}/{outcome}", orjson.dumps(body))

    def answer(self, topic: str, request: dict[str, Any]) -> None:
        ca_cert, ca_key = self.ca
        if topic == CSR_TOPIC:
            csr = x509.load_pem_x509_csr(request["certificateSigningRequest"].encode())
            now = datetime.now(UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(csr.subject)
                .issuer_name(ca_cert.subject)
                .public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=1))
                .sign(ca_key, hashes.SHA256())
            )
            pem = cert.public_bytes(serialization.Encoding.PEM).decode()
            self.reply(topic, "accepted", self.issue(pem))
        elif topic == KEYS_TOPIC:
            cert, key = issue_certificate(self.ca, "made by the service")
            pem = cert.public_bytes(serialization.Encoding.PEM).decode()
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ).decode()
            self.reply(topic, "accepted", {**self.issue(pem), "privateKey": key_pem})
        elif self.refuse_register is not None:
            code, error, message = self.refuse_register
            body = {"statusCode": code, "errorCode": error, "errorMessage": message}
            self.reply(topic, "rejected", body)
        elif request["certificateOwnershipToken"] not in self.issued:
            body = {
                "statusCode": 400,
                "errorCode": "InvalidCertificateOwnershipToken",
                "errorMessage": "unknown or expired token",
            }
            self.reply(topic, "rejected", body)
        else:
            self.registered.append(self.issued.pop(request["certificateOwnershipToken"]))
            serial = request["parameters"]["SerialNumber"]
            body = {"thingName": f"anc-{serial}", "deviceConfiguration": {"region": "eu"}}
            self.reply(topic, "accepted", body)

    def issue(self, pem: str) -> dict[str, str]:
        token = f"token-{len(self.issued) + len(self.registered)}"
        self.issued[token] = certificate_id(pem)
        return {
            "certificateId": self.issued[token],
            "certificatePem": pem,
            "certificateOwnershipToken": token,
        }


@pytest.fixture
def claim(tmp_path: Path) -> tuple[Path, Path]:
    """A claim certificate and key (their content matters only over TLS)."""
    pair = write_pair(tmp_path / "claim", *issue_certificate(generate_ca("claim CA"), "claim"))
    return pair.cert, pair.key


@asynccontextmanager
async def fleet() -> AsyncIterator[FleetService]:
    service = FleetService(FakeBroker(), generate_ca("fleet CA"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.serve)
        yield service
        tg.cancel_scope.cancel()


async def provision(
    service: FleetService, claim: tuple[Path, Path], directory: Path, **options: Any
) -> DeviceIdentity:
    options.setdefault("parameters", {"SerialNumber": "SN1"})
    return await provision_by_claim(
        directory,
        endpoint="127.0.0.1",
        claim_cert=claim[0],
        claim_key=claim[1],
        template=TEMPLATE,
        reply_timeout=1.0,
        connection_options={
            "tls": False,
            "transport_factory": service.broker.transport,
            "reconnect": BackoffPolicy(base=0.001, cap=0.002),
        },
        **options,
    )


async def test_a_key_made_on_the_device_becomes_a_registered_identity(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    steps: list[str] = []
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service:
            identity = await provision(service, claim, tmp_path / "id", on_step=steps.append)
    assert steps == ["key", "certificate", "registered", "saved", "verified"]
    assert identity.thing_name == "anc-SN1"
    assert identity.device_configuration == {"region": "eu"}
    assert service.registered == [identity.certificate_id]
    assert certificate_id(identity.cert_path.read_bytes()) == identity.certificate_id
    # The certificate is for the key written here, and that key was never sent anywhere.
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
    assert cert.public_key() == key.public_key()
    assert not any(b"PRIVATE KEY" in body for _, body, _, _ in service.broker.published)
    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(identity.directory.stat().st_mode) == 0o700
    # Only the replies it uses are subscribed: a claim policy allows nothing else.
    assert sorted(set(service.broker.subscribed)) == sorted(
        f"{topic}/{outcome}"
        for topic in (CSR_TOPIC, REGISTER_TOPIC)
        for outcome in ("accepted", "rejected")
    )
    assert sorted(p.name for p in identity.directory.iterdir()) == [
        "ancsync.json",
        "cert.pem",
        "identity.json",
        "private.key",
    ]
    settings = Settings.load(config_file=identity.config_path, tls=False)
    assert settings.iot.thing_name == "anc-SN1"
    assert settings.iot.cert_path == identity.cert_path
    assert settings.iot.key_path == identity.key_path


async def test_a_device_already_provisioned_does_not_connect_again(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service:
            first = await provision(service, claim, tmp_path / "id")
            connects = len(service.broker.connects)
            again = await provision(service, claim, tmp_path / "id")
    assert again == first
    assert len(service.broker.connects) == connects


async def test_keys_made_by_the_service_are_kept_private(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service:
            identity = await provision(service, claim, tmp_path / "id", key_on_device=False)
    assert len(service.requests(KEYS_TOPIC)) == 1
    assert service.requests(CSR_TOPIC) == []
    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
    assert cert.public_key() == key.public_key()


@pytest.mark.parametrize("interrupted_after", ["key", "certificate", "registered", "saved"])
async def test_interrupted_after_any_step_the_next_boot_finishes_with_one_identity(
    claim: tuple[Path, Path], tmp_path: Path, interrupted_after: str
) -> None:
    directory = tmp_path / "id"
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service:
            with pytest.raises(Interrupted):
                await provision(
                    service, claim, directory, on_step=power_cut_after(interrupted_after)
                )
            assert DeviceIdentity.find(directory) is None  # nothing finished yet
            identity = await provision(service, claim, directory)
    # One certificate asked for, one registered: no identity left behind unused.
    assert len(service.requests(CSR_TOPIC)) == 1
    assert service.registered == [identity.certificate_id]
    expected_registers = 1
    assert len(service.requests(REGISTER_TOPIC)) == expected_registers
    assert not (directory / PROGRESS_FILE).exists()
    assert DeviceIdentity.find(directory) == identity


async def test_a_rejected_registration_names_the_step_and_resumes_with_the_same_certificate(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "id"
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service:
            service.refuse_register = (400, "InvalidParameters", "Missing parameter SerialNumber")
            with pytest.raises(ProvisioningRejected) as refused:
                await provision(service, claim, directory)
            assert DeviceIdentity.find(directory) is None
            service.refuse_register = None
            identity = await provision(service, claim, directory)
    error = refused.value
    assert (error.step, error.status_code, error.error_code) == (
        "RegisterThing",
        400,
        "InvalidParameters",
    )
    assert str(error) == (
        "RegisterThing was rejected: 400 InvalidParameters: Missing parameter SerialNumber"
    )
    assert len(service.requests(CSR_TOPIC)) == 1  # the certificate on disk was registered
    assert service.registered == [identity.certificate_id]


async def test_an_earlier_certificate_the_service_no_longer_knows_is_replaced_once(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "id"

    with anyio.fail_after(TIMEOUT):
        async with fleet() as service:
            with pytest.raises(Interrupted):
                await provision(service, claim, directory, on_step=power_cut_after("certificate"))
            service.issued.clear()  # its token expired meanwhile
            identity = await provision(service, claim, directory)
    assert len(service.requests(CSR_TOPIC)) == 2
    assert len(service.requests(REGISTER_TOPIC)) == 2
    assert service.registered == [identity.certificate_id]


async def test_a_certificate_issued_too_long_ago_is_not_registered(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "id"

    with anyio.fail_after(TIMEOUT):
        async with fleet() as service:
            with pytest.raises(Interrupted):
                await provision(service, claim, directory, on_step=power_cut_after("certificate"))
            progress = json.loads((directory / PROGRESS_FILE).read_bytes())
            progress["issued_at"] = time.time() - 2 * 3600  # the device was off for two hours
            (directory / PROGRESS_FILE).write_text(json.dumps(progress))
            identity = await provision(service, claim, directory)
    assert len(service.requests(CSR_TOPIC)) == 2
    assert len(service.requests(REGISTER_TOPIC)) == 1
    assert service.registered == [identity.certificate_id]


async def test_no_answer_is_an_error_that_names_the_step(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service:
            service.silent = True
            with pytest.raises(ProvisionError, match="no answer to CreateCertificateFromCsr"):
                await provision(service, claim, tmp_path / "id")
    assert DeviceIdentity.find(tmp_path / "id") is None
    assert stat.S_IMODE((tmp_path / "id" / "private.key.new").stat().st_mode) == 0o600


# --- rotation -----------------------------------------------------------------------------


@asynccontextmanager
async def provisioned_device(
    service: FleetService, claim: tuple[Path, Path], directory: Path
) -> AsyncIterator[IoTConnection]:
    """A device provisioned by claim, connected with its own identity (on the FakeBroker)."""
    identity = await provision(service, claim, directory)
    connection = fake_connection(
        service.broker, identity.thing_name, identity.cert_path, identity.key_path
    )
    async with connection as iot:
        await iot.wait_connected(TIMEOUT)
        yield iot


def pair_matches(cert_path: Path, key_path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return bool(cert.public_key() == key.public_key())


async def test_a_rotation_switches_to_a_new_pair_and_loses_nothing_queued(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "id"
    steps: list[str] = []
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service, provisioned_device(service, claim, directory) as iot:
            old_id = certificate_id((directory / "cert.pem").read_bytes())
            connects = len(service.broker.connects)
            service.broker.auto_ack = False
            handle = await iot.publish("anc/telemetry/anc-SN1/anc", {"n": 1})
            await service.broker.wait_until(
                lambda: any(t.startswith("anc/telemetry") for t, *_ in service.broker.attempted)
            )
            service.broker.auto_ack = True  # the PUBACK of the first sending never comes
            new_id = await rotate_certificate(
                iot, template=TEMPLATE, parameters={"SerialNumber": "SN1"}, on_step=steps.append
            )
            await handle.delivered()
    assert steps == ["key", "certificate", "registered", "switched", "connected"]
    assert new_id != old_id
    assert certificate_id((directory / "cert.pem").read_bytes()) == new_id
    assert pair_matches(directory / "cert.pem", directory / "private.key")
    assert stat.S_IMODE((directory / "private.key").stat().st_mode) == 0o600
    assert len(service.broker.connects) == connects + 1
    assert DeviceIdentity.find(directory) is not None
    assert DeviceIdentity.find(directory).certificate_id == new_id  # type: ignore[union-attr]
    assert sorted(p.name for p in directory.iterdir()) == [
        "ancsync.json",
        "cert.pem",
        "identity.json",
        "private.key",
    ]


async def test_a_new_certificate_the_broker_refuses_is_dropped_for_the_old_one(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "id"
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service, provisioned_device(service, claim, directory) as iot:
            old_pem = (directory / "cert.pem").read_bytes()

            def refuse_the_new_one(step: str) -> None:
                if step == "switched":
                    service.broker.connect_errors.append(TLSError("certificate revoked"))

            with pytest.raises(ProvisionError, match="went back to its old certificate"):
                await rotate_certificate(
                    iot,
                    template=TEMPLATE,
                    parameters={"SerialNumber": "SN1"},
                    on_step=refuse_the_new_one,
                )
            await iot.wait_connected(TIMEOUT)  # connected again, with the old pair
    assert (directory / "cert.pem").read_bytes() == old_pem
    assert pair_matches(directory / "cert.pem", directory / "private.key")
    assert not list(directory.glob("*.old"))


async def test_a_template_that_names_another_thing_changes_nothing(
    claim: tuple[Path, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "id"
    with anyio.fail_after(TIMEOUT):
        async with fleet() as service, provisioned_device(service, claim, directory) as iot:
            before = {p.name: p.read_bytes() for p in directory.iterdir()}
            with pytest.raises(ProvisionError, match="registered the certificate for 'anc-SN2'"):
                await rotate_certificate(iot, template=TEMPLATE, parameters={"SerialNumber": "SN2"})
    after = {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.endswith(".new")}
    assert after == before


def test_a_switch_interrupted_halfway_is_finished_at_the_next_start(tmp_path: Path) -> None:
    """Killed after the new key took its place, before the new certificate did."""
    ca = generate_ca("fleet CA")
    old_cert, old_key = issue_certificate(ca, "old")
    new_cert, new_key = issue_certificate(ca, "new")
    pair = write_pair(tmp_path, old_cert, new_key)  # the new key, the old certificate
    cert_path, key_path = pair.cert, pair.key
    (tmp_path / "cert.pem.old").write_bytes(cert_path.read_bytes())
    (tmp_path / "private.key.old").write_bytes(private_key_pem(old_key))
    new_pem = new_cert.public_bytes(serialization.Encoding.PEM).decode()
    journal = {"phase": "switching", "certificate_pem": new_pem, "certificate_id": "abc"}
    (tmp_path / "private.key.rotation.json").write_text(json.dumps(journal))
    assert not pair_matches(cert_path, key_path)

    assert finish_interrupted_rotation(cert_path, key_path) is True
    assert pair_matches(cert_path, key_path)
    assert cert_path.read_text() == new_pem
    assert not (tmp_path / "private.key.rotation.json").exists()
    assert finish_interrupted_rotation(cert_path, key_path) is False  # nothing left to finish


def test_a_rotation_interrupted_before_its_switch_is_dropped(tmp_path: Path) -> None:
    pair = write_pair(tmp_path, *issue_certificate(generate_ca("fleet CA"), "current"))
    cert_path, key_path = pair.cert, pair.key
    (tmp_path / "private.key.new").write_bytes(b"a key nobody registered")
    (tmp_path / "private.key.rotation.json").write_text(json.dumps({"phase": "issued"}))
    assert finish_interrupted_rotation(cert_path, key_path) is True
    assert pair_matches(cert_path, key_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "private.key"]
