"""Provision one real device in AWS IoT Core: thing, certificate, policy and the device's files.

``ancsync provision`` calls :func:`provision`. It needs boto3, from the ``aws``
extra (``pip install -e '.[aws]'`` in a checkout) or ``pip install boto3``, and AWS credentials
with IoT permissions.

It is idempotent. The thing is created or reused. A new key pair and active certificate are made
only when ``out_dir`` holds none; when it already holds ``cert.pem`` and ``private.key`` of an
active certificate of the thing, that certificate is reused (and the policy attached again, which
AWS treats as a no-op). A certificate is attached to the policy and the thing *before* its files
are written, and revoked and deleted if a later step fails, so no active certificate is left
behind whose private key nobody has.

The Amazon root CA is not downloaded (it cannot be, offline): the device trusts the ATS endpoint
through the system trust store when ``root_ca_path`` is unset; :data:`AMAZON_ROOT_CA_URL` is
where to get the file for a device without one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ancsync.errors import ProvisionError
from ancsync.files import write_atomically
from ancsync.provisioning.identity import CERT_FILE, CONFIG_FILE, KEY_FILE
from ancsync.topics import validate_thing_name

if TYPE_CHECKING:
    from mypy_boto3_iot import IoTClient

__all__ = [
    "AMAZON_ROOT_CA_URL",
    "CERT_FILE",
    "CONFIG_FILE",
    "KEY_FILE",
    "ProvisionResult",
    "provision",
]

logger = logging.getLogger("ancsync.tools.provision")

AMAZON_ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"

_NOT_FOUND = "ResourceNotFoundException"
_BAD_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
}


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision` made or found."""

    thing_name: str
    thing_created: bool
    certificate_id: str
    certificate_arn: str
    certificate_created: bool
    policy_name: str
    endpoint: str
    region: str
    cert_path: Path
    key_path: Path
    config_path: Path

    def device_settings(self) -> dict[str, str]:
        """The environment variables a device needs (see the configuration reference)."""
        return {
            "IOT_ENDPOINT": self.endpoint,
            "IOT_THING_NAME": self.thing_name,
            "IOT_CERT_PATH": str(self.cert_path),
            "IOT_KEY_PATH": str(self.key_path),
            "IOT_PORT": "8883",
        }


@contextmanager
def _aws_errors(step: str, endpoint_url: str | None) -> Iterator[None]:
    """Turn botocore's exceptions into one-line :class:`ProvisionError` messages."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise ProvisionError(
            "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run `aws configure`"
        ) from None
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
        where = endpoint_url or "the AWS IoT API"
        raise ProvisionError(
            f"cannot reach {where} while trying to {step} ({exc}); check the network, "
            "--region and --endpoint-url"
        ) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        message = error.get("Message", str(exc))
        if code in _BAD_CREDENTIALS:
            raise ProvisionError(
                f"AWS refused the credentials while trying to {step} ({code}: {message}); "
                "check AWS_PROFILE or the access keys"
            ) from None
        if code in ("AccessDeniedException", "AccessDenied"):
            raise ProvisionError(
                f"not allowed to {step} ({message}); the caller needs the AWS IoT permissions "
                "listed in docs/deploying.md"
            ) from None
        raise ProvisionError(f"AWS refused to {step}: {code}: {message}") from None


def _iot_client(region: str | None, endpoint_url: str | None) -> tuple[IoTClient, str]:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ProvisionError(
            "provisioning needs boto3: install ancsync's aws extra (pip install -e '.[aws]' in "
            "a checkout) or pip install boto3"
        ) from None
    session = boto3.session.Session(region_name=region)
    if session.region_name is None:
        raise ProvisionError("no AWS region given: pass --region or set AWS_REGION")
    config = Config(
        connect_timeout=5, read_timeout=20, retries={"mode": "standard", "max_attempts": 2}
    )
    client = session.client("iot", endpoint_url=endpoint_url, config=config)
    return client, session.region_name


def _existing_files(out_dir: Path) -> tuple[str, str] | None:
    """The (certificate PEM, key PEM) already in ``out_dir``, or None when there are none."""
    cert, key = out_dir / CERT_FILE, out_dir / KEY_FILE
    if cert.exists() and key.exists():
        return cert.read_text(), key.read_text()
    if cert.exists() or key.exists():
        present, missing = (cert, key) if cert.exists() else (key, cert)
        raise ProvisionError(
            f"{present} exists but {missing} does not: a certificate needs both; "
            "restore the missing file or remove both to create a new certificate"
        )
    return None


def _find_certificate(iot: IoTClient, thing_name: str, cert_pem: str) -> tuple[str, str] | None:
    """The (id, arn) of the thing's active certificate whose PEM is ``cert_pem``."""
    principals = iot.list_thing_principals(thingName=thing_name)["principals"]
    for arn in principals:
        if ":cert/" not in arn:
            continue
        certificate_id = arn.rsplit("/", 1)[1]
        description = iot.describe_certificate(certificateId=certificate_id)[
            "certificateDescription"
        ]
        if description.get("certificatePem", "").strip() == cert_pem.strip():
            if description.get("status") != "ACTIVE":
                raise ProvisionError(
                    f"the certificate in {CERT_FILE} ({certificate_id}) is "
                    f"{description.get('status')}, not ACTIVE; remove {CERT_FILE} and {KEY_FILE} "
                    "to create a new one"
                )
            return certificate_id, arn
    return None


