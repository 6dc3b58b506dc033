"""What every command shares: the rich consoles, logging set-up and the one-line error."""

from __future__ import annotations

import logging
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def setup_logging(verbose: bool) -> None:
    """Send library logs to stderr through rich; DEBUG with ``--verbose``."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )


def quiet_amqtt() -> None:
    """amqtt narrates every step and logs tracebacks for failures ancsync reports in its own
    words (a taken port, a refused client); ``--verbose`` shows them."""
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def quiet_libraries(verbose: bool) -> None:
    """The demo and the simulator say what happens themselves; --verbose shows the logs too."""
    if not verbose:
        logging.getLogger("ancsync").setLevel(logging.WARNING)
        quiet_amqtt()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def print_line(text: str) -> None:
    """Print ``text`` to stdout as it is: no markup, highlighting or wrapping (paths, JSON)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def print_json(value: Any) -> None:
    """Print ``value`` as one line of JSON on stdout."""
    import orjson

    print_line(orjson.dumps(value).decode())
