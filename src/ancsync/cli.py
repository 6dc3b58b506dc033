"""The ``ancsync`` command line.

Each command is a thin wrapper: it parses arguments, sets up logging and rich output, and calls the
module that does the work. A bad argument or a known error ends with a one-line message and exit
code 2 (usage) or 1 (failure), never a traceback.
"""

from __future__ import annotations

import logging

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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@app.callback()
def _root() -> None:
    """Keep ANC devices in sync with AWS IoT Core, and run a local AWS IoT emulator."""


def main() -> None:
    """Entry point of the ``ancsync`` script."""
    app()
