"""Fleet provisioning by claim, and certificate revocation, on the emulator (real TLS, real broker).

A device with the claim certificate may use the provisioning topics only; CreateKeysAndCertificate
or CreateCertificateFromCsr, then RegisterThing, give it a certificate with full device rights.
Rejections carry AWS's status and error codes. A certificate that leaves ACTIVE drops its
connections at once and cannot connect again.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import aiomqtt
import anyio
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from disconnects import until_disconnected
from helpers import device_client, granted, mqtt_client, next_message

from ancsync.emulator.certificates import CertificateStatus
from ancsync.emulator.certs import CertPair
from ancsync.emulator.provisioning_templates import HookRequest, HookResult, ProvisioningTemplate
from ancsync.emulator.server import Emulator
from ancsync.testing import start_in_task
from ancsync.topics import (
    CREATE_CERTIFICATE_FROM_CSR_TOPIC,
    CREATE_KEYS_AND_CERTIFICATE_TOPIC,
    register_thing_topic,
)

DEVICE = "anc-device-001"
OTHER = "anc-device-002"
TEMPLATE = "anc-fleet"
TIMEOUT = 15


def claim_client(emulator: Emulator, client_id: str = "factory-1") -> aiomqtt.Client:
    """An (unconnected) client with the emulator's claim certificate."""
    assert emulator.certs.claim is not None
    return mqtt_client(emulator.port, emulator.certs, emulator.certs.claim, client_id)


async def request(client: aiomqtt.Client, topic: str, payload: dict[str, Any]) -> tuple[str, Any]:
    """Subscribe to the replies of ``topic``, publish ``payload``: ``(accepted|rejected, body)``."""
    assert granted(await client.subscribe(f"{topic}/accepted", qos=1)) == [1]
    assert granted(await client.subscribe(f"{topic}/rejected", qos=1)) == [1]
    await client.publish(topic, orjson.dumps(payload), qos=1)
    message = await next_message(client)
    return message.topic.value.rsplit("/", 1)[1], orjson.loads(message.payload)


def save_pair(directory: Path, cert_pem: str, key_pem: bytes) -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / "cert.pem", directory / "private.key")
    pair.cert.write_text(cert_pem)
    pair.key.write_bytes(key_pem)
    return pair


async def shadow_update_accepted(emulator: Emulator, pair: CertPair, thing: str) -> Any:
    """Connect as ``thing`` with ``pair`` and update its shadow; the accepted document."""
    topic = f"$aws/things/{thing}/shadow/update"
    async with mqtt_client(emulator.port, emulator.certs, pair, thing) as device:
        outcome, body = await request(
            device, topic, {"state": {"reported": {"mode": "adaptive"}}, "clientToken": "t1"}
        )
    assert outcome == "accepted", body
    return body


