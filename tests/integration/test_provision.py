"""`ancsync provision` against a real moto_server process on 127.0.0.1 (fake credentials)."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import Result
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from ancsync.cli import app
from ancsync.config import Settings

pytestmark = pytest.mark.slow

REGION = "eu-west-1"
THING = "anc-device-001"
POLICY = "anc-test-device"
REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "src" / "ancsync" / "emulator" / "device_policy.json.tpl"


@pytest.fixture
def iot(moto_url: str, aws_env: None) -> Any:
    """A boto3 IoT client on a freshly reset moto_server, holding the device policy."""
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10
    ).close()
    client = boto3.client("iot", region_name=REGION, endpoint_url=moto_url)
    document = (
        TEMPLATE.read_text()
        .replace("${region}", REGION)
        .replace("${account_id}", "123456789012")
        .replace("$${", "${")
    )
    client.create_policy(policyName=POLICY, policyDocument=document)
    return client


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, ["provision", *args])
    # Known failures end in a message and exit 1, never in a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def error_of(result: Result, code: int = 1) -> str:
    """The error message, unwrapped (rich wraps it at the 80 columns CliRunner reports).

    ``code``: 1 for a failure, 2 for a usage error (an argument to fix).
    """
    assert result.exit_code == code, result.output
    [message] = re.findall(r"error: (.*)", result.output, re.S)
    return " ".join(message.split())


def provision(moto_url: str, out: Path, *extra: str, policy: str = POLICY) -> Result:
    return run(
        "--thing", THING, "--policy", policy, "--out", str(out),
        "--region", REGION, "--endpoint-url", moto_url, *extra,
    )  # fmt: skip


def settings_lines(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(IOT_[A-Z_]+)=(.*)$", output, re.M))


def test_provision_creates_thing_certificate_and_files(
    moto_url: str, iot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "device"
    result = provision(moto_url, out)
    assert result.exit_code == 0, result.output

    # AWS side: thing, active certificate, attached to the thing and the policy.
    iot.describe_thing(thingName=THING)
    [cert] = iot.list_certificates()["certificates"]
    assert cert["status"] == "ACTIVE"
    assert iot.list_thing_principals(thingName=THING)["principals"] == [cert["certificateArn"]]
    attached = iot.list_attached_policies(target=cert["certificateArn"])["policies"]
    assert [p["policyName"] for p in attached] == [POLICY]

    # Device side: the key is private, and it is the key of that certificate.
    key_path, cert_path = out / "private.key", out / "cert.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    assert certificate.public_key().public_bytes(*public) == key.public_key().public_bytes(*public)
    assert cert["certificateId"] in result.output

    # The printed settings and the written config file are what the SDK loads.
    # moto makes up a new ATS endpoint on every call (AWS's is stable): check its form.
    printed = settings_lines(result.output)
    endpoint = printed["IOT_ENDPOINT"]
    assert re.fullmatch(rf"[a-z0-9]+-ats\.iot\.{REGION}\.amazonaws\.com", endpoint)
    assert printed["IOT_THING_NAME"] == THING
    for name, value in printed.items():
        monkeypatch.setenv(name, value)
    from_env = Settings.load()
    assert from_env.iot.cert_path == cert_path
    assert from_env.iot.key_path == key_path
    for name in printed:
        monkeypatch.delenv(name)
    from_file = Settings.load(config_file=out / "ancsync.json")
    assert from_file.iot.endpoint == endpoint
    assert from_file.iot.key_path == key_path
    assert "amazontrust.com" in result.output  # where the root CA comes from, if needed


def test_second_run_reuses_thing_and_certificate(moto_url: str, iot: Any, tmp_path: Path) -> None:
    out = tmp_path / "device"
    first = provision(moto_url, out)
    assert first.exit_code == 0, first.output
    key_before = (out / "private.key").read_bytes()

    second = provision(moto_url, out)
    assert second.exit_code == 0, second.output
    assert "reusing" in second.output
    assert len(iot.list_certificates()["certificates"]) == 1
    assert (out / "private.key").read_bytes() == key_before
    first_settings, second_settings = settings_lines(first.output), settings_lines(second.output)
    del first_settings["IOT_ENDPOINT"], second_settings["IOT_ENDPOINT"]  # moto: random per call
    assert second_settings == first_settings


def test_a_second_device_gets_its_own_certificate(moto_url: str, iot: Any, tmp_path: Path) -> None:
    assert provision(moto_url, tmp_path / "one").exit_code == 0
    result = run(
        "--thing", "anc-device-002", "--policy", POLICY, "--out", str(tmp_path / "two"),
        "--region", REGION, "--endpoint-url", moto_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    assert len(iot.list_certificates()["certificates"]) == 2
    assert (tmp_path / "one" / "cert.pem").read_text() != (
        tmp_path / "two" / "cert.pem"
    ).read_text()


def test_missing_policy_is_a_clear_error_and_creates_nothing(
    moto_url: str, iot: Any, tmp_path: Path
) -> None:
    result = provision(moto_url, tmp_path / "device", policy="no-such-policy")
    assert "'no-such-policy' does not exist" in error_of(result)
    assert "terraform apply" in error_of(result)
    assert iot.list_certificates()["certificates"] == []
    assert not (tmp_path / "device" / "private.key").exists()


def test_no_credentials_is_a_clear_error(
    moto_url: str, aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = provision(moto_url, tmp_path / "device")
    assert "no AWS credentials found" in error_of(result)
    assert "AWS_ACCESS_KEY_ID" in error_of(result)


def test_unreachable_endpoint_is_a_clear_error(aws_env: None, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    result = provision(f"http://127.0.0.1:{closed}", tmp_path / "device")
    assert f"cannot reach http://127.0.0.1:{closed}" in error_of(result)


def test_no_region_is_a_clear_error(aws_env: None, tmp_path: Path) -> None:
    result = run("--thing", THING, "--policy", POLICY, "--out", str(tmp_path))
    assert "no AWS region" in error_of(result)
    assert "--region" in error_of(result)


def test_invalid_thing_name_is_refused(aws_env: None, tmp_path: Path) -> None:
    result = run(
        "--thing", "bad/name", "--policy", POLICY, "--out", str(tmp_path), "--region", REGION
    )
    assert "thing name 'bad/name' is not allowed" in error_of(result, code=2)


def test_foreign_files_in_out_are_not_overwritten(moto_url: str, iot: Any, tmp_path: Path) -> None:
    out = tmp_path / "device"
    out.mkdir()
    (out / "cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot ours\n-----END CERTIFICATE-----\n"
    )
    (out / "private.key").write_text("someone's key")
    result = provision(moto_url, out)
    assert "is not a certificate of the thing" in error_of(result)
    assert (out / "private.key").read_text() == "someone's key"
    assert iot.list_certificates()["certificates"] == []
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName=THING)  # nothing is created before the check


def test_half_of_a_certificate_in_out_is_an_error(moto_url: str, iot: Any, tmp_path: Path) -> None:
    (tmp_path / "private.key").write_text("a key without its certificate")
    result = provision(moto_url, tmp_path)
    assert "cert.pem does not" in error_of(result)


def test_a_failed_write_revokes_the_new_certificate(
    moto_url: str, iot: Any, tmp_path: Path
) -> None:
    out = tmp_path / "device"
    out.mkdir()
    # The key cannot be written where it must go: its temporary file's name is taken (the
    # command runs in this process, so with this pid).
    (out / f".private.key.{os.getpid()}.tmp").mkdir()
    result = provision(moto_url, out)
    assert "cannot write the key and certificate" in error_of(result)
    # No active certificate is left whose private key nobody has.
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_thing_principals(thingName=THING)["principals"] == []
    assert not (out / "cert.pem").exists()


def test_printed_settings_name_every_file_written(moto_url: str, iot: Any, tmp_path: Path) -> None:
    result = provision(moto_url, tmp_path / "device")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "device" / "ancsync.json").read_text())
    assert config["iot"]["thing_name"] == THING
    printed = settings_lines(result.output)
    assert Path(printed["IOT_CERT_PATH"]).is_file()
    assert Path(printed["IOT_KEY_PATH"]).is_file()
