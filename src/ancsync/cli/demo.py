"""``ancsync demo``: the emulator, a simulated device and the cloud operator on this machine,
with live progress and a summary table (see ancsync.tools.demo)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ancsync.cli.options import JsonOption, VerboseOption
from ancsync.cli.output import console, err_console, fail, print_json, setup_logging, show_progress

if TYPE_CHECKING:
    from rich.table import Table

    from ancsync.tools.demo import DemoSummary


def demo(
    duration: Annotated[
        float,
        typer.Option("--duration", min=4, metavar="SECONDS", help="How long the device runs."),
    ] = 15.0,
    json_output: JsonOption = False,
    workdir: Annotated[
        Path,
        typer.Option(
            "--workdir", metavar="DIR", help="Certificates and the device's data go here."
        ),
    ] = Path(".ancsync/demo"),
    rate: Annotated[
        float,
        typer.Option(
            "--rate", min=0.5, max=100, metavar="PER_SECOND", help="ANC metrics records per second."
        ),
    ] = 10.0,
    with_console: Annotated[
        bool,
        typer.Option("--console", help="Also serve the emulator's web console (a free port)."),
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run everything on this machine: emulator, a simulated ANC device, the cloud operator.

    The operator changes the desired ANC intensity and algorithm, the device hears a fire alarm,
    and the demo then checks both sides: every telemetry record stored, nothing dropped, the
    shadow converged, every emergency acknowledged and stored. Exit code 0 only if all hold.
    With --json the summary is also printed as one JSON object, on the last line.
    """
    import anyio
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.text import Text

    from ancsync.tools.demo import DemoProgress, run_demo

    setup_logging(verbose, default=logging.WARNING)  # the demo says what happens itself
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
        if show_progress():
            console.print(f"  {text}", highlight=False, markup=False, soft_wrap=True)

    live = Live(
        Group(bar, counters), console=console, transient=True, auto_refresh=console.is_terminal
    )
    try:
        with live if show_progress() else contextlib.nullcontext():
            summary = anyio.run(
                lambda: run_demo(
                    workdir,
                    duration,
                    rate=rate,
                    on_progress=on_progress,
                    on_event=on_event,
                    console=with_console,
                )
            )
    except OSError as exc:  # e.g. a workdir that cannot be written
        raise fail(f"{exc.strerror or exc}: {exc.filename or workdir}; choose --workdir") from None

    console.print(_summary_table(summary))
    if summary.ok:
        console.print("[bold green]all checks passed[/]")
    else:
        for problem in summary.problems:
            err_console.print(f"[bold red]check failed:[/] {problem}", highlight=False)
    if json_output:
        print_json(summary.as_dict())
    if not summary.ok:
        raise typer.Exit(1)


def _summary_table(summary: DemoSummary) -> Table:
    """Each check with what the device says next to what the cloud side stored."""
    from rich.table import Table

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
    table.add_row("noise-model job", f"applied {summary.job_applied_model}", summary.job_status)
    return table
