"""``ancsync jobs create|list|describe|cancel`` as a user runs them: subprocesses against the
emulator running in the test's event loop; and the same operator calls against AWS's control
plane, served by moto (boto3's ``iot`` client, nothing mocked inside ancsync)."""

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

from ancsync.emulator.server import Emulator
from ancsync.errors import JobRejected
from ancsync.tools.jobs_operator import AwsJobsOperator

pytestmark = pytest.mark.slow

ANCSYNC = str(Path(sys.executable).with_name("ancsync"))
THING = "anc-device-001"
TIMEOUT = 30


async def jobs(emulator: Emulator, *args: str) -> subprocess.CompletedProcess[bytes]:
    connection = ["--certs-dir", str(emulator.certs.root), "--port", str(emulator.port)]
    with anyio.fail_after(TIMEOUT):
        return await anyio.run_process(
            [ANCSYNC, "jobs", *args, *connection], check=False, env=dict(os.environ)
        )


def json_of(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.returncode == 0, result.stderr.decode()
    return orjson.loads(result.stdout.decode().strip().splitlines()[-1])


async def test_create_list_describe_cancel(emulator: Emulator, tmp_path: Path) -> None:
    document = tmp_path / "job.json"
    document.write_text('{"operation": "update_noise_model", "model": "office-v2"}')
    created = json_of(
        await jobs(
            emulator, "create", "nm-1", "--thing", THING, "--document-file", str(document), "--json"
        )
    )
    assert created["executions"][THING]["status"] == "QUEUED"
    assert emulator.jobs.describe_job("nm-1")["document"]["model"] == "office-v2"

    assert json_of(await jobs(emulator, "list", "--json"))["jobId"] == "nm-1"
    described = await jobs(emulator, "describe", "nm-1")
    assert described.stdout.decode().splitlines()[0] == "nm-1: IN_PROGRESS"

    canceled = json_of(await jobs(emulator, "cancel", "nm-1", "--json"))
    assert canceled["status"] == "CANCELED"
    assert canceled["executions"][THING]["status"] == "CANCELED"


async def test_bad_requests_say_what_is_wrong(emulator: Emulator) -> None:
    unknown = await jobs(emulator, "describe", "nope")
    assert unknown.returncode == 1
    assert "there is no job 'nope'" in unknown.stderr.decode()
    no_document = await jobs(emulator, "create", "nm-2", "--thing", THING)
    assert no_document.returncode == 2
    assert "--document or --document-file" in no_document.stderr.decode()
    bad_id = await jobs(emulator, "create", "bad id", "--thing", THING, "--document", "{}")
    assert bad_id.returncode == 1
    assert "job id 'bad id' is not allowed" in bad_id.stderr.decode()


@pytest.fixture
def aws_iot(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        client = boto3.client("iot", region_name="eu-west-1")
        client.create_thing(thingName=THING)
        yield client


async def test_the_aws_operator_drives_aws_iot_jobs(aws_iot: Any) -> None:
    operator = AwsJobsOperator(aws_iot)
    created = await operator.create("nm-1", [THING], {"operation": "reboot"}, 30)
    assert created["jobId"] == "nm-1"
    assert created["targets"][0].endswith(f":thing/{THING}")
    assert [job["jobId"] for job in await operator.list()] == ["nm-1"]
    canceled = await operator.cancel("nm-1", force=True)
    assert canceled["status"] == "CANCELED"
    with pytest.raises(JobRejected, match="ResourceNotFound"):
        await operator.describe("nope")
