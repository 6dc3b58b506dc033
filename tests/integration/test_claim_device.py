"""A device that leaves the factory with only the claim certificate, against the emulator over TLS.

It provisions itself (provision_by_claim), starts from the identity it wrote, and reaches full
operation: shadow, telemetry and an emergency in the cloud. Then the operator revokes its
certificate: the connection drops and the reconnect is refused as revoked. And a rotation
gives the running device a new certificate without losing what it had queued.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from device import cloud, until
from helpers import HOST

from ancsync import DataSyncOrchestrator, DeviceIdentity, provision_by_claim, rotate_certificate
from ancsync.emulator.certificates import CertificateStatus
from ancsync.emulator.provisioning_templates import ProvisioningTemplate
from ancsync.emulator.server import Emulator
from ancsync.errors import NotAuthorized, ProvisionError, ProvisioningRejected
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.provisioning.keys import certificate_id

TEMPLATE = "anc-fleet"  # the emulator's default: thing name anc-{SerialNumber}
TIMEOUT = 20
FAST = BackoffPolicy(base=0.02, cap=0.2)


async def provision(emulator: Emulator, directory: Path, serial: str = "SN0001") -> DeviceIdentity:
    claim = emulator.certs.claim
    assert claim is not None
    return await provision_by_claim(
        directory,
        endpoint=HOST,
        port=emulator.port,
        claim_cert=claim.cert,
        claim_key=claim.key,
        root_ca=emulator.certs.ca,
        template=TEMPLATE,
        parameters={"SerialNumber": serial},
        connection_options={"reconnect": FAST},
    )


def anc(n: int) -> dict[str, float]:
    return {"latency_ms": n, "cancellation_db": 40.0, "snr_improvement_db": 9.0}


def device(identity: DeviceIdentity, tmp_path: Path, **options: Any) -> DataSyncOrchestrator:
    """The orchestrator as a device starts it: from the files provisioning wrote."""
    return DataSyncOrchestrator.from_config_file(
        identity.config_path,
        data_dir=tmp_path / "device-data",
        batch_size=2,
        batch_interval=0.1,
        connection_options={"reconnect": FAST},
        **options,
    )


async def test_a_device_with_only_a_claim_certificate_reaches_full_operation(
    emulator: Emulator, tmp_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT):
        identity = await provision(emulator, tmp_path / "identity")
        assert identity.thing_name == "anc-SN0001"
        record = emulator.certificate_of(identity.thing_name)
        assert record.certificate_id == identity.certificate_id
        assert record.status is CertificateStatus.ACTIVE
        orchestrator = device(identity, tmp_path)
        orchestrator.on_desired_state(lambda changes: changes)  # the device applies it all
        async with orchestrator, cloud(emulator, identity.thing_name) as operator:
            await orchestrator.wait_connected(TIMEOUT)
            await orchestrator.update_anc_state(enabled=True, intensity=0.7, wait=True)
            await operator.update_desired({"anc_intensity": 0.4})
            await until(
                operator.watch(),
                lambda doc: doc.reported.get("anc_intensity") == 0.4,  # applied and reported
            )
            for n in range(4):
                orchestrator.publish_metrics(
                    anc_metrics={
                        "latency_ms": 30 + n,
                        "cancellation_db": 40.0,
                        "snr_improvement_db": 9,
                    }
                )
            event = await orchestrator.report_emergency(
                is_emergency=True, predicted_class="siren", confidence=0.9, action="anc_bypassed"
            )
            await emulator.rules.wait_for(
                lambda sink: (
                    sink.record_count(identity.thing_name, "anc") == 4
                    and len(sink.emergencies(identity.thing_name)) == 1
                )
            )
    [stored] = emulator.rules.emergencies(identity.thing_name)
    assert stored.event_id == event.event_id


async def test_a_revoked_device_is_dropped_and_refused_as_revoked(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with anyio.fail_after(TIMEOUT):
        identity = await provision(emulator, tmp_path / "identity")
        async with device(identity, tmp_path) as orchestrator:
            await orchestrator.wait_connected(TIMEOUT)
            with orchestrator.connection.events() as events:
                await emulator.revoke_certificate(identity.certificate_id)
                async for event in events:
                    if event.kind == "disconnected":
                        break  # dropped at once
            with pytest.raises(NotAuthorized, match="revoked") as refused:
                await orchestrator.wait_connected(TIMEOUT)  # the reconnect is refused
            assert not orchestrator.connection.connected
    assert "not authorized" in str(refused.value).lower()
    assert emulator.certificate_of(identity.thing_name).status is CertificateStatus.REVOKED
    assert any("revoked" in record.getMessage() for record in caplog.records)  # the emulator's


async def test_a_rotation_on_the_emulator_keeps_the_device_running_with_a_new_certificate(
    emulator: Emulator, tmp_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT):
        identity = await provision(emulator, tmp_path / "identity")
        old_id = identity.certificate_id
        async with device(identity, tmp_path) as orchestrator:
            await orchestrator.wait_connected(TIMEOUT)
            for n in range(6):
                orchestrator.publish_metrics(anc_metrics=anc(n))
            new_id = await rotate_certificate(
                orchestrator.connection,
                template=TEMPLATE,
                parameters={"SerialNumber": "SN0001"},
            )
            await emulator.revoke_certificate(old_id)  # what the operator does next
            for n in range(6, 10):
                orchestrator.publish_metrics(anc_metrics=anc(n))
            await emulator.rules.wait_for(
                lambda sink: sink.record_count(identity.thing_name, "anc") == 10
            )
            assert orchestrator.connection.connected
    assert new_id != old_id
    assert certificate_id(identity.cert_path.read_bytes()) == new_id
    assert emulator.certificate_of(identity.thing_name).certificate_id == new_id
    assert emulator.rules.gaps(identity.thing_name) == []


async def test_a_template_parameter_missing_is_rejected_with_the_aws_code(
    emulator: Emulator, tmp_path: Path
) -> None:
    claim = emulator.certs.claim
    assert claim is not None
    with anyio.fail_after(TIMEOUT), pytest.raises(ProvisioningRejected) as refused:
        await provision_by_claim(
            tmp_path / "identity",
            endpoint=HOST,
            port=emulator.port,
            claim_cert=claim.cert,
            claim_key=claim.key,
            root_ca=emulator.certs.ca,
            template=TEMPLATE,
            parameters={},
        )
    assert (refused.value.step, refused.value.status_code) == ("RegisterThing", 400)
    assert refused.value.error_code == "InvalidParameters"
    assert DeviceIdentity.find(tmp_path / "identity") is None


async def test_a_rotate_certificate_job_rotates_the_running_device(
    emulator: Emulator, tmp_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT):
        identity = await provision(emulator, tmp_path / "identity")
        orchestrator = device(identity, tmp_path)
        rotator = orchestrator.enable_rotation(TEMPLATE, {"SerialNumber": "SN0001"})
        async with orchestrator, cloud(emulator, identity.thing_name) as operator:
            await orchestrator.wait_connected(TIMEOUT)
            with operator.watch() as documents:
                await emulator.jobs.create_job(
                    "rotate-1", [identity.thing_name], {"operation": "rotate_certificate"}
                )
                reported = await until(documents, lambda doc: "certificate_id" in doc.reported)
            while emulator.jobs.describe_job("rotate-1")["status"] != "COMPLETED":
                await emulator.jobs.wait_published()
    new_id = certificate_id(identity.cert_path.read_bytes())
    assert new_id != identity.certificate_id
    assert reported.reported["certificate_id"] == new_id
    assert rotator.rotations == 1
    assert orchestrator.get_status()["components"]["rotation"]["last_error"] is None


async def test_a_certificate_near_its_expiry_is_rotated_when_the_device_starts(
    emulator: Emulator, tmp_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT):
        identity = await provision(emulator, tmp_path / "identity")
        orchestrator = device(identity, tmp_path)
        # Any certificate the emulator issues expires within 10,000 days: the rotation is due.
        orchestrator.enable_rotation(
            TEMPLATE, {"SerialNumber": "SN0001"}, before_expiry=timedelta(days=10_000)
        )
        async with orchestrator, cloud(emulator, identity.thing_name) as operator:
            await orchestrator.wait_connected(TIMEOUT)
            with operator.watch() as documents:
                await until(documents, lambda doc: "certificate_id" in doc.reported)
    assert certificate_id(identity.cert_path.read_bytes()) != identity.certificate_id


async def test_a_new_certificate_the_broker_refuses_leaves_the_device_on_the_old_one(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A template that leaves the new certificate INACTIVE: the broker refuses it, and the
    device goes back to its old pair with nothing lost."""
    emulator.provisioning.register_template(
        ProvisioningTemplate(
            "inactive-rotation",
            thing_name="anc-{SerialNumber}",
            parameters={"SerialNumber": None},
            certificate_status=CertificateStatus.INACTIVE,
        )
    )
    with anyio.fail_after(TIMEOUT):
        identity = await provision(emulator, tmp_path / "identity")
        old_pem = identity.cert_path.read_bytes()
        async with device(identity, tmp_path) as orchestrator:
            await orchestrator.wait_connected(TIMEOUT)
            with pytest.raises(ProvisionError, match="went back to its old certificate"):
                await rotate_certificate(
                    orchestrator.connection,
                    template="inactive-rotation",
                    parameters={"SerialNumber": "SN0001"},
                    connect_timeout=5,
                )
            await orchestrator.wait_connected(TIMEOUT)  # on the old certificate again
            event = await orchestrator.report_emergency(
                is_emergency=True, predicted_class="siren", confidence=0.9, action="anc_bypassed"
            )
            await emulator.rules.wait_for(
                lambda sink: (
                    event.event_id in {e.event_id for e in sink.emergencies(identity.thing_name)}
                )
            )
    assert identity.cert_path.read_bytes() == old_pem
    assert not list(identity.directory.glob("*.old"))
