"""``ancsync shadow get|update|watch``: a Device Shadow as the cloud operator sees it
(see ancsync.tools.operator)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ancsync.cli.options import JsonOption, VerboseOption
from ancsync.cli.output import (
    EXIT_USAGE,
    fail,
    print_json,
    print_line,
    reports_errors,
    setup_logging,
)

if TYPE_CHECKING:
    from ancsync.tools.operator import OperatorCredentials, ShadowDocument, ShadowOperator

app = typer.Typer(
    help="Read, change and watch a Device Shadow as the cloud operator (over MQTT).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _check_endpoint(value: str) -> str:
    from ancsync.config import check_endpoint

    try:
        return check_endpoint(value, port_setting="--port")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _check_client_id(value: str | None) -> str | None:
    from ancsync.errors import InvalidTopic
    from ancsync.topics import validate_thing_name

    try:  # AWS IoT takes a thing name's characters in a client id
        return None if value is None else validate_thing_name(value)
    except InvalidTopic as exc:
        raise typer.BadParameter(str(exc).replace("thing name", "client id", 1)) from None


# A file given on the command line is checked by the option itself, so an error names it.
_PEM_FILE: dict[str, Any] = {
    "exists": True,
    "dir_okay": False,
    "readable": True,
    "metavar": "FILE",
}

ThingOption = Annotated[
    str, typer.Option("--thing", metavar="NAME", help="The thing whose shadow to use.")
]
ShadowNameOption = Annotated[
    str | None,
    typer.Option(
        "--name",
        metavar="SHADOW",
        help="A named shadow.",
        show_default="the classic shadow",
    ),
]
EndpointOption = Annotated[
    str,
    typer.Option(
        "--endpoint",
        envvar="IOT_ENDPOINT",
        metavar="HOST",
        callback=_check_endpoint,
        help="Broker host, without scheme or port.",
    ),
]
PortOption = Annotated[
    int,
    typer.Option("--port", envvar="IOT_PORT", min=1, max=65535, metavar="PORT", help="MQTT port."),
]
CertsDirOption = Annotated[
    Path,
    typer.Option(
        "--certs-dir",
        metavar="DIR",
        help="Emulator certificates: the operator certificate and CA are taken from here "
        "unless --cert, --key or --root-ca is given.",
    ),
]
CertOption = Annotated[
    Path | None,
    typer.Option(
        "--cert",
        envvar="ANCSYNC_OPERATOR_CERT_PATH",
        help="Operator certificate.",
        show_default="CERTS_DIR/operator/cert.pem",
        **_PEM_FILE,
    ),
]
KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="ANCSYNC_OPERATOR_KEY_PATH",
        help="Operator private key.",
        show_default="CERTS_DIR/operator/private.key",
        **_PEM_FILE,
    ),
]
RootCaOption = Annotated[
    Path | None,
    typer.Option(
        "--root-ca",
        envvar="IOT_ROOT_CA_PATH",
        help="CA of the broker.",
        show_default="CERTS_DIR/ca.pem if it exists, else the system trust store",
        **_PEM_FILE,
    ),
]
ClientIdOption = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        metavar="ID",
        callback=_check_client_id,
        help="MQTT client id; never a thing name.",
        show_default="ancsync-operator-RANDOM",
    ),
]
NoTlsOption = Annotated[
    bool, typer.Option("--no-tls", help="Plain MQTT (an emulator started with --no-tls).")
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout", min=0.1, metavar="SECONDS", help="How long to wait for the connection."
    ),
]


def credentials_from_options(
    endpoint: str,
    port: int,
    certs_dir: Path,
    cert: Path | None,
    key: Path | None,
    root_ca: Path | None,
    client_id: str | None,
    no_tls: bool,
) -> OperatorCredentials:
    """Where and as whom to connect; a missing default file names the option that would fix it."""
    from ancsync.config import is_loopback
    from ancsync.tools.operator import OperatorCredentials, operator_client_id

    if no_tls and not is_loopback(endpoint):
        raise fail(
            f"--no-tls (plain MQTT) is allowed only to a loopback host (127.0.0.0/8, ::1, "
            f"localhost), and --endpoint is {endpoint}; connect with TLS",
            EXIT_USAGE,
        )
    if not no_tls:
        for path, what, option in [
            (cert or certs_dir / "operator" / "cert.pem", "certificate", "--cert"),
            (key or certs_dir / "operator" / "private.key", "private key", "--key"),
        ]:
            if not path.is_file():  # a default under --certs-dir: given ones click checked
                raise fail(
                    f"no operator {what}: {path} does not exist; give the emulator's "
                    f"--certs-dir, or {option}, or create them with `ancsync certs`",
                    EXIT_USAGE,
                )
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
    until_interrupted: bool = False,
) -> None:
    """Connect as the operator and run ``work(operator)``. Known errors go up to the command
    line's handler, which prints each once; only the hints specific to shadows are added here.

    ``until_interrupted``: Ctrl-C is how the command normally ends (exit code 0).
    """
    import anyio

    from ancsync.cli.probe import speaks_tls
    from ancsync.errors import ConnectError, ShadowRejected
    from ancsync.models import AncDesiredState
    from ancsync.tools.operator import ShadowOperator

    # The outcome is one line (the answer, or the error): the connection's retry warnings and
    # its own report of a refusal would say the same thing twice.
    setup_logging(verbose, default=logging.CRITICAL)

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
        if not until_interrupted:
            raise
    except ConnectError:
        if not credentials.tls and anyio.run(speaks_tls, credentials.endpoint, credentials.port):
            raise fail(
                f"{credentials.endpoint}:{credentials.port} speaks TLS, and --no-tls asked for "
                "plain MQTT; drop --no-tls, or give the port of an emulator started with --no-tls"
            ) from None
        raise
    except ShadowRejected as exc:
        hint = {
            403: "; the operator certificate's policy must allow the shadow topics of this thing",
            404: f"; thing {thing!r} has no such shadow yet",
        }.get(exc.code, "")
        raise fail(f"{exc}{hint}") from None


def _show(document: ShadowDocument, json_output: bool) -> None:
    if json_output:
        print_json(document.as_dict())
        return
    shadow = f"{document.shadow_name!r} shadow" if document.shadow_name else "classic shadow"
    if not document.exists:
        print_line(f"{document.thing_name}: no {shadow} yet")
        return
    sync = "in sync" if document.converged else "not in sync"
    print_line(f"{document.thing_name}, {shadow}, version {document.version}: {sync}")
    for label in ("desired", "reported", "delta"):
        print_line(f"  {label:<9}{_assignments(getattr(document, label)) or '-'}")


def _assignments(values: dict[str, Any], prefix: str = "") -> str:
    """``{"a": 1, "b": {"c": true}}`` as ``a=1 b.c=true``: values as JSON, nesting as dots."""
    import orjson

    words = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            words.append(_assignments(value, f"{prefix}{key}."))
        else:
            words.append(f"{prefix}{key}={orjson.dumps(value).decode()}")
    return " ".join(words)


@app.command("get", short_help="Print the shadow: version, desired, reported, delta.")
@reports_errors
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
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Print the shadow: its version, desired, reported and delta (--json: one JSON object)."""
    credentials = credentials_from_options(
        endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls
    )

    async def work(operator: ShadowOperator) -> None:
        _show(await operator.get(), json_output)

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


