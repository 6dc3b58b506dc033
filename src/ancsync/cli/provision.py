"""``ancsync provision``: a thing and its certificate in real AWS IoT
(see ancsync.tools.provision)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ancsync.cli.options import JsonOption, VerboseOption
from ancsync.cli.output import print_json, print_line, setup_logging


def provision(
    thing: Annotated[
        str,
        typer.Option("--thing", metavar="NAME", help="Thing name (= device id, client id)."),
    ],
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            metavar="NAME",
            help="IoT policy to attach (Terraform output device_policy_name).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", metavar="DIR", help="Directory for cert.pem, private.key, ancsync.json."
        ),
    ],
    region: Annotated[
        str | None, typer.Option("--region", metavar="REGION", help="AWS region.")
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", metavar="URL", help="Another IoT API endpoint (tests)."),
    ] = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Create or reuse a thing and its certificate in AWS IoT; write the device's files."""
    from ancsync.tools.provision import AMAZON_ROOT_CA_URL
    from ancsync.tools.provision import provision as run_provision

    setup_logging(verbose)
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
