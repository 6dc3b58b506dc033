"""``ancsync shadow get|update|watch``: a Device Shadow as the cloud operator sees it
(see ancsync.tools.operator)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ancsync.cli.options import VerboseOption
from ancsync.cli.output import fail, print_json, setup_logging

if TYPE_CHECKING:
    from ancsync.tools.operator import OperatorCredentials, ShadowOperator

app = typer.Typer(
    help="Read, change and watch a Device Shadow as the cloud operator (over MQTT).",
    no_args_is_help=True,
)

ThingOption = Annotated[str, typer.Option("--thing", help="The thing whose shadow to use.")]
ShadowNameOption = Annotated[
    str | None, typer.Option("--name", help="A named shadow [default: the classic shadow].")
]
EndpointOption = Annotated[
    str, typer.Option("--endpoint", envvar="IOT_ENDPOINT", help="Broker host (no scheme).")
]
PortOption = Annotated[int, typer.Option("--port", envvar="IOT_PORT", help="MQTT port.")]
CertsDirOption = Annotated[
    Path,
    typer.Option(
        "--certs-dir",
        help="Emulator certificates: the operator certificate and CA are taken from here "
        "unless --cert/--key/--root-ca are given.",
    ),
]
CertOption = Annotated[
    Path | None,
    typer.Option(
        "--cert",
        envvar="ANCSYNC_OPERATOR_CERT_PATH",
        help="Operator certificate [default: CERTS_DIR/operator/cert.pem].",
        show_default=False,
    ),
]
KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="ANCSYNC_OPERATOR_KEY_PATH",
        help="Operator private key [default: CERTS_DIR/operator/private.key].",
        show_default=False,
    ),
]
RootCaOption = Annotated[
    Path | None,
    typer.Option(
        "--root-ca",
        envvar="IOT_ROOT_CA_PATH",
        help="CA of the broker [default: CERTS_DIR/ca.pem if it exists, else the system store].",
        show_default=False,
    ),
]
ClientIdOption = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        help="MQTT client id; never a thing name [default: ancsync-operator-<random>].",
        show_default=False,
    ),
]
NoTlsOption = Annotated[
    bool, typer.Option("--no-tls", help="Plain MQTT (an emulator started with --no-tls).")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the connection.")
]


def _credentials(
    endpoint: str,
    port: int,
    certs_dir: Path,
    cert: Path | None,
    key: Path | None,
    root_ca: Path | None,
    client_id: str | None,
    no_tls: bool,
) -> OperatorCredentials:
    from ancsync.tools.operator import OperatorCredentials, operator_client_id

    default_ca = certs_dir / "ca.pem"
    return OperatorCredentials(
        endpoint=endpoint,
        port=port,
        cert_path=cert or certs_dir / "operator" / "cert.pem",
        key_path=key or certs_dir / "operator" / "private.key",
        root_ca_path=root_ca or (default_ca if default_ca.exists() else None),
        client_id=client_id or operator_client_id(),
        tls=not no_tls,
    )


def _run_operator(
    credentials: OperatorCredentials,
    thing: str,
    shadow_name: str | None,
    timeout: float,
    verbose: bool,
    work: Callable[[ShadowOperator], Awaitable[None]],
    *,
    validate: bool = True,
) -> None:
    """Connect as the operator, run ``work(operator)``, turn known errors into one line."""
    import anyio

    from ancsync.errors import (
        AncSyncError,
        ConfigError,
        InvalidPayload,
        InvalidTopic,
        ShadowRejected,
    )
    from ancsync.models import AncDesiredState
    from ancsync.tools.operator import ShadowOperator

    setup_logging(verbose)
    if not verbose:  # the answer goes to stdout; say only what went wrong on stderr
        logging.getLogger("ancsync").setLevel(logging.WARNING)

    async def session() -> None:
        operator = ShadowOperator(
            credentials.connection(connect_timeout=timeout),
            thing,
            shadow_name,
            desired_model=AncDesiredState if validate and shadow_name is None else None,
            connect_timeout=timeout,
        )
        async with operator:
            await work(operator)

    try:
        anyio.run(session)
    except KeyboardInterrupt:
        return
    except (ConfigError, InvalidPayload, InvalidTopic) as exc:
        raise fail(str(exc), code=2) from None
    except ShadowRejected as exc:
        hint = {
            403: "; the operator certificate's policy must allow the shadow topics of this thing",
            404: f"; thing {thing!r} has no such shadow yet",
        }.get(exc.code, "")
        raise fail(f"{exc}{hint}") from None
    except AncSyncError as exc:
        raise fail(str(exc)) from None


@app.command("get")
def get(
    thing: ThingOption,
    name: ShadowNameOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    verbose: VerboseOption = False,
) -> None:
    """Print the shadow as one JSON object: version, desired, reported and delta."""
    credentials = _credentials(endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)

    async def work(operator: ShadowOperator) -> None:
        print_json((await operator.get()).as_dict())

    _run_operator(credentials, thing, name, timeout, verbose, work)


def _parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``key=value`` words as a dict; a value is read as JSON when it parses, else as text."""
    import orjson

    values: dict[str, Any] = {}
    for word in assignments:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"{word!r} is not KEY=VALUE; e.g. anc_intensity=0.9 anc_algorithm=fxlms "
                "(null deletes a key)"
            )
        try:
            values[key] = orjson.loads(text)
        except orjson.JSONDecodeError:
            values[key] = text
    return values


