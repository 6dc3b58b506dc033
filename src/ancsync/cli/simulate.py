"""``ancsync simulate``: a simulated ANC device against any endpoint
(see ancsync.tools.simulator)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ancsync.cli.options import JsonOption, VerboseOption
from ancsync.cli.output import (
    err_console,
    fail,
    print_json,
    print_line,
    setup_logging,
    show_progress,
)

if TYPE_CHECKING:
    from ancsync.status import OrchestratorStatus
    from ancsync.tools.fleet import FleetSummary


def simulate(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE",
            help="A .toml or .json config file; IOT_* variables override it.",
            show_default="ANCSYNC_CONFIG",
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            min=0.1,
            metavar="SECONDS",
            help="How long to run.",
            show_default="until Ctrl-C",
        ),
    ] = None,
    rate: Annotated[
        float,
        typer.Option(
            "--rate", min=0.5, max=100, metavar="PER_SECOND", help="ANC metrics records per second."
        ),
    ] = 10.0,
    fire_alarm_at: Annotated[
        float | None,
        typer.Option(
            "--fire-alarm-at",
            min=0,
            metavar="SECONDS",
            help="Report a fire alarm emergency after this many seconds.",
            show_default=False,
        ),
    ] = None,
    firmware: Annotated[
        str, typer.Option("--firmware", metavar="VERSION", help="Firmware version to report.")
    ] = "sim-1.0.0",
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout",
            min=0.1,
            metavar="SECONDS",
            help="Give up (exit code 1) when not connected within this time.",
        ),
    ] = 30.0,
    devices: Annotated[
        int,
        typer.Option(
            "--devices",
            min=1,
            metavar="N",
            help="Simulate N devices, each its own thing (--thing-prefix) and certificate.",
        ),
    ] = 1,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            min=1,
            metavar="P",
            help="Worker processes the devices are split over (each runs its share in one "
            "event loop).",
            show_default="one per core",
        ),
    ] = None,
    thing_prefix: Annotated[
        str,
        typer.Option(
            "--thing-prefix",
            metavar="PREFIX",
            help="With --devices above 1: the things are PREFIX001, PREFIX002...",
        ),
    ] = "anc-sim-",
    shadow_interval: Annotated[
        float | None,
        typer.Option(
            "--shadow-interval",
            min=0.1,
            metavar="SECONDS",
            help="Report the whole ANC state in the shadow every SECONDS.",
            show_default="5 with --devices above 1, never for one device",
        ),
    ] = None,
    certs_dir: Annotated[
        Path | None,
        typer.Option(
            "--certs-dir",
            file_okay=False,
            metavar="DIR",
            help="With --devices above 1: each device's certificate is DIR/THING/cert.pem "
            "and private.key (the emulator's layout).",
            show_default="two levels above IOT_CERT_PATH",
        ),
    ] = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run a simulated ANC device against any endpoint: the emulator or AWS IoT Core.

    Settings come from the environment (IOT_ENDPOINT, IOT_THING_NAME, IOT_CERT_PATH,
    IOT_KEY_PATH, IOT_ROOT_CA_PATH...) and the config file. The device applies desired ANC
    state and publishes metrics; when it stops (--duration, SIGINT, SIGTERM) it prints its final
    status (--json: get_status() as one JSON line). A device that never connected is a failure:
    exit code 1, with the reason.

    With --devices N it runs N devices (things PREFIX001...; start the emulator with a --thing
    for each) in --processes worker processes, and prints the fleet's totals instead.
    """
    import signal

    import anyio

    from ancsync.cli.probe import speaks_tls
    from ancsync.errors import ConfigError, ConnectError
    from ancsync.orchestrator import DataSyncOrchestrator
    from ancsync.tools.simulator import SimulatedAncDevice, run_simulation

    # The device tells its own story (on stderr, as events), the library's logs would repeat it.
    setup_logging(verbose, default=logging.CRITICAL)
    if devices > 1:
        _simulate_fleet(
            config,
            devices=devices,
            processes=processes,
            thing_prefix=thing_prefix,
            certs_dir=certs_dir,
            rate=rate,
            shadow_interval=5.0 if shadow_interval is None else shadow_interval,
            duration=duration,
            connect_timeout=connect_timeout,
            firmware=firmware,
            json_output=json_output,
        )
        return

    def on_event(text: str) -> None:
        if show_progress():
            err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    connected = False

    async def on_connect() -> None:
        nonlocal connected
        connected = True

    async def session(orchestrator: DataSyncOrchestrator) -> None:
        """Run the device until it ends, a signal stops it or it cannot connect (raised)."""
        device = SimulatedAncDevice(orchestrator, rate=rate, on_event=on_event)
        iot = orchestrator.settings.iot
        on_event(f"simulating {orchestrator.thing_name} against {iot.endpoint}:{iot.port}")
        failure: ConnectError | ConfigError | None = None
        async with anyio.create_task_group() as tasks:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        on_event(f"{signal.Signals(signum).name}: stopping")
                        tasks.cancel_scope.cancel()

            tasks.start_soon(stop_on_signal)
            try:
                await run_simulation(
                    device,
                    duration=duration,
                    fire_alarm_at=fire_alarm_at,
                    connect_timeout=connect_timeout,
                    shadow_interval=shadow_interval,
                )
            except (ConnectError, ConfigError) as exc:  # raised below, outside the task group
                failure = exc
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure

    # Built before the event loop runs: a bad setting ends here, with nothing started.
    orchestrator = DataSyncOrchestrator(config_file=config, firmware_version=firmware)
    iot = orchestrator.settings.iot
    orchestrator.connection.add_connect_hook(on_connect)
    failure: ConnectError | ConfigError | None = None
    try:
        anyio.run(session, orchestrator)
    except (ConnectError, ConfigError) as exc:
        failure = exc
    status = orchestrator.get_status()
    if json_output:
        print_json(status)
    else:
        _print_status(status)
    if connected:
        return
    if not iot.tls and anyio.run(speaks_tls, iot.endpoint, iot.port):
        raise fail(
            f"{iot.endpoint}:{iot.port} speaks TLS, and the settings ask for plain MQTT "
            "(IOT_TLS=false or iot.tls = false); use TLS with the device's certificate, or the "
            "port of an emulator started with --no-tls"
        )
    if failure is not None:
        raise failure
    last_error = status["connection"]["last_error"]
    raise fail(
        f"never connected to {iot.endpoint}:{iot.port}"
        + (f"; last error: {last_error['message']}" if last_error else "")
    )