def _revoke(
    iot: IoTClient, thing_name: str, policy_name: str, certificate_id: str, arn: str
) -> None:
    """Best-effort undo of a half-provisioned certificate, so no orphan stays active."""
    steps: list[tuple[str, Any]] = [
        (
            "detach it from the thing",
            lambda: iot.detach_thing_principal(thingName=thing_name, principal=arn),
        ),
        ("detach the policy", lambda: iot.detach_policy(policyName=policy_name, target=arn)),
        (
            "deactivate it",
            lambda: iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE"),
        ),
        ("delete it", lambda: iot.delete_certificate(certificateId=certificate_id)),
    ]
    for what, call in steps:
        try:
            call()
        except Exception as exc:  # cleanup goes on; the original error is what gets raised
            logger.warning("could not %s (certificate %s): %s", what, certificate_id, exc)


def provision(
    thing_name: str,
    policy_name: str,
    out_dir: str | Path,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> ProvisionResult:
    """Create or reuse the thing and its certificate, attach the policy, write the device's files.

    Args:
        thing_name: the thing, also the device id and the MQTT client id.
        policy_name: an existing IoT policy (Terraform's ``device_policy_name`` output).
        out_dir: where ``cert.pem``, ``private.key`` (mode 0600) and ``ancsync.json`` go.
        region: AWS region; default from the AWS configuration (``AWS_REGION``...).
        endpoint_url: another IoT API endpoint, for tests (``moto_server``).

    Raises:
        ProvisionError: no credentials or region, the policy does not exist, the endpoint is
            unreachable, AWS refused a step, or ``out_dir`` holds files that do not belong to
            an active certificate of the thing.
        InvalidTopic: ``thing_name`` is not a valid thing name.
    """
    validate_thing_name(thing_name)
    out = Path(out_dir).expanduser().resolve()
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create the output directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ProvisionError(f"the output directory {out} is not writable")
    existing = _existing_files(out)

    iot, region_name = _iot_client(region, endpoint_url)
    with _aws_errors("read the IoT data endpoint", endpoint_url):
        endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]

    with _aws_errors(f"read the IoT policy {policy_name!r}", endpoint_url):
        try:
            iot.get_policy(policyName=policy_name)
        except iot.exceptions.ResourceNotFoundException:
            raise ProvisionError(
                f"the IoT policy {policy_name!r} does not exist in {region_name}: create it with "
                "`terraform apply` in infra/terraform (output device_policy_name) or pass the "
                "right --policy and --region"
            ) from None

    with _aws_errors(f"create the thing {thing_name!r}", endpoint_url):
        try:
            iot.describe_thing(thingName=thing_name)
            thing_created = False
            logger.info("reusing the existing thing %s", thing_name)
        except iot.exceptions.ResourceNotFoundException:
            thing_created = True
        # Files in --out of a thing that does not exist belong to something else: stop first.
        if thing_created and existing is None:
            iot.create_thing(thingName=thing_name)
            logger.info("created the thing %s", thing_name)

    if existing is not None:
        found = None
        if not thing_created:
            with _aws_errors("find the certificate of the files in --out", endpoint_url):
                found = _find_certificate(iot, thing_name, existing[0])
        if found is None:
            raise ProvisionError(
                f"{out / CERT_FILE} is not a certificate of the thing {thing_name!r} in "
                f"{region_name}; use another --out, or remove {CERT_FILE} and {KEY_FILE} there "
                "to create a new certificate"
            )
        certificate_id, certificate_arn = found
        with _aws_errors(f"attach the policy {policy_name!r}", endpoint_url):
            iot.attach_policy(policyName=policy_name, target=certificate_arn)
        logger.info("reusing the certificate %s from %s", certificate_id, out)
    else:
        with _aws_errors("create a key pair and certificate", endpoint_url):
            made = iot.create_keys_and_certificate(setAsActive=True)
        certificate_id, certificate_arn = made["certificateId"], made["certificateArn"]
        try:
            with _aws_errors(f"attach the policy {policy_name!r} and the thing", endpoint_url):
                iot.attach_policy(policyName=policy_name, target=certificate_arn)
                iot.attach_thing_principal(thingName=thing_name, principal=certificate_arn)
            try:
                write_atomically(out / KEY_FILE, made["keyPair"]["PrivateKey"].encode(), 0o600)
                write_atomically(out / CERT_FILE, made["certificatePem"].encode(), 0o644)
            except OSError as exc:
                raise ProvisionError(
                    f"cannot write the key and certificate to {out} ({exc}); the new "
                    f"certificate {certificate_id} is being revoked and deleted"
                ) from None
        except BaseException:
            _revoke(iot, thing_name, policy_name, certificate_id, certificate_arn)
            for name in (KEY_FILE, CERT_FILE):
                with suppress(OSError):
                    (out / name).unlink()
            raise
        logger.info("created the active certificate %s", certificate_id)

    config = {
        "iot": {
            "endpoint": endpoint,
            "thing_name": thing_name,
            "cert_path": CERT_FILE,
            "key_path": KEY_FILE,
        }
    }
    write_atomically(out / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode(), 0o644)
    return ProvisionResult(
        thing_name=thing_name,
        thing_created=thing_created,
        certificate_id=certificate_id,
        certificate_arn=certificate_arn,
        certificate_created=existing is None,
        policy_name=policy_name,
        endpoint=endpoint,
        region=region_name,
        cert_path=out / CERT_FILE,
        key_path=out / KEY_FILE,
        config_path=out / CONFIG_FILE,
    )
