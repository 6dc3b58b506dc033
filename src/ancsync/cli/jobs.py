"""``ancsync jobs create|list|describe|cancel``: AWS IoT Jobs as the cloud operator sees them.

Against the emulator (the default) it connects with the operator certificate like ``ancsync
shadow``; with ``--aws`` (or an ``--endpoint`` under amazonaws.com) it calls AWS IoT through
boto3's ``iot`` client, with the usual AWS credentials (see ancsync.tools.jobs_operator).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ancsync.cli.operators import run_operator
from ancsync.cli.options import AwsOption, JsonOption, RegionOption, ThingsOption, VerboseOption
from ancsync.cli.output import (
    EXIT_USAGE,
    fail,
    print_json,
    print_line,
    reports_errors,
)
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
    from ancsync.tools.jobs_operator import JobsOperator

app = typer.Typer(
    help="Create, list, describe and cancel AWS IoT Jobs (on the emulator, or on AWS).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

# Explained in each docstring: an argument's help line would show its type, <str>.
JobIdArgument = Annotated[str, typer.Argument(metavar="JOB_ID", hidden=True, show_default=False)]


def run_jobs_operator(
    work: Callable[[JobsOperator], Awaitable[None]],
    *,
    aws: bool,
    region: str | None,
    mqtt: tuple[Any, ...],
    timeout: float,
    verbose: bool,
) -> None:
    """Run ``work`` with the jobs operator the options name (see ancsync.cli.operators).

    ``mqtt`` holds the emulator connection options, in the order of credentials_from_options.
    """
    from ancsync.tools.jobs_operator import AwsJobsOperator, EmulatorJobsOperator

    def on_aws() -> AbstractAsyncContextManager[JobsOperator]:
        return AwsJobsOperator(region=region)

    def on_emulator(connection: IoTConnection) -> AbstractAsyncContextManager[JobsOperator]:
        return EmulatorJobsOperator(connection, timeout=timeout)

    run_operator(
        work,
        on_aws=on_aws,
        on_emulator=on_emulator,
        aws=aws,
        mqtt=mqtt,
        timeout=timeout,
        verbose=verbose,
    )


def _show_job(job: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(job)
        return
    print_line(f"{job.get('jobId')}: {job.get('status')}")
    for thing, state in (job.get("executions") or {}).items():
        details = " ".join(f"{k}={v}" for k, v in (state.get("statusDetails") or {}).items())
        print_line(f"  {thing:<24}{state.get('status'):<12}{details}")


def _document(document_json: str | None, document_file: Path | None) -> dict[str, Any]:
    import orjson

    if (document_json is None) == (document_file is None):
        raise fail("give the job document with exactly one of --document or --document-file", 2)
    text = document_file.read_text("utf-8") if document_file else str(document_json)
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        source = document_file or "--document"
        raise fail(f"the job document in {source} is not JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(document, dict):
        raise fail('the job document must be a JSON object, e.g. {"operation": "reboot"}', 2)
    return document


@app.command("create", short_help="Create a job for one or more things.")
@reports_errors
def create(
    job_id: JobIdArgument,
    thing: ThingsOption = None,
    document_json: Annotated[
        str | None,
        typer.Option("--document", metavar="JSON", help="The job document, as JSON."),
    ] = None,
    document_file: Annotated[
        Path | None,
        typer.Option(
            "--document-file",
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE",
            help="A file holding the job document (JSON).",
        ),
    ] = None,
    in_progress_timeout: Annotated[
        int | None,
        typer.Option(
            "--in-progress-timeout",
            min=1,
            max=10080,
            metavar="MINUTES",
            help="Time out executions IN_PROGRESS for longer than this.",
        ),
    ] = None,
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
    """Create JOB_ID for every --thing with the document given; print the job."""
    if not thing:
        raise fail("name at least one target with --thing NAME", EXIT_USAGE)
    document = _document(document_json, document_file)
    targets = list(thing)

    async def work(operator: JobsOperator) -> None:
        _show_job(
            await operator.create(job_id, targets, document, in_progress_timeout), json_output
        )

    mqtt = (endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)
    run_jobs_operator(work, aws=aws, region=region, mqtt=mqtt, timeout=timeout, verbose=verbose)


@app.command("list", short_help="List the jobs.")
@reports_errors
def list_jobs(
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
    """Print every job's id and status (--json: one JSON object per job)."""

    async def work(operator: JobsOperator) -> None:
        jobs = await operator.list()
        for job in jobs:
            if json_output:
                print_json(job)
            else:
                print_line(f"{job.get('jobId')}: {job.get('status')}")
        if not jobs and not json_output:
            print_line("no jobs")

    mqtt = (endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)
    run_jobs_operator(work, aws=aws, region=region, mqtt=mqtt, timeout=timeout, verbose=verbose)


@app.command("describe", short_help="Print a job and its executions.")
@reports_errors
def describe(
    job_id: JobIdArgument,
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
    """Print job JOB_ID's status and each thing's execution status and details."""

    async def work(operator: JobsOperator) -> None:
        _show_job(await operator.describe(job_id), json_output)

    mqtt = (endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)
    run_jobs_operator(work, aws=aws, region=region, mqtt=mqtt, timeout=timeout, verbose=verbose)


@app.command("cancel", short_help="Cancel a job (--force: also the running executions).")
@reports_errors
def cancel(
    job_id: JobIdArgument,
    force: Annotated[
        bool, typer.Option("--force", help="Cancel IN_PROGRESS executions too.")
    ] = False,
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
    """Cancel job JOB_ID's QUEUED executions (--force: its IN_PROGRESS ones too); print it."""

    async def work(operator: JobsOperator) -> None:
        _show_job(await operator.cancel(job_id, force=force), json_output)

    mqtt = (endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)
    run_jobs_operator(work, aws=aws, region=region, mqtt=mqtt, timeout=timeout, verbose=verbose)
