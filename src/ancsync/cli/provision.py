"""``ancsync provision``: a device's certificate and settings, made in AWS IoT with boto3
(ancsync.tools.provision) or by the device with its claim certificate
(ancsync.provisioning.claim)."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Annotated

import anyio
import typer

from ancsync.cli.options import JsonOption, VerboseOption
from ancsync.cli.output import EXIT_USAGE, fail, print_json, print_line, setup_logging


def provision(
    out: Annotated[
        Path,
        typer.Option(
            "--out", metavar="DIR", help="Directory for cert.pem, private.key, ancsync.json."
        ),
    ],
    thing: Annotated[
        str | None,
        typer.Option("--thing", metavar="NAME", help="Thing name (= device id, client id)."),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            metavar="NAME",
            help="IoT policy to attach (Terraform output device_policy_name).",
        ),
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", metavar="REGION", help="AWS region.")
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", metavar="URL", help="Another IoT API endpoint (tests)."),
    ] = None,
    claim: Annotated[
        bool,
        typer.Option(
            "--claim",
            help="Provision this device by claim over MQTT (fleet provisioning), not with boto3.",
        ),
    ] = False,
    claim_cert: Annotated[
        Path | None,
        typer.Option("--claim-cert", metavar="FILE", help="--claim: the claim certificate."),
    ] = None,
    claim_key: Annotated[
        Path | None,
        typer.Option("--claim-key", metavar="FILE", help="--claim: the claim private key."),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option("--template", metavar="NAME", help="--claim: the provisioning template."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help="--claim: a template parameter (repeat it), e.g. SerialNumber=SN123.",
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", metavar="HOST", help="--claim: the IoT data endpoint."),
    ] = None,
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="--claim: MQTT port.")] = 8883,
    root_ca: Annotated[
        Path | None,
        typer.Option(
            "--root-ca", metavar="FILE", help="--claim: CA to trust (default: the system's)."
        ),
    ] = None,
    keys_from_service: Annotated[
        bool,
        typer.Option(
            "--keys-from-service",
            help="--claim: let AWS make the private key (default: made here, never sent).",
        ),
    ] = False,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Give a device its certificate and settings: made in AWS IoT with boto3 (--thing and
    --policy), or by the device itself with its claim certificate (--claim)."""
    setup_logging(verbose)
    if claim:
        _by_claim(
            out,
            claim_cert,
            claim_key,
            template,
            param or [],
            endpoint,
            port,
            root_ca,
            keys_from_service=keys_from_service,
            json_output=json_output,
        )
        return
    if thing is None or policy is None:
        raise fail(
            "name the device and its policy with --thing NAME --policy NAME, or provision by "
            "claim with --claim",
            EXIT_USAGE,
        )
    from ancsync.tools.provision import AMAZON_ROOT_CA_URL
    from ancsync.tools.provision import provision as run_provision

    result = run_provision(thing, policy, out, region=region, endpoint_url=endpoint_url)
    if json_output:
        print_json({**asdict(result), "device_settings": result.device_settings()})
        return
    thing_state = "created" if result.thing_created else "reusing existing thing"
    cert_state = "created, active" if result.certificate_created else "reusing, active"
    for label, value in [
        ("thing", f"{result.thing_name} ({thing_state})"),
        ("certificate", f"{result.certificate_id} ({cert_state})"),
        ("policy", f"{result.policy_name} (attached)"),
        ("files", f"{result.cert_path}, {result.key_path} (0600), {result.config_path}"),
        ("endpoint", result.endpoint),
    ]:
        print_line(f"{label:<12} {value}")
    print_line("\nDevice settings (environment):")
    for name, value in result.device_settings().items():
        print_line(f"{name}={value}")
    print_line(
        "# IOT_ROOT_CA_PATH: leave unset to use the system trust store (it holds Amazon Root "
        f"CA 1), or download {AMAZON_ROOT_CA_URL} and point it there"
    )
    print_line(f"# or: ANCSYNC_CONFIG={result.config_path}")


def _by_claim(
    out: Path,
    claim_cert: Path | None,
    claim_key: Path | None,
    template: str | None,
    params: list[str],
    endpoint: str | None,
    port: int,
    root_ca: Path | None,
    *,
    keys_from_service: bool,
    json_output: bool,
) -> None:
    missing = [
        option
        for option, value in (
            ("--claim-cert FILE", claim_cert),
            ("--claim-key FILE", claim_key),
            ("--template NAME", template),
            ("--endpoint HOST", endpoint),
        )
        if value is None
    ]
    if missing:
        raise fail(f"--claim needs {', '.join(missing)}", EXIT_USAGE)
    assert claim_cert is not None
    assert claim_key is not None
    assert template is not None
    assert endpoint is not None
    parameters = {}
    for item in params:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise fail(f"--param {item!r} is not NAME=VALUE, e.g. SerialNumber=SN123", EXIT_USAGE)
        parameters[name] = value

    from ancsync.provisioning.claim import provision_by_claim

    identity = anyio.run(
        partial(
            provision_by_claim,
            out,
            endpoint=endpoint,
            claim_cert=claim_cert,
            claim_key=claim_key,
            template=template,
            parameters=parameters,
            root_ca=root_ca,
            port=port,
            key_on_device=not keys_from_service,
            on_step=lambda step: None if json_output else print_line(f"  {step}: done"),
        )
    )
    if json_output:
        print_json(
            {
                "thing_name": identity.thing_name,
                "certificate_id": identity.certificate_id,
                "device_configuration": identity.device_configuration,
                "cert_path": str(identity.cert_path),
                "key_path": str(identity.key_path),
                "config_path": str(identity.config_path),
            }
        )
        return
    print_line(f"thing        {identity.thing_name}")
    print_line(f"certificate  {identity.certificate_id} (active)")
    print_line(
        f"files        {identity.cert_path}, {identity.key_path} (0600), {identity.config_path}"
    )
    print_line(f"# start the device with: ANCSYNC_CONFIG={identity.config_path}")
