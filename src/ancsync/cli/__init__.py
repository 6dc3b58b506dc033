"""The ``ancsync`` command line.

Each command lives in a module named after it and is thin: it parses arguments, sets up logging
and output, and calls the module that does the work, imported inside the command so that
``ancsync --help`` stays quick. Every error ends as one line on stderr, never a traceback, with
one exit code per kind (see :mod:`ancsync.cli.output`): 2 for a usage error, 1 for a failure,
130 after Ctrl-C (typer's own, quietly). Each command is wrapped in
:func:`~ancsync.cli.output.reports_errors`, which turns the library's errors into those, so a
command lets them go up as they are.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated, Any

import typer

from ancsync.cli import certs, demo, emulator, jobs, provision, shadow, simulate
from ancsync.cli.output import (
    EXIT_FAILURE,
    EXIT_USAGE,
    err_console,
    fail,
    print_line,
    reports_errors,
    verbosity,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="ancsync",
    help="Keep ANC devices in sync with AWS IoT Core, and run a local AWS IoT emulator.",
    no_args_is_help=True,
    # Plain help: paragraphs re-wrapped to the terminal, no <bool> or <str> type labels.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


class LogLevel(StrEnum):
    """The values of ``--log-level``."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def _print_version(value: bool) -> None:
    if value:
        from ancsync._version import __version__

        print_line(f"ancsync {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            case_sensitive=False,
            metavar="LEVEL",
            help="Show logs on stderr from this level up: debug, info, warning or error.",
            show_default="each command's own",
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress and no logs below errors; results only."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Keep ANC devices in sync with AWS IoT Core, and run a local AWS IoT emulator.

    Global options go before the command: ancsync --quiet demo.
    """
    if log_level is not None:
        verbosity.log_level = logging.getLevelNamesMapping()[log_level.value.upper()]
    verbosity.quiet = quiet


# In the order `ancsync --help` lists them, each with a line short enough not to be cut.
app.command(short_help="Give a device its certificate: boto3, or by claim.")(
    reports_errors(provision.provision)
)
app.command(short_help="Run the local AWS IoT emulator.")(reports_errors(emulator.emulator))
app.add_typer(
    certs.app, name="certs", short_help="Dev certificates; list, revoke and rotate certificates."
)
app.add_typer(shadow.app, name="shadow", short_help="Read, change and watch a Device Shadow.")
app.add_typer(jobs.app, name="jobs", short_help="Create, list, describe and cancel IoT Jobs.")
app.command(short_help="Run everything on this machine and check both sides.")(
    reports_errors(demo.demo)
)
app.command(short_help="Run a simulated ANC device against any endpoint.")(
    reports_errors(simulate.simulate)
)


def _click_exception_class(name: str) -> type[Exception]:
    """One of click's exception classes. Typer vendors click privately; its public BadParameter
    derives from them, so they are found through it rather than by a private import."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)


def main() -> None:
    """Entry point of the ``ancsync`` script: run the command, exit with its code."""
    raise SystemExit(_run())


def _run() -> int:
    """The command's exit code; a usage error is one line on stderr (the help, when no command).

    The commands report the library's errors themselves (:func:`reports_errors`); what is left
    are click's, raised before a command runs.
    """
    usage_error = _click_exception_class("UsageError")
    click_exception = _click_exception_class("ClickException")
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        ctx: Any = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `ancsync`, `ancsync shadow`: the help
            err_console.print(exc.format_message(), markup=False, highlight=False)  # type: ignore[attr-defined]
            return EXIT_USAGE
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        message: str = exc.format_message().rstrip(".")  # type: ignore[attr-defined]
        return fail(f"{message}{hint}", EXIT_USAGE).exit_code
    except click_exception as exc:
        return fail(exc.format_message(), getattr(exc, "exit_code", EXIT_FAILURE)).exit_code  # type: ignore[attr-defined]
    return code if isinstance(code, int) else 0
