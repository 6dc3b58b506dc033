"""The ``ancsync`` command line.

Each command is a thin wrapper: it parses arguments, sets up logging and rich output, and calls the
module that does the work. A bad argument or a known error ends with a one-line message and exit
code 2 (usage) or 1 (failure), never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    name="ancsync",
    help="Keep ANC devices in sync with AWS IoT Core, and run a local AWS IoT emulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def setup_logging(verbose: bool) -> None:
    """Send library logs to stderr through rich; DEBUG with ``--verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.callback()
def _root() -> None:
    """Keep ANC devices in sync with AWS IoT Core, and run a local AWS IoT emulator."""


@app.command()
def provision(
    thing: Annotated[str, typer.Option("--thing", help="Thing name (= device id, client id).")],
    policy: Annotated[
        str, typer.Option("--policy", help="IoT policy to attach (Terraform: device_policy_name).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Directory for cert.pem, private.key, ancsync.json.")
    ],
    region: Annotated[str | None, typer.Option("--region", help="AWS region.")] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="Another IoT API endpoint (tests).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Create or reuse a thing and its certificate in AWS IoT; write the device's files."""
    from ancsync.errors import AncSyncError
    from ancsync.provision import AMAZON_ROOT_CA_URL
    from ancsync.provision import provision as run_provision

    setup_logging(verbose)
    if not verbose:  # botocore's INFO lines (where it found credentials) are noise here
        logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        result = run_provision(thing, policy, out, region=region, endpoint_url=endpoint_url)
    except AncSyncError as exc:
        raise fail(str(exc)) from None
    thing_state = "created" if result.thing_created else "reusing existing thing"
    cert_state = "created, active" if result.certificate_created else "reusing, active"
    for label, value in [
        ("thing", f"{result.thing_name} ({thing_state})"),
        ("certificate", f"{result.certificate_id} ({cert_state})"),
        ("policy", f"{result.policy_name} (attached)"),
        ("files", f"{result.cert_path}, {result.key_path} (0600), {result.config_path}"),
        ("endpoint", result.endpoint),
    ]:
        console.print(f"{label:<12} {value}", highlight=False, markup=False, soft_wrap=True)
    console.print("\nDevice settings (environment):", highlight=False)
    for name, value in result.device_settings().items():
        console.print(f"{name}={value}", highlight=False, markup=False, soft_wrap=True)
    console.print(
        "# IOT_ROOT_CA_PATH: leave unset to use the system trust store (it holds Amazon Root "
        f"CA 1), or download {AMAZON_ROOT_CA_URL} and point it there",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"# or: ANCSYNC_CONFIG={result.config_path}", highlight=False, markup=False, soft_wrap=True
    )


@app.command()
def emulator(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="MQTT port; 0 picks a free one.")] = 8883,
    certs_dir: Annotated[
        Path, typer.Option("--certs-dir", help="Where the dev CA and certificates live.")
    ] = Path(".ancsync/dev"),
    things: Annotated[
        list[str] | None,
        typer.Option("--thing", help="A device (thing name); repeat for more.", show_default=False),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option("--db", help="Rules sink database [default: emulator.db next to certs-dir]"),
    ] = None,
    no_tls: Annotated[
        bool, typer.Option("--no-tls", help="Plain MQTT without certificates (loopback only).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the local AWS IoT emulator: broker, Device Shadow, device policy, rules sink."""
    import anyio

    from ancsync.emulator.server import DEFAULT_THING, Emulator, serve_until_signalled
    from ancsync.errors import AncSyncError, ConfigError, InvalidTopic

    def line(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    def print_ready(local: Emulator) -> None:
        security = "TLS, client certificate required" if local.tls else "plain MQTT, no TLS"
        line(f"{'endpoint':<12} {local.host}:{local.port} ({security})")
        if local.tls:
            line(f"{'root CA':<12} {local.certs.ca.resolve()}")
            operator = local.certs.operator
            line(f"{'operator':<12} {operator.cert.resolve()}, {operator.key.resolve()}")
        line(f"{'rules db':<12} {db_path.resolve()}")
        for thing in local.things:
            line(f"\nDevice settings for {thing} (environment):")
            for name, value in local.device_settings(thing).items():
                line(f"{name}={value}")
        line(f"\nready: emulator listening on {local.host}:{local.port} (Ctrl-C to stop)")

    setup_logging(verbose)
    if not verbose:
        # amqtt narrates every step and logs tracebacks for failures the emulator reports in
        # its own words (a taken port, a refused client); --verbose shows them.
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    db_path = db if db is not None else certs_dir.parent / "emulator.db"
    try:
        local = Emulator(
            certs_dir,
            things or [DEFAULT_THING],
            host=host,
            port=port,
            tls=not no_tls,
            db_path=db_path,
        )
        anyio.run(serve_until_signalled, local, print_ready)
    except (ConfigError, InvalidTopic) as exc:
        raise fail(str(exc), code=2) from None
    except AncSyncError as exc:
        raise fail(str(exc)) from None


@app.command()
def certs(
    certs_dir: Annotated[
        Path, typer.Option("--certs-dir", help="Where to write the dev CA and certificates.")
    ] = Path(".ancsync/dev"),
    things: Annotated[
        list[str] | None,
        typer.Option("--thing", help="A device (thing name); repeat for more.", show_default=False),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Create (or reuse) development certificates: a CA, the broker, the devices, an operator.

    The layout is the emulator's, so `ancsync emulator --certs-dir DIR` uses them as they are.
    Files still valid are kept; run it again to add a thing or renew what expired.
    """
    from ancsync.emulator.certs import ensure_dev_certs
    from ancsync.emulator.server import DEFAULT_THING
    from ancsync.errors import AncSyncError

    setup_logging(verbose)
    try:
        created = ensure_dev_certs(certs_dir, things or [DEFAULT_THING])
    except AncSyncError as exc:
        raise fail(str(exc), code=2) from None
    except OSError as exc:
        raise fail(f"cannot write certificates to {certs_dir}: {exc.strerror}") from None

    def line(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    line(f"{'root CA':<12} {created.ca.resolve()}")
    line(f"{'server':<12} {created.server.cert.resolve()} (localhost, 127.0.0.1, ::1)")
    line(f"{'operator':<12} {created.operator.cert.resolve()}, {created.operator.key.resolve()}")
    for thing, pair in created.devices.items():
        line(f"\nDevice settings for {thing} (environment; add IOT_ENDPOINT and IOT_PORT):")
        line(f"IOT_THING_NAME={thing}")
        line(f"IOT_CERT_PATH={pair.cert.resolve()}")
        line(f"IOT_KEY_PATH={pair.key.resolve()}")
        line(f"IOT_ROOT_CA_PATH={created.ca.resolve()}")


shadow_app = typer.Typer(
    help="Read, change and watch a Device Shadow as the cloud operator (over MQTT).",
    no_args_is_help=True,
)
app.add_typer(shadow_app, name="shadow")

ThingOption = Annotated[str, typer.Option("--thing", help="The thing whose shadow to use.")]
ShadowNameOption = Annotated[
    str | None, typer.Option("--name", help="A named shadow [default: the classic shadow].")
]
EndpointOption = Annotated[
    str, typer.Option("--endpoint", envvar="IOT_ENDPOINT", help="Broker host (no scheme).")
]
PortOption = Annotated[int, typer.Option("--port", envvar="IOT_PORT", help="MQTT port.")]
CertsDirOption = Annotated[
    Path,
    typer.Option(
        "--certs-dir",
        help="Emulator certificates: the operator certificate and CA are taken from here "
        "unless --cert/--key/--root-ca are given.",
    ),
]
CertOption = Annotated[
    Path | None,
    typer.Option(
        "--cert",
        envvar="ANCSYNC_OPERATOR_CERT_PATH",
        help="Operator certificate [default: CERTS_DIR/operator/cert.pem].",
        show_default=False,
    ),
]
KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="ANCSYNC_OPERATOR_KEY_PATH",
        help="Operator private key [default: CERTS_DIR/operator/private.key].",
        show_default=False,
    ),
]
RootCaOption = Annotated[
    Path | None,
    typer.Option(
        "--root-ca",
        envvar="IOT_ROOT_CA_PATH",
        help="CA of the broker [default: CERTS_DIR/ca.pem if it exists, else the system store].",
        show_default=False,
    ),
]
ClientIdOption = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        help="MQTT client id; never a thing name [default: ancsync-operator-<random>].",
        show_default=False,
    ),
]
NoTlsOption = Annotated[
    bool, typer.Option("--no-tls", help="Plain MQTT (an emulator started with --no-tls).")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the connection.")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def _operator_credentials(
    endpoint: str,
    port: int,
    certs_dir: Path,
    cert: Path | None,
    key: Path | None,
    root_ca: Path | None,
    client_id: str | None,
    no_tls: bool,
) -> Any:
    from ancsync.operator import OperatorCredentials, operator_client_id

    default_ca = certs_dir / "ca.pem"
    return OperatorCredentials(
        endpoint=endpoint,
        port=port,
        cert_path=cert or certs_dir / "operator" / "cert.pem",
        key_path=key or certs_dir / "operator" / "private.key",
        root_ca_path=root_ca or (default_ca if default_ca.exists() else None),
        client_id=client_id or operator_client_id(),
        tls=not no_tls,
    )


def _run_operator(
    credentials: Any,
    thing: str,
    shadow_name: str | None,
    timeout: float,
    verbose: bool,
    work: Callable[[Any], Awaitable[None]],
    *,
    validate: bool = True,
) -> None:
    """Connect as the operator, run ``work(operator)``, turn known errors into one line."""
    import anyio

    from ancsync.errors import (
        AncSyncError,
        ConfigError,
        InvalidPayload,
        InvalidTopic,
        ShadowRejected,
    )
    from ancsync.models import AncDesiredState
    from ancsync.operator import ShadowOperator

    setup_logging(verbose)
    if not verbose:  # the answer goes to stdout; say only what went wrong on stderr
        logging.getLogger("ancsync").setLevel(logging.WARNING)

    async def session() -> None:
        operator = ShadowOperator(
            credentials.connection(connect_timeout=timeout),
            thing,
            shadow_name,
            desired_model=AncDesiredState if validate and shadow_name is None else None,
            connect_timeout=timeout,
        )
        async with operator:
            await work(operator)

    try:
        anyio.run(session)
    except KeyboardInterrupt:
        return
    except (ConfigError, InvalidPayload, InvalidTopic) as exc:
        raise fail(str(exc), code=2) from None
    except ShadowRejected as exc:
        hint = {
            403: "; the operator certificate's policy must allow the shadow topics of this thing",
            404: f"; thing {thing!r} has no such shadow yet",
        }.get(exc.code, "")
        raise fail(f"{exc}{hint}") from None
    except AncSyncError as exc:
        raise fail(str(exc)) from None


def _print_json(value: Any) -> None:
    import orjson

    console.print(orjson.dumps(value).decode(), highlight=False, markup=False, soft_wrap=True)


@shadow_app.command("get")
def shadow_get(
    thing: ThingOption,
    name: ShadowNameOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    verbose: VerboseOption = False,
) -> None:
    """Print the shadow as one JSON object: version, desired, reported and delta."""
    credentials = _operator_credentials(
        endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls
    )

    async def work(operator: Any) -> None:
        _print_json((await operator.get()).as_dict())

    _run_operator(credentials, thing, name, timeout, verbose, work)


def _parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``key=value`` words as a dict; a value is read as JSON when it parses, else as text."""
    import orjson

    values: dict[str, Any] = {}
    for word in assignments:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"{word!r} is not KEY=VALUE; e.g. anc_intensity=0.9 anc_algorithm=fxlms "
                "(null deletes a key)"
            )
        try:
            values[key] = orjson.loads(text)
        except orjson.JSONDecodeError:
            values[key] = text
    return values


@shadow_app.command("update")
def shadow_update(
    thing: ThingOption,
    assignments: Annotated[
        list[str] | None,
        typer.Argument(
            help="Desired values as KEY=VALUE (VALUE read as JSON when it parses: 0.9, true, "
            "null deletes).",
            show_default=False,
        ),
    ] = None,
    desired_json: Annotated[
        str | None,
        typer.Option(
            "--desired", help="Desired values as one JSON object: '{\"anc_intensity\": 0.9}'"
        ),
    ] = None,
    no_validate: Annotated[
        bool,
        typer.Option(
            "--no-validate", help="Send keys the ANC desired state does not know (other schemas)."
        ),
    ] = False,
    name: ShadowNameOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    verbose: VerboseOption = False,
) -> None:
    """Set desired state; print the shadow as accepted. The device applies what it can.

    Example: ancsync shadow update --thing anc-device-001 anc_intensity=0.9 anc_algorithm=fxlms
    """
    import orjson

    desired = _parse_assignments(assignments or [])
    if desired_json is not None:
        try:
            parsed = orjson.loads(desired_json)
        except orjson.JSONDecodeError as exc:
            raise fail(
                f"--desired is not valid JSON ({exc}); e.g. '{{\"anc_intensity\": 0.9}}'", 2
            ) from None
        if not isinstance(parsed, dict):
            raise fail("--desired must be a JSON object, e.g. '{\"anc_intensity\": 0.9}'", 2)
        desired.update(parsed)
    if not desired:
        raise fail("nothing to update: give KEY=VALUE arguments or --desired JSON", 2)
    if not no_validate and name is None:  # before connecting: a typo costs no round trip
        from ancsync.errors import InvalidPayload
        from ancsync.models import AncDesiredState
        from ancsync.shadow.document import as_patch

        try:
            as_patch(desired, AncDesiredState, "desired state")
        except InvalidPayload as exc:
            raise fail(f"{exc} (--no-validate sends it anyway)", 2) from None
    credentials = _operator_credentials(
        endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls
    )

    async def work(operator: Any) -> None:
        _print_json((await operator.update_desired(desired)).as_dict())

    _run_operator(credentials, thing, name, timeout, verbose, work, validate=not no_validate)


@shadow_app.command("watch")
def shadow_watch(
    thing: ThingOption,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="Stop after this many changes [default: Ctrl-C]."),
    ] = None,
    name: ShadowNameOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    verbose: VerboseOption = False,
) -> None:
    """Print the shadow now, then one JSON line per accepted change, until Ctrl-C or --count."""
    credentials = _operator_credentials(
        endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls
    )

    async def work(operator: Any) -> None:
        with operator.watch() as documents:
            _print_json((await operator.get()).as_dict())
            seen = 0
            async for document in documents:
                _print_json(document.as_dict())
                seen += 1
                if count is not None and seen >= count:
                    return

    _run_operator(credentials, thing, name, timeout, verbose, work)


def _quiet_libraries(verbose: bool) -> None:
    """The demo and the simulator say what happens themselves; --verbose shows the logs too."""
    if not verbose:
        logging.getLogger("ancsync").setLevel(logging.WARNING)
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option("--duration", min=4, help="Seconds the simulated device runs.")
    ] = 15.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on the last line.")
    ] = False,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Certificates and the device's data go here.")
    ] = Path(".ancsync/demo"),
    rate: Annotated[
        float, typer.Option("--rate", min=0.5, max=100, help="ANC metrics records per second.")
    ] = 10.0,
    verbose: VerboseOption = False,
) -> None:
    """Run everything on this machine: emulator, a simulated ANC device, the cloud operator.

    The operator changes the desired ANC intensity and algorithm, the device hears a fire alarm,
    and the demo then checks both sides: every telemetry record stored, nothing dropped, the
    shadow converged, every emergency acknowledged and stored. Exit code 0 only if all hold.
    """
    import anyio
    import orjson
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table
    from rich.text import Text

    from ancsync.demo import DemoProgress, run_demo
    from ancsync.errors import AncSyncError

    setup_logging(verbose)
    _quiet_libraries(verbose)
    bar = Progress(
        TextColumn("[bold]{task.description:<32}"),
        BarColumn(bar_width=None),
        TimeRemainingColumn(),
        console=console,
        expand=True,
    )
    task = bar.add_task("starting", total=duration)
    counters = Text()

    def on_progress(progress: DemoProgress) -> None:
        counters.plain = (
            f"  connection {progress.connection} | telemetry {progress.records_published} "
            f"published, {progress.records_stored} stored | shadow v{progress.shadow_version}"
            f"{' in sync' if progress.shadow_in_sync else ''} | emergencies "
            f"{progress.emergencies_reported} reported, {progress.emergencies_stored} stored"
        )
        bar.update(task, completed=progress.elapsed, description=progress.phase)

    def on_event(text: str) -> None:
        console.print(f"  {text}", highlight=False, markup=False, soft_wrap=True)

    live = Group(bar, counters)
    try:
        with Live(live, console=console, transient=True, auto_refresh=console.is_terminal):
            summary = anyio.run(
                lambda: run_demo(
                    workdir, duration, rate=rate, on_progress=on_progress, on_event=on_event
                )
            )
    except KeyboardInterrupt:
        raise fail("demo interrupted", code=130) from None
    except AncSyncError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # e.g. a workdir that cannot be written
        raise fail(f"{exc.strerror or exc}: {exc.filename or workdir}; choose --workdir") from None

    table = Table(title=f"ancsync demo: {summary.thing_name} on {summary.endpoint}")
    table.add_column("check")
    table.add_column("device side", justify="right")
    table.add_column("cloud side", justify="right")
    table.add_row(
        "telemetry records",
        f"{summary.telemetry_records_published} published",
        f"{summary.telemetry_records_stored} stored",
    )
    table.add_row(
        "telemetry batches",
        f"{summary.telemetry_batches_sent} sent",
        f"{summary.telemetry_batches_stored} stored, {summary.seq_gaps} seq gaps",
    )
    table.add_row("dropped", str(summary.telemetry_dropped), "")
    desired = ", ".join(
        f"{k}={summary.shadow_desired.get(k)}" for k in ("anc_intensity", "anc_algorithm")
    )
    table.add_row(
        "shadow",
        f"version {summary.shadow_version}",
        f"desired {desired}: "
        + ("reported == desired" if summary.shadow_converged else "NOT in sync"),
    )
    table.add_row(
        "emergencies",
        f"{summary.emergencies_reported} reported, {summary.emergencies_acknowledged} PUBACKed",
        f"{summary.emergencies_stored} stored, "
        f"{summary.emergencies_cloud_acknowledged} acknowledged",
    )
    console.print(table)
    if summary.ok:
        console.print("[bold green]all checks passed[/]")
    else:
        for problem in summary.problems:
            err_console.print(f"[bold red]check failed:[/] {problem}", highlight=False)
    if json_output:
        console.print(
            orjson.dumps(summary.as_dict()).decode(), highlight=False, markup=False, soft_wrap=True
        )
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def simulate(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="JSON config file [default: ANCSYNC_CONFIG]; IOT_* variables override it.",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.1, help="Seconds to run [default: until Ctrl-C]."),
    ] = None,
    rate: Annotated[
        float, typer.Option("--rate", min=0.5, max=100, help="ANC metrics records per second.")
    ] = 10.0,
    fire_alarm_at: Annotated[
        float | None,
        typer.Option(
            "--fire-alarm-at", min=0, help="Report a fire alarm emergency after this many seconds."
        ),
    ] = None,
    firmware: Annotated[str, typer.Option("--firmware", help="Firmware version to report.")] = (
        "sim-1.0.0"
    ),
    verbose: VerboseOption = False,
) -> None:
    """Run a simulated ANC device against any endpoint: the emulator or AWS IoT Core.

    Settings come from the environment (IOT_ENDPOINT, IOT_THING_NAME, IOT_CERT_PATH,
    IOT_KEY_PATH, IOT_ROOT_CA_PATH...) and the config file. The device applies desired ANC
    state, publishes metrics and prints the final status as JSON when it stops (SIGINT/SIGTERM).
    """
    import signal

    import anyio
    import orjson

    from ancsync.errors import AncSyncError, ConfigError
    from ancsync.orchestrator import DataSyncOrchestrator
    from ancsync.simulator import SimulatedAncDevice, run_simulation

    setup_logging(verbose)
    _quiet_libraries(verbose)

    def on_event(text: str) -> None:
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    async def session() -> DataSyncOrchestrator:
        orchestrator = DataSyncOrchestrator(config_file=config, firmware_version=firmware)
        device = SimulatedAncDevice(orchestrator, rate=rate, on_event=on_event)
        settings = orchestrator.settings.iot
        on_event(
            f"simulating {orchestrator.thing_name} against {settings.endpoint}:{settings.port}"
        )
        async with anyio.create_task_group() as tasks:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        on_event(f"{signal.Signals(signum).name}: stopping")
                        tasks.cancel_scope.cancel()

            tasks.start_soon(stop_on_signal)
            await run_simulation(device, duration=duration, fire_alarm_at=fire_alarm_at)
            tasks.cancel_scope.cancel()
        return orchestrator

    try:
        orchestrator = anyio.run(session)
    except ConfigError as exc:
        raise fail(str(exc), code=2) from None
    except AncSyncError as exc:
        raise fail(str(exc)) from None
    console.print(
        orjson.dumps(orchestrator.get_status()).decode(),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _click_exception_class(name: str) -> type[Exception]:
    """One of click's exception classes. Typer vendors click privately; its public BadParameter
    derives from them, so they are found through it rather than by a private import."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)


def main() -> None:
    """Entry point of the ``ancsync`` script: a bad argument is one line on stderr, exit 2."""
    usage_error = _click_exception_class("UsageError")
    click_exception = _click_exception_class("ClickException")
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        ctx: Any = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            console.print(ctx.get_help(), markup=False, highlight=False)  # `ancsync shadow`
            raise SystemExit(0) from None
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        message: str = exc.format_message().rstrip(".")  # type: ignore[attr-defined]
        code = fail(f"{message}{hint}", code=2).exit_code
    except click_exception as exc:
        code = fail(exc.format_message(), code=getattr(exc, "exit_code", 1)).exit_code  # type: ignore[attr-defined]
    except typer.Abort:
        code = fail("interrupted", code=130).exit_code
    raise SystemExit(code if isinstance(code, int) else 0)