async def test_the_claim_certificate_may_use_only_the_provisioning_topics(
    emulator: Emulator,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with claim_client(emulator) as claim:
            for topic in (
                CREATE_KEYS_AND_CERTIFICATE_TOPIC,
                CREATE_CERTIFICATE_FROM_CSR_TOPIC,
                register_thing_topic(TEMPLATE),
            ):
                for reply in ("accepted", "rejected"):
                    assert granted(await claim.subscribe(f"{topic}/{reply}", qos=1)) == [1]
            telemetry = f"anc/telemetry/{DEVICE}/anc"
            await until_disconnected(claim, lambda: claim.publish(telemetry, b"{}", qos=1))
        async with claim_client(emulator, "factory-2") as claim:
            shadow = f"$aws/things/{DEVICE}/shadow/update/accepted"
            await until_disconnected(claim, lambda: claim.subscribe(shadow, qos=1))
        async with claim_client(emulator, "factory-3") as claim:
            update = f"$aws/things/{DEVICE}/shadow/update"
            await until_disconnected(claim, lambda: claim.publish(update, b"{}", qos=1))
    assert [(v.client_id, v.request, v.statement) for v in emulator.broker.violations()] == [
        ("factory-1", "publish", None),
        ("factory-2", "subscribe", None),
        ("factory-3", "publish", None),
    ]


async def test_create_keys_then_register_thing_gives_a_certificate_with_device_rights(
    emulator: Emulator, tmp_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT * 2):
        async with claim_client(emulator) as claim:
            outcome, created = await request(claim, CREATE_KEYS_AND_CERTIFICATE_TOPIC, {})
            assert outcome == "accepted", created
            assert set(created) == {
                "certificateId",
                "certificatePem",
                "privateKey",
                "certificateOwnershipToken",
            }
            cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
            der = cert.public_bytes(serialization.Encoding.DER)
            assert created["certificateId"] == hashlib.sha256(der).hexdigest()
            record = emulator.certificates.require(created["certificateId"])
            assert record.status is CertificateStatus.PENDING_ACTIVATION
            pair = save_pair(
                tmp_path / "new", created["certificatePem"], created["privateKey"].encode()
            )

            # not registered yet: the new certificate may not connect
            with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
                async with mqtt_client(emulator.port, emulator.certs, pair, "anc-SN-0001"):
                    pass

            outcome, registered = await request(
                claim,
                register_thing_topic(TEMPLATE),
                {
                    "certificateOwnershipToken": created["certificateOwnershipToken"],
                    "parameters": {"SerialNumber": "SN-0001"},
                },
            )
        assert outcome == "accepted", registered
        assert registered == {"thingName": "anc-SN-0001", "deviceConfiguration": {"Model": "anc-1"}}
        record = emulator.certificates.require(created["certificateId"])
        assert (record.status, record.thing_name) == (CertificateStatus.ACTIVE, "anc-SN-0001")
        assert "anc-SN-0001" in emulator.things

        body = await shadow_update_accepted(emulator, pair, "anc-SN-0001")
        assert body["state"] == {"reported": {"mode": "adaptive"}}
        # full device rights: its own topics, nobody else's
        async with mqtt_client(emulator.port, emulator.certs, pair, "anc-SN-0001") as device:
            await device.publish("anc/telemetry/anc-SN-0001/anc", b"{}", qos=1)
            other = f"anc/telemetry/{DEVICE}/anc"
            await until_disconnected(device, lambda: device.publish(other, b"{}", qos=1))


async def test_create_certificate_from_csr_keeps_the_key_on_the_device(
    emulator: Emulator, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my-device")]))
        .sign(key, hashes.SHA256())
    )
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    with anyio.fail_after(TIMEOUT * 2):
        async with claim_client(emulator) as claim:
            outcome, created = await request(
                claim, CREATE_CERTIFICATE_FROM_CSR_TOPIC, {"certificateSigningRequest": csr_pem}
            )
            assert outcome == "accepted", created
            assert set(created) == {"certificateId", "certificatePem", "certificateOwnershipToken"}
            cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
            assert cert.public_key() == key.public_key()
            outcome, registered = await request(
                claim,
                register_thing_topic(TEMPLATE),
                {
                    "certificateOwnershipToken": created["certificateOwnershipToken"],
                    "parameters": {"SerialNumber": "SN-0002", "Model": "anc-2"},
                },
            )
        assert outcome == "accepted", registered
        assert registered == {"thingName": "anc-SN-0002", "deviceConfiguration": {"Model": "anc-2"}}
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pair = save_pair(tmp_path / "csr", created["certificatePem"], key_pem)
        await shadow_update_accepted(emulator, pair, "anc-SN-0002")


async def test_rejections_carry_aws_codes(emulator: Emulator) -> None:
    def hook(request: HookRequest) -> HookResult:
        if request.parameters.get("SerialNumber", "").startswith("BAD"):
            return HookResult(False, reason=f"serial {request.parameters['SerialNumber']} unknown")
        return HookResult(True, parameter_overrides={"Site": "lab"})

    emulator.provisioning.register_template(
        ProvisioningTemplate(
            "guarded",
            thing_name="anc-{SerialNumber}",
            parameters={"SerialNumber": None, "Site": None},
            device_configuration={"Site": "{Site}"},
            pre_provisioning_hook=hook,
        )
    )

    async def rejection(claim: aiomqtt.Client, topic: str, payload: dict[str, Any]) -> Any:
        outcome, body = await request(claim, topic, payload)
        assert outcome == "rejected", body
        return (body["statusCode"], body["errorCode"])

    with anyio.fail_after(TIMEOUT * 3):
        async with claim_client(emulator) as claim:
            _outcome, created = await request(claim, CREATE_KEYS_AND_CERTIFICATE_TOPIC, {})
            token = created["certificateOwnershipToken"]
            register = register_thing_topic(TEMPLATE)
            assert await rejection(
                claim, register, {"certificateOwnershipToken": "forged", "parameters": {}}
            ) == (400, "InvalidCertificateOwnershipToken")
            assert await rejection(claim, register, {"parameters": {}}) == (
                400,
                "InvalidCertificateOwnershipToken",
            )
            assert await rejection(
                claim, register, {"certificateOwnershipToken": token, "parameters": {}}
            ) == (400, "InvalidParameters")
            assert await rejection(
                claim,
                register_thing_topic("no-such-template"),
                {"certificateOwnershipToken": token},
            ) == (404, "ResourceNotFound")
            guarded = register_thing_topic("guarded")
            denied = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": "BAD1"}}
            outcome, body = await request(claim, guarded, denied)
            assert (outcome, body["statusCode"], body["errorCode"]) == (
                "rejected",
                403,
                "ACCESS_DENIED",
            )
            assert "serial BAD1 unknown" in body["errorMessage"]
            assert await rejection(
                claim, CREATE_CERTIFICATE_FROM_CSR_TOPIC, {"certificateSigningRequest": "junk"}
            ) == (400, "InvalidCSR")
            # the token was not used up by the rejections: the hook allows this one
            allowed = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": "OK1"}}
            outcome, body = await request(claim, guarded, allowed)
            assert (outcome, body) == (
                "accepted",
                {"thingName": "anc-OK1", "deviceConfiguration": {"Site": "lab"}},
            )
            # a token is good for one registration
            assert await rejection(claim, guarded, allowed) == (
                400,
                "InvalidCertificateOwnershipToken",
            )
    assert emulator.provisioning.stats() == {"accepted": 2, "rejected": 7}


async def test_revoking_a_connected_certificate_drops_it_and_refuses_it_again(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ancsync.emulator")
    record = emulator.certificate_of(DEVICE)
    with anyio.fail_after(TIMEOUT):
        async with (
            device_client(emulator.port, emulator.certs, DEVICE) as device,
            device_client(emulator.port, emulator.certs, OTHER) as bystander,
        ):
            await device.subscribe(f"anc/devices/{DEVICE}/commands", qos=1)
            await bystander.subscribe(f"anc/devices/{OTHER}/commands", qos=1)
            revoked = await emulator.revoke_certificate(record.certificate_id)
            assert revoked.status is CertificateStatus.REVOKED
            with pytest.raises(aiomqtt.MqttError):
                await next_message(device)
            await bystander.publish(f"anc/telemetry/{OTHER}/anc", b"{}", qos=1)  # still served
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with device_client(emulator.port, emulator.certs, DEVICE):
                pass
    assert emulator.broker.stats()["certificate_disconnects"] == 1
    [dropped] = emulator.broker.certificate_disconnects()
    assert (dropped.client_id, dropped.certificate_id, dropped.status) == (
        DEVICE,
        record.certificate_id,
        "REVOKED",
    )
    assert any("revoked" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match="final"):
        await emulator.activate_certificate(record.certificate_id)


async def test_an_inactive_certificate_is_refused_until_activated(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ancsync.emulator")
    record = emulator.certificate_of(OTHER)
    await emulator.deactivate_certificate(record.certificate_id)
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with device_client(emulator.port, emulator.certs, OTHER):
                pass
        assert any("inactive" in r.getMessage() for r in caplog.records)
        await emulator.activate_certificate(record.certificate_id)
        async with device_client(emulator.port, emulator.certs, OTHER) as device:
            await device.publish(f"anc/telemetry/{OTHER}/anc", b"{}", qos=1)
    assert emulator.broker.stats()["connects_denied"] == 1


async def test_a_device_rotates_its_certificate_then_the_old_one_is_revoked(
    emulator: Emulator, tmp_path: Path
) -> None:
    old = emulator.certificate_of(DEVICE)
    with anyio.fail_after(TIMEOUT * 2):
        async with device_client(emulator.port, emulator.certs, DEVICE) as device:
            outcome, created = await request(device, CREATE_KEYS_AND_CERTIFICATE_TOPIC, {})
            assert outcome == "accepted", created
            outcome, registered = await request(
                device,
                register_thing_topic(TEMPLATE),
                {
                    "certificateOwnershipToken": created["certificateOwnershipToken"],
                    "parameters": {"SerialNumber": "device-001"},
                },
            )
            assert (outcome, registered["thingName"]) == ("accepted", DEVICE)
            pair = save_pair(
                tmp_path / "rotated", created["certificatePem"], created["privateKey"].encode()
            )
            # the new certificate works while the old connection is still up...
            assert emulator.certificate_of(DEVICE).certificate_id == created["certificateId"]
            await emulator.revoke_certificate(old.certificate_id)
            # ...and revoking the old one drops that connection
            with pytest.raises(aiomqtt.MqttError):
                await next_message(device)
        await shadow_update_accepted(emulator, pair, DEVICE)
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with device_client(emulator.port, emulator.certs, DEVICE):
                pass


async def test_replies_go_to_the_requesting_connection_only(emulator: Emulator) -> None:
    accepted = f"{CREATE_KEYS_AND_CERTIFICATE_TOPIC}/accepted"
    with anyio.fail_after(TIMEOUT):
        async with (
            claim_client(emulator, "factory-a") as first,
            claim_client(emulator, "factory-b") as second,
        ):
            await second.subscribe(accepted, qos=1)
            outcome, _created = await request(first, CREATE_KEYS_AND_CERTIFICATE_TOPIC, {})
            assert outcome == "accepted"
            # the second one's own request is answered to it; it never saw the first's reply
            await second.publish(CREATE_KEYS_AND_CERTIFICATE_TOPIC, b"{}", qos=1)
            message = await next_message(second)
            assert message.topic.value == accepted
            mine = orjson.loads(message.payload)["certificateId"]
    ids = [r.certificate_id for r in emulator.list_certificates()]
    assert ids[-1] == mine
    assert emulator.provisioning.stats() == {"accepted": 2, "rejected": 0}


async def test_an_ownership_token_expires_after_an_hour_and_templates_may_leave_it_inactive(
    tmp_path: Path,
) -> None:
    now = [1_800_000_000.0]
    inactive = ProvisioningTemplate(
        "staged",
        thing_name="anc-{SerialNumber}",
        parameters={"SerialNumber": None},
        certificate_status=CertificateStatus.INACTIVE,
    )
    started = await start_in_task(
        Emulator(tmp_path / "certs", [DEVICE], clock=lambda: now[0], templates=[inactive])
    )
    emulator = started.part
    try:
        with anyio.fail_after(TIMEOUT * 2):
            async with claim_client(emulator) as claim:
                _outcome, late = await request(claim, CREATE_KEYS_AND_CERTIFICATE_TOPIC, {})
                now[0] += 3601
                register = register_thing_topic("staged")
                outcome, body = await request(
                    claim,
                    register,
                    {
                        "certificateOwnershipToken": late["certificateOwnershipToken"],
                        "parameters": {"SerialNumber": "SN-9"},
                    },
                )
                assert (outcome, body["errorCode"]) == (
                    "rejected",
                    "InvalidCertificateOwnershipToken",
                )
                _outcome, created = await request(claim, CREATE_KEYS_AND_CERTIFICATE_TOPIC, {})
                outcome, body = await request(
                    claim,
                    register,
                    {
                        "certificateOwnershipToken": created["certificateOwnershipToken"],
                        "parameters": {"SerialNumber": "SN-9"},
                    },
                )
                assert outcome == "accepted", body
            record = emulator.certificates.require(created["certificateId"])
            assert record.status is CertificateStatus.INACTIVE
            pair = save_pair(
                tmp_path / "staged", created["certificatePem"], created["privateKey"].encode()
            )
            with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
                async with mqtt_client(emulator.port, emulator.certs, pair, "anc-SN-9"):
                    pass
            await emulator.activate_certificate(created["certificateId"])
            await shadow_update_accepted(emulator, pair, "anc-SN-9")
    finally:
        await started.stop()