@app.command("update")
def update(
    thing: ThingOption,
    assignments: Annotated[
        list[str] | None,
        typer.Argument(
            help="Desired values as KEY=VALUE (VALUE read as JSON when it parses: 0.9, true, "
            "null deletes).",
            show_default=False,
        ),
    ] = None,
    desired_json: Annotated[
        str | None,
        typer.Option(
            "--desired", help="Desired values as one JSON object: '{\"anc_intensity\": 0.9}'"
        ),
    ] = None,
    no_validate: Annotated[
        bool,
        typer.Option(
            "--no-validate", help="Send keys the ANC desired state does not know (other schemas)."
        ),
    ] = False,
    name: ShadowNameOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    verbose: VerboseOption = False,
) -> None:
    """Set desired state; print the shadow as accepted. The device applies what it can.

    Example: ancsync shadow update --thing anc-device-001 anc_intensity=0.9 anc_algorithm=fxlms
    """
    import orjson

    desired = _parse_assignments(assignments or [])
    if desired_json is not None:
        try:
            parsed = orjson.loads(desired_json)
        except orjson.JSONDecodeError as exc:
            raise fail(
                f"--desired is not valid JSON ({exc}); e.g. '{{\"anc_intensity\": 0.9}}'", 2
            ) from None
        if not isinstance(parsed, dict):
            raise fail("--desired must be a JSON object, e.g. '{\"anc_intensity\": 0.9}'", 2)
        desired.update(parsed)
    if not desired:
        raise fail("nothing to update: give KEY=VALUE arguments or --desired JSON", 2)
    if not no_validate and name is None:  # before connecting: a typo costs no round trip
        from ancsync.errors import InvalidPayload
        from ancsync.models import AncDesiredState
        from ancsync.shadow.document import as_patch

        try:
            as_patch(desired, AncDesiredState, "desired state")
        except InvalidPayload as exc:
            raise fail(f"{exc} (--no-validate sends it anyway)", 2) from None
    credentials = _credentials(endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)

    async def work(operator: ShadowOperator) -> None:
        print_json((await operator.update_desired(desired)).as_dict())

    _run_operator(credentials, thing, name, timeout, verbose, work, validate=not no_validate)


@app.command("watch")
def watch(
    thing: ThingOption,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="Stop after this many changes [default: Ctrl-C]."),
    ] = None,
    name: ShadowNameOption = None,
    endpoint: EndpointOption = "127.0.0.1",
    port: PortOption = 8883,
    certs_dir: CertsDirOption = Path(".ancsync/dev"),
    cert: CertOption = None,
    key: KeyOption = None,
    root_ca: RootCaOption = None,
    client_id: ClientIdOption = None,
    no_tls: NoTlsOption = False,
    timeout: TimeoutOption = 15.0,
    verbose: VerboseOption = False,
) -> None:
    """Print the shadow now, then one JSON line per accepted change, until Ctrl-C or --count."""
    credentials = _credentials(endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls)

    async def work(operator: ShadowOperator) -> None:
        with operator.watch() as documents:
            print_json((await operator.get()).as_dict())
            seen = 0
            async for document in documents:
                print_json(document.as_dict())
                seen += 1
                if count is not None and seen >= count:
                    return

    _run_operator(credentials, thing, name, timeout, verbose, work)
