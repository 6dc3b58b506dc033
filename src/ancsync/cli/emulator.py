"""``ancsync emulator`` and ``ancsync certs``: the local AWS IoT emulator and its certificates
(see ancsync.emulator)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ancsync.cli.options import ThingsOption, VerboseOption
from ancsync.cli.output import fail, print_line, quiet_amqtt, setup_logging

if TYPE_CHECKING:
    from ancsync.emulator.server import Emulator

CertsDirOption = Annotated[
    Path, typer.Option("--certs-dir", help="Where the dev CA and certificates live.")
]


def emulator(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="MQTT port; 0 picks a free one.")] = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    things: ThingsOption = None,
    db: Annotated[
        Path | None,
        typer.Option("--db", help="Rules sink database [default: emulator.db next to certs-dir]"),
    ] = None,
    no_tls: Annotated[
        bool, typer.Option("--no-tls", help="Plain MQTT without certificates (loopback only).")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the local AWS IoT emulator: broker, Device Shadow, device policy, rules sink."""
    import anyio

    from ancsync.emulator.server import DEFAULT_THING, Emulator, serve_until_signalled
    from ancsync.errors import AncSyncError, ConfigError, InvalidTopic

    setup_logging(verbose)
    if not verbose:
        quiet_amqtt()
    db_path = db if db is not None else certs_dir.parent / "emulator.db"

    def print_ready(local: Emulator) -> None:
        security = "TLS, client certificate required" if local.tls else "plain MQTT, no TLS"
        print_line(f"{'endpoint':<12} {local.host}:{local.port} ({security})")
        if local.tls:
            print_line(f"{'root CA':<12} {local.certs.ca.resolve()}")
            operator = local.certs.operator
            print_line(f"{'operator':<12} {operator.cert.resolve()}, {operator.key.resolve()}")
        print_line(f"{'rules db':<12} {db_path.resolve()}")
        for thing in local.things:
            print_line(f"\nDevice settings for {thing} (environment):")
            for name, value in local.device_settings(thing).items():
                print_line(f"{name}={value}")
        print_line(f"\nready: emulator listening on {local.host}:{local.port} (Ctrl-C to stop)")

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


def certs(
    certs_dir: Annotated[
        Path, typer.Option("--certs-dir", help="Where to write the dev CA and certificates.")
    ] = Path(".ancsync/dev"),
    things: ThingsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Create (or reuse) development certificates: a CA, the broker, the devices, an operator.

    The layout is the emulator's, so `ancsync emulator --certs-dir DIR` uses them as they are.
    Files still valid are kept; run it again to add a thing or renew what expired.
    """
    from ancsync.emulator.certs import ensure_dev_certs
    from ancsync.emulator.server import DEFAULT_THING
    from ancsync.errors import AncSyncError

    setup_logging(verbose)
    try:
        created = ensure_dev_certs(certs_dir, things or [DEFAULT_THING])
    except AncSyncError as exc:
        raise fail(str(exc), code=2) from None
    except OSError as exc:
        raise fail(f"cannot write certificates to {certs_dir}: {exc.strerror}") from None

    print_line(f"{'root CA':<12} {created.ca.resolve()}")
    print_line(f"{'server':<12} {created.server.cert.resolve()} (localhost, 127.0.0.1, ::1)")
    operator = created.operator
    print_line(f"{'operator':<12} {operator.cert.resolve()}, {operator.key.resolve()}")
    for thing, pair in created.devices.items():
        print_line(f"\nDevice settings for {thing} (environment; add IOT_ENDPOINT and IOT_PORT):")
        print_line(f"IOT_THING_NAME={thing}")
        print_line(f"IOT_CERT_PATH={pair.cert.resolve()}")
        print_line(f"IOT_KEY_PATH={pair.key.resolve()}")
        print_line(f"IOT_ROOT_CA_PATH={created.ca.resolve()}")
