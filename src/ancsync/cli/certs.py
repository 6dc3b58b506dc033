"""``ancsync certs``: development certificates, and device certificates as the operator sees them.

Without a command (or with ``create``) it writes the development certificates, as it always did
(:func:`ancsync.cli.emulator.certs`). ``list|describe|revoke|deactivate|activate`` operate the
certificates of the emulator over MQTT with the operator certificate, or of AWS IoT through
boto3 with ``--aws`` (see ancsync.tools.certs_operator), like ``ancsync jobs``; ``rotate``
creates the job that makes a device rotate its own certificate (``{"operation":
"rotate_certificate"}``, see ``DataSyncOrchestrator.enable_rotation``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ancsync.cli.emulator import DevCertsDirOption
from ancsync.cli.emulator import certs as create_dev_certs
from ancsync.cli.jobs import run_jobs_operator
from ancsync.cli.operators import run_operator
from ancsync.cli.options import (
    AwsOption,
    JsonOption,
    RegionOption,
    ThingsOption,
    VerboseOption,
)
from ancsync.cli.output import EXIT_USAGE, fail, print_json, print_line, reports_errors
from ancsync.cli.shadow import (
    CertOption,
    CertsDirOption,
    ClientIdOption,
    EndpointOption,
    KeyOption,
    NoTlsOption,
    PortOption,
    RootCaOption,
    TimeoutOption,
)

if TYPE_CHECKING:
    from ancsync.connection import IoTConnection
    from ancsync.tools.certs_operator import CertificatesOperator
    from ancsync.tools.jobs_operator import JobsOperator

__all__ = ["app", "rotation_job_id"]

app = typer.Typer(rich_markup_mode=None)

# Explained in each docstring: an argument's help line would show its type, <str>.
CertificateIdArgument = Annotated[
    str, typer.Argument(metavar="CERTIFICATE_ID", hidden=True, show_default=False)
]
ListThingOption = Annotated[
    str | None,
    typer.Option(
        "--thing",
        metavar="NAME",
        help="Only the certificates attached to this thing.",
        show_default=False,
    ),
]
RotateThingOption = Annotated[
    str, typer.Option("--thing", metavar="NAME", help="The device to rotate.", show_default=False)
]
JobIdOption = Annotated[
    str | None,
    typer.Option(
        "--job-id", metavar="JOB_ID", help="The job's id.", show_default="rotate-NAME-RANDOM"
    ),
]

_CERTIFICATE_ID = re.compile(r"[0-9a-f]{64}")


def rotation_job_id(thing_name: str, suffix: str) -> str:
    """A job id for rotating ``thing_name``: ``rotate-{thing}-{suffix}``, within AWS's 64
    characters of letters, digits, ``_`` and ``-`` (a thing name's ``:`` becomes ``-``)."""
    tail = f"-{suffix}"
    return f"rotate-{thing_name.replace(':', '-')}"[: 64 - len(tail)] + tail


def _checked_id(certificate_id: str) -> str:
    if not _CERTIFICATE_ID.fullmatch(certificate_id):
        raise fail(
            f"{certificate_id!r} is not a certificate id: 64 lowercase hex digits, as "
            "`ancsync certs list` prints them",
            EXIT_USAGE,
        )
    return certificate_id


def _run(
    work: Callable[[CertificatesOperator], Awaitable[None]],
    *,
    aws: bool,
    region: str | None,
    mqtt: tuple[Any, ...],
    timeout: float,
    verbose: bool,
) -> None:
    """Run ``work`` with the certificates operator the options name (ancsync.cli.operators)."""
    from ancsync.tools.certs_operator import AwsCertificatesOperator, EmulatorCertificatesOperator

    def on_aws() -> AbstractAsyncContextManager[CertificatesOperator]:
        return AwsCertificatesOperator(region=region)

    def on_emulator(connection: IoTConnection) -> AbstractAsyncContextManager[CertificatesOperator]:
        return EmulatorCertificatesOperator(connection, timeout=timeout)

    run_operator(
        work,
        on_aws=on_aws,
        on_emulator=on_emulator,
        aws=aws,
        mqtt=mqtt,
        timeout=timeout,
        verbose=verbose,
    )


def _line(certificate: dict[str, Any]) -> str:
    thing = certificate.get("thingName") or "-"
    return f"{certificate.get('certificateId')}  {certificate.get('status'):<18} {thing}"


def _show(certificate: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(certificate)
        return
    for key in ("certificateId", "status", "thingName", "certificateArn", "creationDate"):
        print_line(f"{key:<15} {certificate.get(key) or '-'}")


@app.callback(invoke_without_command=True)
@reports_errors
def certs(
    ctx: typer.Context,
    certs_dir: DevCertsDirOption = Path(".ancsync/dev"),
    things: ThingsOption = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Create development certificates (no command, or create); list, describe, revoke,
    deactivate, activate and rotate device certificates on the emulator or on AWS.

    Without a command it creates (or reuses) the development certificates, as `ancsync certs
    create`: a CA, the broker, the devices (--thing), an operator.
    """
    if ctx.invoked_subcommand is None:
        create_dev_certs(certs_dir, things, json_output, verbose)
    elif things or json_output or verbose or certs_dir != Path(".ancsync/dev"):
        raise fail(
            f"put the options after the command: ancsync certs {ctx.invoked_subcommand} ...",
            EXIT_USAGE,
        )


app.command("create", short_help="Create (or reuse) development certificates.")(
    reports_errors(create_dev_certs)
)


@app.command("list", short_help="List the certificates and their status.")
@reports_errors
def list_certificates(
    thing: ListThingOption = None,
    aws: AwsOption = False,
    region: RegionOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Print each certificate's id, status and thing (--json: one JSON object each)."""

    async def work(operator: CertificatesOperator) -> None:
        found = await operator.list(thing)
        for certificate in found:
            if json_output:
                print_json(certificate)
            else:
                print_line(_line(certificate))
        if not found and not json_output:
            print_line("no certificates" + (f" attached to {thing}" if thing else ""))

    mqtt = (endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)
    _run(work, aws=aws, region=region, mqtt=mqtt, timeout=timeout, verbose=verbose)


@app.command("describe", short_help="Print one certificate.")
@reports_errors
def describe(
    certificate_id: CertificateIdArgument,
    aws: AwsOption = False,
    region: RegionOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Print certificate CERTIFICATE_ID: status, thing, ARN, creation date (--json: and PEM)."""
    checked = _checked_id(certificate_id)

    async def work(operator: CertificatesOperator) -> None:
        _show(await operator.describe(checked), json_output)

    mqtt = (endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)
    _run(work, aws=aws, region=region, mqtt=mqtt, timeout=timeout, verbose=verbose)


def _status_command(new_status: str, docstring: str) -> Callable[..., None]:
    """The command that sets a certificate's status to ``new_status``."""

    def command(
        certificate_id: CertificateIdArgument,
        aws: AwsOption = False,
        region: RegionOption = None,
        endpoint: EndpointOption = "127.0.0.1",
        port: PortOption = 8883,
        certs_dir: CertsDirOption = Path(".ancsync/dev"),
        cert: CertOption = None,
        key: KeyOption = None,
        root_ca: RootCaOption = None,
        client_id: ClientIdOption = None,
        no_tls: NoTlsOption = False,
        timeout: TimeoutOption = 15.0,
        json_output: JsonOption = False,
        verbose: VerboseOption = False,
    ) -> None:
        checked = _checked_id(certificate_id)

        async def work(operator: CertificatesOperator) -> None:
            updated = await operator.update(checked, new_status)
            if json_output:
                print_json(updated)
            else:
                print_line(f"{updated.get('certificateId')}: {updated.get('status')}")

        mqtt = (endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)
        _run(work, aws=aws, region=region, mqtt=mqtt, timeout=timeout, verbose=verbose)

    command.__doc__ = docstring
    command.__name__ = new_status.lower()
    return reports_errors(command)


app.command("revoke", short_help="Revoke a certificate (final); its device is dropped.")(
    _status_command(
        "REVOKED",
        "Set certificate CERTIFICATE_ID REVOKED: its connections are dropped and it can never "
        "connect again.",
    )
)
app.command("deactivate", short_help="Deactivate a certificate; its device is dropped.")(
    _status_command(
        "INACTIVE",
        "Set certificate CERTIFICATE_ID INACTIVE: its connections are dropped and it cannot "
        "connect until activated again.",
    )
)
app.command("activate", short_help="Activate an inactive certificate again.")(
    _status_command(
        "ACTIVE",
        "Set certificate CERTIFICATE_ID ACTIVE again (not a revoked one).",
    )
)


@app.command("rotate", short_help="Create the job that makes a device rotate its certificate.")
@reports_errors
def rotate(
    thing: RotateThingOption,
    job_id: JobIdOption = None,
    aws: AwsOption = False,
    region: RegionOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Create a job {"operation": "rotate_certificate"} for --thing and print its id (--json:
    the job); the device rotates its own certificate when the job reaches it."""
    from ancsync.models import new_id
    from ancsync.provisioning.rotation import ROTATION_JOB_OPERATION

    chosen = job_id or rotation_job_id(thing, new_id()[:8])

    async def work(operator: JobsOperator) -> None:
        job = await operator.create(chosen, [thing], {"operation": ROTATION_JOB_OPERATION})
        if json_output:
            print_json(job)
        else:
            print_line(str(job.get("jobId")))

    mqtt = (endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)
    run_jobs_operator(work, aws=aws, region=region, mqtt=mqtt, timeout=timeout, verbose=verbose)
