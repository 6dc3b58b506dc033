"""``ancsync certs list|describe|revoke|deactivate|activate|rotate`` as a user runs them:
subprocesses against the emulator running in the test's event loop; and the same operator calls
against AWS's control plane, served by moto (boto3's ``iot`` client, nothing mocked inside
ancsync)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import boto3
import moto
import orjson
import pytest

from ancsync import DataSyncOrchestrator, provision_by_claim
from ancsync.config import Settings
from ancsync.connection import IoTConnection
from ancsync.emulator.server import Emulator
from ancsync.errors import CertificateRejected, NotAuthorized
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.tools.certs_operator import AwsCertificatesOperator

pytestmark = pytest.mark.slow

ANCSYNC = str(Path(sys.executable).with_name("ancsync"))
THING = "anc-device-001"
OTHER = "anc-device-002"
TIMEOUT = 30


async def certs(emulator: Emulator, *args: str) -> subprocess.CompletedProcess[bytes]:
    connection = ["--certs-dir", str(emulator.certs.root), "--port", str(emulator.port)]
    with anyio.fail_after(TIMEOUT):
        return await anyio.run_process(
            [ANCSYNC, "certs", *args, *connection], check=False, env=dict(os.environ)
        )


def json_lines(result: subprocess.CompletedProcess[bytes]) -> list[Any]:
    assert result.returncode == 0, result.stderr.decode()
    return [orjson.loads(line) for line in result.stdout.decode().splitlines()]


def by_thing(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    return {c["thingName"]: c for c in json_lines(result) if c["thingName"]}


async def connects(emulator: Emulator, thing: str) -> None:
    values = emulator.device_settings(thing).items()
    settings = Settings.load(**{k.lower().removeprefix("iot_"): v for k, v in values})
    async with IoTConnection(settings=settings, announce_status=False) as connection:
        await connection.wait_connected(TIMEOUT)


async def test_list_revoke_and_the_device_is_refused(emulator: Emulator) -> None:
    listed = by_thing(await certs(emulator, "list", "--json"))
    assert {thing: c["status"] for thing, c in listed.items()} == {
        THING: "ACTIVE",
        OTHER: "ACTIVE",
    }
    mine = listed[THING]["certificateId"]
    text = (await certs(emulator, "list", "--thing", THING)).stdout.decode()
    assert text.split() == [mine, "ACTIVE", THING]

    revoked = await certs(emulator, "revoke", mine)
    assert revoked.stdout.decode().strip() == f"{mine}: REVOKED", revoked.stderr.decode()
    assert by_thing(await certs(emulator, "list", "--json"))[THING]["status"] == "REVOKED"
    with anyio.fail_after(TIMEOUT), pytest.raises(NotAuthorized, match="revoked"):
        await connects(emulator, THING)

    [described] = json_lines(await certs(emulator, "describe", mine, "--json"))
    assert described["status"] == "REVOKED"
    assert described["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    again = await certs(emulator, "activate", mine)
    assert again.returncode == 1
    assert "CertificateStateException" in again.stderr.decode()
    assert "revoked, which is final" in again.stderr.decode()


async def test_deactivate_then_activate(emulator: Emulator) -> None:
    other = emulator.certificate_of(OTHER).certificate_id
    [inactive] = json_lines(await certs(emulator, "deactivate", other, "--json"))
    assert inactive["status"] == "INACTIVE"
    with anyio.fail_after(TIMEOUT), pytest.raises(NotAuthorized, match="inactive"):
        await connects(emulator, OTHER)
    [active] = json_lines(await certs(emulator, "activate", other, "--json"))
    assert active["status"] == "ACTIVE"
    with anyio.fail_after(TIMEOUT):
        await connects(emulator, OTHER)


async def test_rotate_creates_the_rotation_job(emulator: Emulator) -> None:
    rotated = await certs(emulator, "rotate", "--thing", THING)
    assert rotated.returncode == 0, rotated.stderr.decode()
    job_id = rotated.stdout.decode().strip()
    assert job_id.startswith(f"rotate-{THING}-")
    job = emulator.jobs.describe_job(job_id)
    assert job["document"] == {"operation": "rotate_certificate"}
    assert job["executions"][THING]["status"] == "QUEUED"


async def test_a_device_rotates_itself_on_the_job(emulator: Emulator, tmp_path: Path) -> None:
    claim = emulator.certs.claim
    assert claim is not None
    fast = BackoffPolicy(base=0.02, cap=0.2)
    with anyio.fail_after(TIMEOUT):
        identity = await provision_by_claim(
            tmp_path / "identity",
            endpoint="127.0.0.1",
            port=emulator.port,
            claim_cert=claim.cert,
            claim_key=claim.key,
            root_ca=emulator.certs.ca,
            template="anc-fleet",
            parameters={"SerialNumber": "SN0001"},
            connection_options={"reconnect": fast},
        )
        thing, old_id = identity.thing_name, identity.certificate_id
        orchestrator = DataSyncOrchestrator.from_config_file(
            identity.config_path,
            data_dir=tmp_path / "device-data",
            connection_options={"reconnect": fast},
        )
        orchestrator.enable_rotation("anc-fleet", {"SerialNumber": "SN0001"})
        async with orchestrator:
            await orchestrator.wait_connected(TIMEOUT)
            rotated = await certs(emulator, "rotate", "--thing", thing)
            job_id = rotated.stdout.decode().strip()
            assert rotated.returncode == 0, rotated.stderr.decode()
            await emulator.jobs.wait_for_status(job_id, thing, "SUCCEEDED", "FAILED")
    assert emulator.jobs.store.execution(job_id, thing).status == "SUCCEEDED"
    listed = json_lines(await certs(emulator, "list", "--thing", thing, "--json"))
    new = [c for c in listed if c["certificateId"] != old_id]
    assert [c["status"] for c in new] == ["ACTIVE"]
    assert emulator.certificate_of(thing).certificate_id == new[0]["certificateId"]


async def test_bad_requests_say_what_is_wrong(emulator: Emulator) -> None:
    unknown = await certs(emulator, "describe", "0" * 64)
    assert unknown.returncode == 1
    assert "ResourceNotFoundException: there is no certificate" in unknown.stderr.decode()
    not_an_id = await certs(emulator, "revoke", "nope")
    assert not_an_id.returncode == 2
    assert "'nope' is not a certificate id" in not_an_id.stderr.decode()
    with anyio.fail_after(TIMEOUT):
        misplaced = await anyio.run_process(
            [ANCSYNC, "certs", "--certs-dir", str(emulator.certs.root), "list"], check=False
        )
    assert misplaced.returncode == 2
    assert "put the options after the command" in misplaced.stderr.decode()


async def test_create_is_the_form_without_a_command(tmp_path: Path) -> None:
    command = [ANCSYNC, "certs", "create", "--certs-dir", str(tmp_path), "--thing", "a-1"]
    with anyio.fail_after(TIMEOUT):
        result = await anyio.run_process([*command, "--json"], check=False)
    [printed] = json_lines(result)
    assert set(printed["devices"]) == {"a-1"}
    assert (tmp_path / "a-1" / "cert.pem").is_file()


@pytest.fixture
def aws_iot(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        client = boto3.client("iot", region_name="eu-west-1")
        client.create_thing(thingName=THING)
        yield client


async def test_the_aws_operator_drives_aws_iot_certificates(aws_iot: Any) -> None:
    created = aws_iot.create_keys_and_certificate(setAsActive=True)
    aws_iot.attach_thing_principal(thingName=THING, principal=created["certificateArn"])
    aws_iot.create_keys_and_certificate(setAsActive=False)  # attached to no thing
    operator = AwsCertificatesOperator(aws_iot)
    cert_id = created["certificateId"]

    listed = {c["certificateId"]: c for c in await operator.list()}
    assert len(listed) == 2
    assert listed[cert_id]["thingName"] == THING
    assert listed[cert_id]["status"] == "ACTIVE"
    assert isinstance(listed[cert_id]["creationDate"], str)
    assert [c["certificateId"] for c in await operator.list(THING)] == [cert_id]

    described = await operator.describe(cert_id)
    assert described["certificatePem"] == created["certificatePem"]
    assert described["certificateArn"] == created["certificateArn"]

    assert (await operator.update(cert_id, "REVOKED"))["status"] == "REVOKED"
    assert (await operator.describe(cert_id))["status"] == "REVOKED"
    with pytest.raises(CertificateRejected, match="ResourceNotFound"):
        await operator.describe("0" * 64)


async def test_the_commands_drive_aws_with_aws(moto_url: str, aws_env: None) -> None:
    client = boto3.client("iot", region_name="eu-west-1", endpoint_url=moto_url)
    client.create_thing(thingName=THING)
    created = client.create_keys_and_certificate(setAsActive=True)
    client.attach_thing_principal(thingName=THING, principal=created["certificateArn"])
    cert_id = created["certificateId"]
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_url}

    async def aws(*args: str) -> subprocess.CompletedProcess[bytes]:
        with anyio.fail_after(TIMEOUT):
            command = [ANCSYNC, "certs", *args, "--aws", "--region", "eu-west-1", "--json"]
            return await anyio.run_process(command, check=False, env=env)

    [listed] = json_lines(await aws("list", "--thing", THING))
    assert (listed["certificateId"], listed["status"]) == (cert_id, "ACTIVE")
    [described] = json_lines(await aws("describe", cert_id))
    assert described["certificateArn"] == created["certificateArn"]
    assert described["thingName"] == THING
    [revoked] = json_lines(await aws("revoke", cert_id))
    assert revoked["status"] == "REVOKED"
    status = client.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"]
    assert status == "REVOKED"
    unknown = await aws("describe", "0" * 64)
    assert unknown.returncode == 1
    assert "ResourceNotFound" in unknown.stderr.decode()


async def test_no_aws_credentials_or_region_is_a_usage_error(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with anyio.fail_after(TIMEOUT):
        command = [ANCSYNC, "certs", "list", "--aws"]
        no_credentials = await anyio.run_process([*command, "--region", "eu-west-1"], check=False)
        no_region = await anyio.run_process(command, check=False)
    assert no_credentials.returncode == 2
    assert "error: no AWS credentials found" in no_credentials.stderr.decode()
    assert no_region.returncode == 2
    assert "error: no AWS region given: pass --region" in no_region.stderr.decode()