def _simulate_fleet(
    config: Path | None,
    *,
    devices: int,
    processes: int | None,
    thing_prefix: str,
    certs_dir: Path | None,
    rate: float,
    shadow_interval: float,
    duration: float | None,
    connect_timeout: float,
    firmware: str,
    json_output: bool,
) -> None:
    """``simulate --devices N``: the fleet in worker processes, then its totals."""
    import functools
    import os

    import anyio

    from ancsync.config import Settings
    from ancsync.tools.fleet import FleetPlan, certs_dir_of, device_names, run_fleet

    things = device_names(thing_prefix, devices)

    def check_certificates(where: Path) -> None:
        missing = [t for t in things if not (where / t / "cert.pem").is_file()]
        if missing:
            raise fail(
                f"no certificate for {len(missing)} of the {devices} things in {where} (first: "
                f"{missing[0]}); start the emulator with --thing for each of "
                f"{things[0]}..{things[-1]}, or run `ancsync certs --certs-dir {where} --thing "
                f"{missing[0]} ...`"
            )

    first: dict[str, Path] = {}
    if certs_dir is not None:  # the first device's files stand for the settings' own
        check_certificates(certs_dir)
        first = {
            "cert_path": certs_dir / things[0] / "cert.pem",
            "key_path": certs_dir / things[0] / "private.key",
        }
    settings = Settings.load(config, thing_name=things[0], **first)
    iot = settings.iot
    where: Path | None = None
    if iot.tls:
        where = certs_dir_of(iot.cert_path, certs_dir)
        if where is None:
            raise fail(
                "--devices needs each device's certificate: pass --certs-dir DIR (the "
                "emulator's, with DIR/THING/cert.pem) or set IOT_CERT_PATH to one of them"
            )
        check_certificates(where)
    plan = FleetPlan(
        things=tuple(things),
        rate=rate,
        shadow_interval=shadow_interval,
        duration=duration,
        connect_timeout=connect_timeout,
        firmware=firmware,
        config=str(config) if config is not None else None,
        certs_dir=str(where) if where is not None else None,
    )
    workers = processes or os.cpu_count() or 1

    def on_event(text: str) -> None:
        if show_progress():
            err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    on_event(
        f"simulating {devices} devices ({things[0]}..{things[-1]}) in "
        f"{min(workers, devices)} processes against {iot.endpoint}:{iot.port}"
    )
    summary = anyio.run(
        functools.partial(
            run_fleet, plan, workers, endpoint=iot.endpoint, port=iot.port, on_event=on_event
        )
    )
    if json_output:
        print_json(summary)
    else:
        _print_fleet(summary)
    if summary["connected"] < summary["devices"]:
        raise fail(
            f"{summary['devices'] - summary['connected']} of the {summary['devices']} devices "
            f"never connected; first error: {summary['errors'][0] if summary['errors'] else '?'}"
        )


def _print_fleet(summary: FleetSummary) -> None:
    """The fleet's totals in a few lines."""
    print_line(
        f"{summary['devices']} devices in {summary['processes']} processes ran "
        f"{summary['elapsed_s']} s against {summary['endpoint']}:{summary['port']}, "
        f"{summary['connected']} connected"
    )
    print_line(
        f"{'telemetry':<12}{summary['records_accepted']} records accepted, "
        f"{summary['records_delivered']} delivered, {summary['records_dropped']} dropped; "
        f"{summary['batches_sent']} messages sent, {summary['batches_acknowledged']} acknowledged"
    )
    print_line(
        f"{'mqtt':<12}{summary['published']} publishes, {summary['acknowledged']} acknowledged"
    )
    print_line(f"{'shadow':<12}{summary['shadow_accepted']} requests accepted")
    print_line(f"{'errors':<12}{len(summary['errors']) or 'none'}")
    for error in summary["errors"][:10]:
        print_line(f"  {error}")


def _print_status(status: OrchestratorStatus) -> None:
    """The final status in a few lines: what the device sent and what the cloud confirmed."""
    connection, telemetry = status["connection"], status["telemetry"]
    records = telemetry["records"].values()
    emergency, shadow = status["emergency"], status["shadow"]
    print_line(
        f"{status['thing_name']} ran {status['uptime_s']} s against "
        f"{connection['endpoint']}:{connection['port']}, "
        f"{connection['reconnect_count']} reconnects"
    )
    print_line(
        f"{'telemetry':<12}{sum(r['accepted'] for r in records)} records accepted, "
        f"{sum(r['delivered'] for r in records)} delivered, {telemetry['dropped']} dropped"
    )
    print_line(
        f"{'emergencies':<12}{emergency['reported']} reported, "
        f"{emergency['acknowledged']} acknowledged by the broker, "
        f"{emergency['cloud_acknowledged']} by the cloud"
    )
    sync = "in sync" if shadow["in_sync"] else "not in sync"
    print_line(f"{'shadow':<12}version {shadow['version']}, {sync}")
