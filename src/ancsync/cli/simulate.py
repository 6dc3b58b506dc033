"""``ancsync simulate``: a simulated ANC device against any endpoint
(see ancsync.tools.simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ancsync.cli.options import VerboseOption
from ancsync.cli.output import err_console, fail, print_json, quiet_libraries, setup_logging

if TYPE_CHECKING:
    from ancsync.orchestrator import DataSyncOrchestrator


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

    from ancsync.errors import AncSyncError, ConfigError
    from ancsync.orchestrator import DataSyncOrchestrator
    from ancsync.tools.simulator import SimulatedAncDevice, run_simulation

    setup_logging(verbose)
    quiet_libraries(verbose)

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
    print_json(orchestrator.get_status())
