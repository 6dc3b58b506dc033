"""Interop: AWS's own ``awsiot.iotidentity`` clients provision a device on the emulator.

The client (awsiotsdk over awscrt, MQTT 3.1.1 over TLS) is used as AWS's fleet provisioning
sample uses it: connect with the claim certificate, subscribe to the accepted and rejected
replies, CreateKeysAndCertificate, RegisterThing with the ownership token; then the device
connects with its new certificate and updates its shadow. Its callbacks run on awscrt's threads
and hand what they receive to the test through ``awsiot_device.Events``.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from awscrt import mqtt, mqtt_request_response
from awsiot import iotidentity, iotshadow
from awsiot_device import TIMEOUT, Events, awsiot_connection, wait
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ancsync.emulator.certificates import CertificateStatus
from ancsync.emulator.certs import CertPair
from ancsync.emulator.server import Emulator

TEMPLATE = "anc-fleet"


async def test_aws_iot_identity_client_provisions_a_device(
    emulator: Emulator, tmp_path: Path
) -> None:
    assert emulator.certs.claim is not None
    claim = awsiot_connection(emulator, "factory-7", clean_session=True, pair=emulator.certs.claim)
    events = Events()
    qos = mqtt.QoS.AT_LEAST_ONCE
    with anyio.fail_after(TIMEOUT * 4):
        await wait(claim.connect())
        try:
            identity = iotidentity.IotIdentityClient(claim)
            keys_request = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
            register_request = iotidentity.RegisterThingSubscriptionRequest(template_name=TEMPLATE)
            subscriptions = [
                identity.subscribe_to_create_keys_and_certificate_accepted(
                    keys_request, qos, events.on("created")
                ),
                identity.subscribe_to_create_keys_and_certificate_rejected(
                    keys_request, qos, events.on("create-rejected")
                ),
                identity.subscribe_to_register_thing_accepted(
                    register_request, qos, events.on("registered")
                ),
                identity.subscribe_to_register_thing_rejected(
                    register_request, qos, events.on("register-rejected")
                ),
            ]
            for future, _topic in subscriptions:
                await wait(future)

            await wait(
                identity.publish_create_keys_and_certificate(
                    iotidentity.CreateKeysAndCertificateRequest(), qos
                )
            )
            kind, created = await events.next()
            assert kind == "created", created
            assert len(created.certificate_id) == 64

            bad = iotidentity.RegisterThingRequest(
                template_name=TEMPLATE,
                certificate_ownership_token="forged",
                parameters={"SerialNumber": "SN-7"},
            )
            await wait(identity.publish_register_thing(bad, qos))
            rejected = await events.received("register-rejected")
            assert (rejected.status_code, rejected.error_code) == (
                400,
                "InvalidCertificateOwnershipToken",
            )

            register = iotidentity.RegisterThingRequest(
                template_name=TEMPLATE,
                certificate_ownership_token=created.certificate_ownership_token,
                parameters={"SerialNumber": "SN-7"},
            )
            await wait(identity.publish_register_thing(register, qos))
            registered = await events.received("registered")
            assert registered.thing_name == "anc-SN-7"
            assert registered.device_configuration == {"Model": "anc-1"}
        finally:
            await wait(claim.disconnect())

        record = emulator.certificates.require(created.certificate_id)
        assert (record.status, record.thing_name) == (CertificateStatus.ACTIVE, "anc-SN-7")
        pair = CertPair(tmp_path / "cert.pem", tmp_path / "private.key")
        pair.cert.write_text(created.certificate_pem)
        pair.key.write_text(created.private_key)

        device = awsiot_connection(emulator, "anc-SN-7", clean_session=True, pair=pair)
        await wait(device.connect())
        try:
            shadow = iotshadow.IotShadowClient(device)
            future, _topic = shadow.subscribe_to_update_shadow_accepted(
                iotshadow.UpdateShadowSubscriptionRequest(thing_name="anc-SN-7"),
                qos,
                events.on("shadow-updated"),
            )
            await wait(future)
            await wait(
                shadow.publish_update_shadow(
                    iotshadow.UpdateShadowRequest(
                        thing_name="anc-SN-7",
                        state=iotshadow.ShadowState(reported={"mode": "adaptive"}),
                    ),
                    qos,
                )
            )
            updated = await events.received("shadow-updated")
            assert updated.state.reported == {"mode": "adaptive"}
        finally:
            await wait(device.disconnect())


async def test_aws_iot_identity_client_v2_provisions_a_device_from_a_csr(
    emulator: Emulator,
) -> None:
    """The request-response client (``IotIdentityClientV2``), as AWS's current samples use it."""
    assert emulator.certs.claim is not None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anc-SN-8")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    claim = awsiot_connection(emulator, "factory-8", clean_session=True, pair=emulator.certs.claim)
    with anyio.fail_after(TIMEOUT * 4):
        await wait(claim.connect())
        try:
            identity = iotidentity.IotIdentityClientV2(
                claim,
                mqtt_request_response.ClientOptions(
                    max_request_response_subscriptions=2,
                    max_streaming_subscriptions=0,
                    operation_timeout_in_seconds=TIMEOUT,
                ),
            )
            csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
            created = await wait(
                identity.create_certificate_from_csr(
                    iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr_pem)
                )
            )
            registered = await wait(
                identity.register_thing(
                    iotidentity.RegisterThingRequest(
                        template_name=TEMPLATE,
                        certificate_ownership_token=created.certificate_ownership_token,
                        parameters={"SerialNumber": "SN-8"},
                    )
                )
            )
        finally:
            await wait(claim.disconnect())
    assert registered.thing_name == "anc-SN-8"
    record = emulator.certificates.require(created.certificate_id)
    assert (record.status, record.thing_name) == (CertificateStatus.ACTIVE, "anc-SN-8")
