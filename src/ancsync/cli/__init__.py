"""The ``ancsync`` command line.

Each command lives in a module named after it and is thin: it parses arguments, sets up logging
and rich output, and calls the module that does the work, imported inside the command so that
``ancsync --help`` stays quick. A bad argument or a known error ends with a one-line message and
exit code 2 (usage) or 1 (failure), never a traceback.
"""

from __future__ import annotations

from typing import Any

import typer

from ancsync.cli import demo, emulator, provision, shadow, simulate
from ancsync.cli.output import console, fail

__all__ = ["app", "main"]

app = typer.Typer(
    name="ancsync",
    help="Keep ANC devices in sync with AWS IoT Core, and run a local AWS IoT emulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Keep ANC devices in sync with AWS IoT Core, and run a local AWS IoT emulator."""


# In the order `ancsync --help` lists them.
app.command()(provision.provision)
app.command()(emulator.emulator)
app.command()(emulator.certs)
app.add_typer(shadow.app, name="shadow")
app.command()(demo.demo)
app.command()(simulate.simulate)


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
