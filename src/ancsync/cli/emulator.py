"""``ancsync emulator`` and ``ancsync certs``: the local AWS IoT emulator and its certificates
(see ancsync.emulator)."""

from __future__ import annotations

import errno
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ancsync.cli.options import JsonOption, ThingsOption, VerboseOption
from ancsync.cli.output import EXIT_USAGE, fail, print_json, print_line, setup_logging

if TYPE_CHECKING:
    from ancsync.emulator.certs import DevCerts
    from ancsync.emulator.server import Emulator

CertsDirOption = Annotated[
    Path,
    typer.Option("--certs-dir", metavar="DIR", help="Where the dev CA and certificates live."),
]


def _check_session_expiry(seconds: float) -> float:
    """``--session-expiry``: seconds > 0, at most what AWS IoT Core allows (7 days)."""
    from ancsync.emulator.broker import MAX_SESSION_EXPIRY

    if not seconds > 0:
        raise typer.BadParameter(f"{seconds:g} is not a duration; use seconds > 0, e.g. 3600")
    if seconds > MAX_SESSION_EXPIRY:
        raise typer.BadParameter(
            f"{seconds:g} s is longer than AWS IoT Core allows: at most "
            f"{MAX_SESSION_EXPIRY:g} s (7 days)"
        )
    return seconds


def emulator(
    host: Annotated[
        str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", min=0, max=65535, metavar="PORT", help="MQTT port; 0 picks a free one."
        ),
    ] = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    things: ThingsOption = None,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            metavar="FILE",
            help="Rules sink database.",
            show_default="emulator.db beside the certificates directory",
        ),
    ] = None,
    no_tls: Annotated[
        bool, typer.Option("--no-tls", help="Plain MQTT without certificates (loopback only).")
    ] = False,
    console: Annotated[
        bool,
        typer.Option(
            "--console", help="Serve the web console (things, shadows, MQTT client, charts)."
        ),
    ] = False,
    console_host: Annotated[
        str,
        typer.Option(
            "--console-host",
            metavar="ADDRESS",
            help="Console address; not loopback needs --console-allow-remote and a token.",
        ),
    ] = "127.0.0.1",
    console_port: Annotated[
        int,
        typer.Option(
            "--console-port", min=0, max=65535, metavar="PORT", help="Console HTTP port; 0: free."
        ),
    ] = 8080,
    console_token: Annotated[
        str | None,
        typer.Option(
            "--console-token",
            metavar="TOKEN",
            envvar="ANCSYNC_CONSOLE_TOKEN",
            help="Require this token on every console request.",
        ),
    ] = None,
    console_allow_remote: Annotated[
        bool,
        typer.Option(
            "--console-allow-remote",
            help="Allow a non-loopback --console-host (the console acts as the operator).",
        ),
    ] = False,
    session_expiry: Annotated[
        float,
        typer.Option(
            "--session-expiry",
            metavar="SECONDS",
            callback=_check_session_expiry,
            help="How long a persistent session (clean_session=False) outlives its connection; "
            "AWS IoT Core allows up to 604800 (7 days).",
            show_default="3600: one hour, as AWS IoT Core",
        ),
    ] = 3600.0,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the local AWS IoT emulator: broker, Device Shadow, device policy, rules sink.

    Once it listens it prints where it is and the settings of each device, then a line starting
    with "ready:"; with --json, one JSON object instead. It runs until SIGINT or SIGTERM. With
    --console it also serves the web console (its address is printed before "ready:").
    """
    import anyio

    from ancsync.emulator.console.service import Console
    from ancsync.emulator.server import DEFAULT_THING, Emulator, serve_until_signalled
    from ancsync.errors import ConfigError

    setup_logging(verbose)
    db_path = db if db is not None else certs_dir.parent / "emulator.db"
    web: Console | None = None

    def print_ready(local: Emulator) -> None:
        console_url = web.url if web is not None else None
        if json_output:
            print_json({**_emulator_as_dict(local, db_path), "console": console_url})
        else:
            _print_emulator(local, db_path, console_url)

    local = Emulator(
        certs_dir,
        things or [DEFAULT_THING],
        host=host,
        port=port,
        tls=not no_tls,
        db_path=db_path,
        session_expiry=session_expiry,
    )
    try:
        if console:
            web = Console(
                local,
                host=console_host,
                port=console_port,
                token=console_token,
                allow_remote=console_allow_remote,
            )
        anyio.run(
            functools.partial(serve_until_signalled, local, print_ready, parts=[web] if web else [])
        )
    except ConfigError as exc:
        if _address_in_use(exc):
            raise fail(
                f"port {port} on {host} is already in use (another emulator or broker?); "
                "choose a free port or 0 (any free one) with --port",
                EXIT_USAGE,
            ) from None
        raise


def _address_in_use(exc: BaseException) -> bool:
    """Whether ``exc`` was caused, somewhere down its chain, by a port already taken."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _emulator_as_dict(local: Emulator, db_path: Path) -> dict[str, Any]:
    claim = local.certs.claim if local.tls else None
    return {
        "endpoint": local.host,
        "port": local.port,
        "tls": local.tls,
        "root_ca": str(local.certs.ca.resolve()) if local.tls else None,
        "operator_cert": str(local.certs.operator.cert.resolve()) if local.tls else None,
        "operator_key": str(local.certs.operator.key.resolve()) if local.tls else None,
        "claim_cert": str(claim.cert.resolve()) if claim is not None else None,
        "claim_key": str(claim.key.resolve()) if claim is not None else None,
        "provisioning_templates": [t.name for t in local.provisioning.templates()],
        "rules_db": str(db_path.resolve()),
        "session_expiry": local.session_expiry,
        "devices": {thing: local.device_settings(thing) for thing in local.things},
    }