@app.command("update", short_help="Set desired state; print the shadow as accepted.")
@reports_errors
def update(
    thing: ThingOption,
    assignments: Annotated[
        list[str] | None,
        # Explained in the docstring: an argument's help line would show its type, list[str].
        typer.Argument(metavar="KEY=VALUE", hidden=True, show_default=False),
    ] = None,
    desired_json: Annotated[
        str | None,
        typer.Option(
            "--desired",
            metavar="JSON",
            help="Desired values as one JSON object: '{\"anc_intensity\": 0.9}'.",
            show_default=False,
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
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Set desired state; print the shadow as accepted. The device applies what it can.

    Each KEY=VALUE is a desired value: VALUE is read as JSON when it parses (0.9, true, "text"),
    as text otherwise, and null deletes the key. For example:

    \b
    ancsync shadow update --thing anc-device-001 anc_intensity=0.9 anc_algorithm=fxlms
    """
    import orjson

    desired = _parse_assignments(assignments or [])
    if desired_json is not None:
        try:
            parsed = orjson.loads(desired_json)
        except orjson.JSONDecodeError as exc:
            raise fail(
                f"--desired is not valid JSON ({exc}); e.g. '{{\"anc_intensity\": 0.9}}'",
                EXIT_USAGE,
            ) from None
        if not isinstance(parsed, dict):
            raise fail("--desired must be a JSON object, e.g. '{\"anc_intensity\": 0.9}'", 2)
        desired.update(parsed)
    if not desired:
        raise fail("nothing to update: give KEY=VALUE arguments or --desired JSON", EXIT_USAGE)
    if not no_validate and name is None:  # before connecting: a typo costs no round trip
        from ancsync.errors import InvalidPayload
        from ancsync.models import AncDesiredState
        from ancsync.shadow.document import as_patch

        try:
            as_patch(desired, AncDesiredState, "desired state")
        except InvalidPayload as exc:
            raise fail(f"{exc} (--no-validate sends it anyway)", EXIT_USAGE) from None
    credentials = credentials_from_options(
        endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls
    )

    async def work(operator: ShadowOperator) -> None:
        _show(await operator.update_desired(desired), json_output)

    _run_operator(credentials, thing, name, timeout, verbose, work, validate=not no_validate)


@app.command("watch", short_help="Print the shadow at each accepted change.")
@reports_errors
def watch(
    thing: ThingOption,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            min=1,
            metavar="N",
            help="Stop after this many changes.",
            show_default="at Ctrl-C",
        ),
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
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Print the shadow now, then again at each accepted change, until Ctrl-C or --count.

    With --json, each is one JSON line. Ctrl-C ends it with exit code 0.
    """
    credentials = credentials_from_options(
        endpoint, port, certs_dir, cert, key, root_ca, client_id, no_tls
    )

    async def work(operator: ShadowOperator) -> None:
        with operator.watch() as documents:
            _show(await operator.get(), json_output)
            seen = 0
            async for document in documents:
                _show(document, json_output)
                seen += 1
                if count is not None and seen >= count:
                    return

    _run_operator(credentials, thing, name, timeout, verbose, work, until_interrupted=True)
