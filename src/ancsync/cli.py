"""The ``ancsync`` command line.

Each command is a thin wrapper: it parses arguments, sets up logging and rich output, and calls the
module that does the work. A bad argument or a known error ends with a one-line message and exit
code 2 (usage) or 1 (failure), never a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

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


def main() -> None:
    """Entry point of the ``ancsync`` script."""
    app()
