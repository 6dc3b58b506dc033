"""What every command shares: the consoles, logging and --quiet, the one-line error, JSON."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

#: Exit codes of every command (docs/cli.md): a usage error is a bad argument, option, setting
#: or config file; a failure is anything else that went wrong (connect, refused, a check).
EXIT_FAILURE = 1
EXIT_USAGE = 2
# Ctrl-C ends a command with 130 (128 + SIGINT, the shell's convention): typer does it.


@dataclass
class Verbosity:
    """The root command's ``--log-level`` and ``--quiet``, read by every command."""

    log_level: int | None = None
    quiet: bool = False


verbosity = Verbosity()


def setup_logging(verbose: bool, default: int = logging.INFO) -> None:
    """Send logs to stderr through rich, at the level the user chose.

    That is DEBUG with a command's ``--verbose``, else the root's ``--log-level``, else ERROR
    with ``--quiet``, else ``default``: each command's own, as a one-shot command that reports
    its outcome itself needs fewer logs than a server.
    """
    from rich.logging import RichHandler

    if verbose:
        level = logging.DEBUG
    elif verbosity.log_level is not None:
        level = verbosity.log_level
    else:
        level = logging.ERROR if verbosity.quiet else default
    logging.basicConfig(
        level=level,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    if level > logging.DEBUG:
        # amqtt narrates every step and logs tracebacks for failures ancsync reports in its own
        # words (a taken port, a refused client); botocore says where it found credentials.
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        logging.getLogger("botocore").setLevel(max(level, logging.WARNING))


def show_progress() -> bool:
    """Whether to show what is going on (live progress, events): not with ``--quiet``."""
    return not verbosity.quiet


P = ParamSpec("P")


def reports_errors(command: Callable[P, None]) -> Callable[P, None]:
    """``command`` with the library's errors turned into one line and their exit code: the
    input's errors (a setting, a config file, a topic, a payload) are usage errors, the rest
    failures. Every command is wrapped, so each reports the same error the same way."""
    from ancsync.errors import AncSyncError, ConfigError, InvalidPayload, InvalidTopic

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except (ConfigError, InvalidTopic, InvalidPayload) as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except AncSyncError as exc:
            raise fail(str(exc), EXIT_FAILURE) from None

    return run


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Print a one-line error and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def print_line(text: str) -> None:
    """Print ``text`` to stdout as it is: no markup, highlighting or wrapping (paths, JSON)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def print_json(value: Any) -> None:
    """Print ``value`` as one line of JSON on stdout."""
    import orjson

    print_line(orjson.dumps(value, default=str).decode())  # default: paths as text