def _print_emulator(local: Emulator, db_path: Path, console_url: str | None) -> None:
    security = "TLS, client certificate required" if local.tls else "plain MQTT, no TLS"
    print_line(f"{'endpoint':<12} {local.host}:{local.port} ({security})")
    if local.tls:
        print_line(f"{'root CA':<12} {local.certs.ca.resolve()}")
        operator = local.certs.operator
        print_line(f"{'operator':<12} {operator.cert.resolve()}, {operator.key.resolve()}")
        claim = local.certs.claim
        if claim is not None:
            templates = ", ".join(t.name for t in local.provisioning.templates()) or "none"
            print_line(
                f"{'claim':<12} {claim.cert.resolve()}, {claim.key.resolve()} (fleet provisioning "
                f"by claim, any client id; templates: {templates}; see docs/emulator.md)"
            )
    print_line(f"{'rules db':<12} {db_path.resolve()}")
    print_line(
        f"{'sessions':<12} persistent sessions kept {local.session_expiry:g} s after a disconnect"
    )
    for thing in local.things:
        print_line(f"\nDevice settings for {thing} (environment):")
        for name, value in local.device_settings(thing).items():
            print_line(f"{name}={value}")
    if console_url is not None:
        print_line(f"\n{'console':<12} {console_url}")
    print_line(f"\nready: emulator listening on {local.host}:{local.port} (Ctrl-C to stop)")


DevCertsDirOption = Annotated[
    Path,
    typer.Option("--certs-dir", metavar="DIR", help="Where to write the dev CA and certificates."),
]


def certs(
    certs_dir: DevCertsDirOption = Path(".ancsync/dev"),
    things: ThingsOption = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Create (or reuse) development certificates: a CA, the broker, the devices, an operator.

    The layout is the emulator's, so `ancsync emulator --certs-dir DIR` uses them as they are.
    Files still valid are kept; run it again to add a thing or renew what expired.
    """
    from ancsync.emulator.certs import ensure_dev_certs
    from ancsync.emulator.server import DEFAULT_THING

    setup_logging(verbose)
    try:
        created = ensure_dev_certs(certs_dir, things or [DEFAULT_THING])
    except OSError as exc:
        raise fail(f"cannot write certificates to {certs_dir}: {exc.strerror}") from None
    if json_output:
        print_json(_certs_as_dict(created))
        return
    print_line(f"{'root CA':<12} {created.ca.resolve()}")
    print_line(f"{'server':<12} {created.server.cert.resolve()} (localhost, 127.0.0.1, ::1)")
    operator = created.operator
    print_line(f"{'operator':<12} {operator.cert.resolve()}, {operator.key.resolve()}")
    for thing, settings in _device_settings(created).items():
        print_line(f"\nDevice settings for {thing} (environment; add IOT_ENDPOINT and IOT_PORT):")
        for name, value in settings.items():
            print_line(f"{name}={value}")


def _device_settings(created: DevCerts) -> dict[str, dict[str, str]]:
    """Each thing's certificate settings, as environment variables."""
    return {
        thing: {
            "IOT_THING_NAME": thing,
            "IOT_CERT_PATH": str(pair.cert.resolve()),
            "IOT_KEY_PATH": str(pair.key.resolve()),
            "IOT_ROOT_CA_PATH": str(created.ca.resolve()),
        }
        for thing, pair in created.devices.items()
    }


def _certs_as_dict(created: DevCerts) -> dict[str, Any]:
    return {
        "root_ca": str(created.ca.resolve()),
        "server_cert": str(created.server.cert.resolve()),
        "operator_cert": str(created.operator.cert.resolve()),
        "operator_key": str(created.operator.key.resolve()),
        "devices": _device_settings(created),
    }
