"""Settings: where the SDK connects and how it batches, from arguments, environment and a file.

Use :meth:`Settings.load`. It layers, highest first: explicit arguments, environment variables,
the config file (TOML or JSON), defaults. Every bad value raises
:class:`~ancsync.errors.ConfigError` with a message that names the setting the way the user wrote
it (``IOT_PORT`` for the environment, ``iot.port`` for the file), the value, and what is allowed.

``ENV_VARS`` is the one table from environment variable names to settings; the docs and the flat
keyword arguments of ``Settings.load`` both follow it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from ancsync.errors import ConfigError, InvalidTopic
from ancsync.mqtt.transports import TransportName
from ancsync.topics import validate_thing_name

logger = logging.getLogger("ancsync.config")

__all__ = [
    "CONFIG_FILE_ENV_VAR",
    "CONFIG_FILE_FORMATS",
    "ENV_VARS",
    "IotSettings",
    "Settings",
    "ShadowSettings",
    "TelemetrySettings",
    "check_endpoint",
    "is_loopback",
]

#: Environment variable naming the config file when ``Settings.load`` is given none.
CONFIG_FILE_ENV_VAR: Final = "ANCSYNC_CONFIG"

#: The config file formats ancsync reads, by file suffix.
CONFIG_FILE_FORMATS: Final[Mapping[str, str]] = {".toml": "TOML", ".json": "JSON"}
_FORMATS_IN_WORDS: Final = " or ".join(
    f"a {suffix} file ({name})" for suffix, name in CONFIG_FILE_FORMATS.items()
)

#: Every environment variable ancsync reads, and the setting (section, key) it sets.
ENV_VARS: Final[Mapping[str, tuple[str, ...]]] = {
    "IOT_THING_NAME": ("iot", "thing_name"),
    "IOT_ENDPOINT": ("iot", "endpoint"),
    "IOT_CERT_PATH": ("iot", "cert_path"),
    "IOT_KEY_PATH": ("iot", "key_path"),
    "IOT_ROOT_CA_PATH": ("iot", "root_ca_path"),
    "IOT_PORT": ("iot", "port"),
    "IOT_KEEP_ALIVE": ("iot", "keep_alive"),
    "IOT_TLS": ("iot", "tls"),
    "IOT_PERSISTENT_SESSION": ("iot", "persistent_session"),
    "IOT_TRANSPORT": ("iot", "transport"),
    "TELEMETRY_BATCH_SIZE": ("telemetry", "batch_size"),
    "TELEMETRY_BATCH_INTERVAL": ("telemetry", "batch_interval"),
    "TELEMETRY_MAX_BUFFER_SIZE": ("telemetry", "max_buffer_size"),
    "SHADOW_SYNC_INTERVAL": ("shadow", "sync_interval"),
    "ANCSYNC_DATA_DIR": ("data_dir",),
}

# Keyword names of Settings.load(): the last part of each setting (they are all unique).
_FLAT_NAMES: Final = {setting[-1]: setting for setting in ENV_VARS.values()}
_SETTING_ENV_VAR: Final = {setting: env for env, setting in ENV_VARS.items()}


@dataclass(frozen=True)
class Allowed:
    """Field metadata: what a setting accepts, in words, for error messages and the docs."""

    text: str


_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: ``localhost`` or a loopback IP (127.x, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_data_dir(thing_name: str) -> Path:
    """Where the durable outbox lives when ``data_dir`` is unset, since emergencies are always
    durable: ``$XDG_STATE_HOME/ancsync/<thing>``, or ``~/.local/state/ancsync/<thing>``."""
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "ancsync" / thing_name


def check_endpoint(host: str, port_setting: str = "IOT_PORT or iot.port") -> str:
    """Return ``host`` if it is a host name or IP address, else raise ValueError saying why.

    ``port_setting`` is how the caller's user sets the port, for the hint when ``host`` has one.
    """
    if "://" in host:
        raise ValueError("give only the host name, without a scheme such as mqtts://")
    if host.startswith("[") or (host.count(":") == 1 and not _is_ip(host)):
        raise ValueError(f"give only the host name; set the port with {port_setting}")
    if _is_ip(host):
        return host
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError("this is not a valid host name or IP address")
    return host


def _check_readable_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    if not path.exists():
        raise ValueError(f"the file {path} does not exist")
    try:
        with path.open("rb"):
            pass
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory; give the path of a PEM file") from None
    except OSError as exc:
        raise ValueError(f"the file {path} cannot be read ({exc.strerror})") from None
    return path


class IotSettings(BaseModel):
    """The connection to AWS IoT Core (or the local emulator): config file section ``iot``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # Field order matters: the checks on tls and the certificate paths read the fields above them.
    thing_name: Annotated[
        str, Allowed("the thing name must be 1 to 128 characters of a-z A-Z 0-9 : _ -")
    ]
    endpoint: Annotated[
        str,
        Allowed(
            "the endpoint must be a host name or IP address without scheme or port, "
            "e.g. xxxxx-ats.iot.us-east-1.amazonaws.com"
        ),
    ]
    port: Annotated[
        int, Field(ge=1, le=65535), Allowed("the port must be an integer from 1 to 65535")
    ] = 8883
    keep_alive: Annotated[
        int,
        Field(ge=30, le=1200),
        Allowed("the keep-alive must be a whole number of seconds from 30 to 1200 (AWS IoT range)"),
    ] = 60
    tls: Annotated[
        bool,
        Allowed("tls must be true or false; false (plaintext) only to a loopback host"),
    ] = True
    persistent_session: Annotated[bool, Allowed("persistent_session must be true or false")] = False
    transport: Annotated[
        TransportName,
        Allowed(
            'the transport must be "paho" (the default) or "crt" (awscrt, needs '
            "`pip install ancsync[crt]`)"
        ),
    ] = "paho"
    cert_path: Annotated[
        Path | None, Allowed("cert_path must be the path of a readable PEM certificate file")
    ] = None
    key_path: Annotated[
        Path | None, Allowed("key_path must be the path of a readable PEM private key file")
    ] = None
    root_ca_path: Annotated[
        Path | None,
        Allowed("root_ca_path must be the path of a readable PEM CA file, or unset"),
    ] = None

    @field_validator("thing_name")
    @classmethod
    def _valid_thing_name(cls, value: str) -> str:
        try:
            return validate_thing_name(value)
        except InvalidTopic:
            # Not a value_error, so the message says what Allowed says about thing names.
            raise PydanticCustomError("thing_name", "not a valid AWS IoT thing name") from None

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str) -> str:
        return check_endpoint(value)

    @field_validator("tls")
    @classmethod
    def _plaintext_only_to_loopback(cls, tls: bool, info: ValidationInfo) -> bool:
        endpoint = info.data.get("endpoint")
        if not tls and endpoint is not None and not is_loopback(endpoint):
            raise ValueError(
                f"plaintext MQTT is allowed only to a loopback host (127.0.0.0/8, ::1, "
                f"localhost), and the endpoint is {endpoint}; use TLS with a client certificate"
            )
        return tls

    @field_validator("cert_path", "key_path")
    @classmethod
    def _client_certificate_files(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None and info.data.get("tls", False):
            what = "certificate" if info.field_name == "cert_path" else "private key"
            raise ValueError(f"TLS needs the device's {what} file")
        return _check_readable_file(path)

    @field_validator("root_ca_path")
    @classmethod
    def _root_ca_file(cls, path: Path | None) -> Path | None:
        return _check_readable_file(path)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_SECTION: Final = (
    "the {0} section must be a table: [{0}] in TOML, an object in JSON, a dict in Python"
)


class TelemetrySettings(BaseModel):
    """Telemetry batching: config file section ``telemetry``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: Annotated[
        int, Field(ge=1), Allowed("the batch size must be a whole number of at least 1")
    ] = 10
    batch_interval: Annotated[
        float,
        Field(gt=0, allow_inf_nan=False),
        Allowed("the batch interval must be a number of seconds greater than 0"),
    ] = 30.0
    max_buffer_size: Annotated[
        int, Field(ge=1), Allowed("the buffer size must be a whole number of at least 1")
    ] = 1000


class ShadowSettings(BaseModel):
    """Device Shadow sync: config file section ``shadow``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sync_interval: Annotated[
        float,
        Field(gt=0, allow_inf_nan=False),
        Allowed("the sync interval must be a number of seconds greater than 0"),
    ] = 60.0


class Settings(BaseModel):
    """Everything ancsync needs to run one device. Build it with :meth:`Settings.load`.

    ``Settings(...)`` on its own validates only the values it is given; :meth:`load` reads the
    environment and the config file itself, so that an error can say where a bad value came from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    iot: Annotated[IotSettings, Allowed(_SECTION.format("iot"))]
    telemetry: Annotated[TelemetrySettings, Allowed(_SECTION.format("telemetry"))] = Field(
        default_factory=TelemetrySettings
    )
    shadow: Annotated[ShadowSettings, Allowed(_SECTION.format("shadow"))] = Field(
        default_factory=ShadowSettings
    )
    data_dir: Annotated[
        Path | None,
        Allowed("data_dir must be the path of a directory (created when missing), or unset"),
    ] = None

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_not_a_file(cls, path: Path | None) -> Path | None:
        if path is not None and path.exists() and not path.is_dir():
            raise ValueError(f"{path} exists and is not a directory")
        return path

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Self:
        """Build the settings from arguments, environment, config file and defaults.

        Args:
            config_file: a TOML (``.toml``) or JSON (``.json``) file with the sections ``iot``,
                ``telemetry``, ``shadow`` and a top-level ``data_dir``. When None, the file named
                by ``ANCSYNC_CONFIG`` is read, if that is set. Relative paths inside the file are
                relative to the file.
            **overrides: settings that win over everything else, by their flat names
                (``thing_name=``, ``endpoint=``, ``port=``, ``batch_size=``...) or as whole
                sections (``iot={"port": 8884}``). A None value counts as not given.

        Raises:
            ConfigError: a setting is missing or not allowed, the file is missing, in another
                format or not valid, or a key is unknown. The message names each problem, the
                value and what is allowed.
        """
        layers = [_argument_layer(overrides), _env_layer(os.environ)]
        if config_file is None and os.environ.get(CONFIG_FILE_ENV_VAR):
            layers.append(_file_layer(Path(os.environ[CONFIG_FILE_ENV_VAR]), CONFIG_FILE_ENV_VAR))
        elif config_file is not None:
            layers.append(_file_layer(Path(config_file), "config_file"))

        merged: dict[str, Any] = {"iot": {}}
        for layer in reversed(layers):
            _deep_merge(merged, layer.values)
        try:
            settings = cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(_describe_errors(exc, layers)) from None
        logger.debug("settings loaded from %s", ", ".join(_sources_used(layers)) or "defaults")
        return settings


@dataclass(frozen=True)
class _Layer:
    """The values one source gave, nested as the model takes them, and the user's name for each."""

    values: dict[str, Any]
    names: dict[tuple[str, ...], str]
    origin: str  # appended to a name to say where it was written: "", " in /etc/x.json"...
    raw_strings: bool = False  # environment values are shown as shell words, others as JSON


def _put(values: dict[str, Any], setting: tuple[str, ...], value: Any) -> None:
    for part in setting[:-1]:
        values = values.setdefault(part, {})
    values[setting[-1]] = value


def _deep_merge(into: dict[str, Any], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    values: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for var, setting in ENV_VARS.items():
        if environ.get(var):  # an empty variable counts as unset, as in most shells' tooling
            _put(values, setting, environ[var])
            names[setting] = var
    return _Layer(values, names, origin="", raw_strings=True)


def _argument_layer(overrides: Mapping[str, Any]) -> _Layer:
    values: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _FLAT_NAMES:
            _put(values, _FLAT_NAMES[key], value)
            names[_FLAT_NAMES[key]] = key
        elif key in Settings.model_fields:  # a whole section: iot={...} or iot=IotSettings(...)
            section = value.model_dump() if isinstance(value, BaseModel) else value
            if not isinstance(section, Mapping):
                values[key] = section  # validation reports what a section must be
                names[(key,)] = key
                continue
            for name, item in section.items():
                if item is not None:
                    _put(values, (key, name), item)
                    names[(key, name)] = f"{key}.{name}"
        else:
            raise ConfigError(
                f"Settings.load() got an unknown setting {key}={value!r}"
                f"{_did_you_mean(key, _FLAT_NAMES)}; known: {', '.join(_FLAT_NAMES)}"
            )
    return _Layer(values, names, origin=" passed to Settings.load()")


def _file_layer(path: Path, given_by: str) -> _Layer:
    data = _read_config_file(path, given_by)
    names: dict[tuple[str, ...], str] = {}
    for key, value in data.items():
        names[(key,)] = key
        if isinstance(value, dict):
            for name, item in value.items():
                names[(key, name)] = f"{key}.{name}"
                if (key, name) in _PATH_SETTINGS and isinstance(item, str) and item:
                    value[name] = str(path.parent / item)  # absolute paths stay as they are
        elif (key,) in _PATH_SETTINGS and isinstance(value, str) and value:
            data[key] = str(path.parent / value)
    return _Layer(data, names, origin=f" in {path}")


def _read_config_file(path: Path, given_by: str) -> dict[str, Any]:
    """The sections a TOML or JSON config file holds (its format is told by its suffix)."""
    format_name = CONFIG_FILE_FORMATS.get(path.suffix.lower())
    if format_name is None:
        raise ConfigError(
            f"the config file {path} ({given_by}={path}) is in a format ancsync does not read; "
            f"use {_FORMATS_IN_WORDS}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"the config file {path} does not exist ({given_by}={path}); "
            f"give the path of an existing {format_name} file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"the config file {path} cannot be read: {reason}") from None
    if format_name == "TOML":
        try:
            return tomllib.loads(text)  # a TOML document is always a table
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"the config file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"the config file {path} must hold a JSON object with the sections iot, telemetry "
            f"and shadow, not a JSON {type(data).__name__}"
        )
    return data


def _sources_used(layers: list[_Layer]) -> list[str]:
    """Where the values came from, for the log: names only, never values."""
    return [f"{name}{layer.origin}" for layer in layers for name in layer.names.values()]


def _field_of(setting: tuple[str, ...]) -> Any:
    """The pydantic FieldInfo of a setting path, or None when there is no such setting."""
    model: Any = Settings
    field = None
    for part in setting:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        field = fields[part]
        model = field.annotation
    return field


_PATH_SETTINGS: Final = frozenset(
    setting for setting in ENV_VARS.values() if _field_of(setting).annotation == Path | None
)


def _allowed(setting: tuple[str, ...]) -> str | None:
    field = _field_of(setting)
    texts = [m.text for m in field.metadata if isinstance(m, Allowed)] if field else []
    return texts[0] if texts else None


def _did_you_mean(word: str, choices: Mapping[str, Any] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _describe_errors(exc: ValidationError, layers: list[_Layer]) -> str:
    problems: dict[tuple[str, ...], str] = {}
    for error in exc.errors():
        # Keep the part of loc that names a setting (union members add tags after it).
        loc = tuple(str(part) for part in error["loc"])
        setting = next((loc[:n] for n in (2, 1) if _field_of(loc[:n]) is not None), loc)
        if error["type"] == "extra_forbidden":
            setting = loc
        if setting not in problems:
            problems[setting] = _describe_error(setting, error, layers)
    lines = list(problems.values())
    if len(lines) == 1:
        return lines[0]
    return f"the configuration has {len(lines)} problems:\n" + "\n".join(
        f"  - {line}" for line in lines
    )


def _describe_error(setting: tuple[str, ...], error: ErrorDetails, layers: list[_Layer]) -> str:
    dotted = ".".join(setting)
    layer = next((layer for layer in layers if setting in layer.names), None)
    if error["type"] == "extra_forbidden":
        name = layer.names[setting] if layer else dotted
        origin = layer.origin if layer else ""
        model = _field_of(setting[:-1]).annotation if len(setting) > 1 else Settings
        known = list(model.model_fields)
        where = f"the {setting[0]} section" if len(setting) > 1 else "the top level"
        return (
            f"unknown setting {name}{origin}{_did_you_mean(setting[-1], known)}; "
            f"{where} allows: {', '.join(known)}"
        )
    if layer is None:  # nobody gave a value: a required setting, or a default that cannot work
        env = _SETTING_ENV_VAR.get(setting)
        ways = f"set {env}, {dotted} in the config file or {setting[-1]}= in Settings.load()"
        if error["type"] == "missing":
            return f"{dotted} is required: {ways}"
        return f"{dotted} is not set: {_reason(setting, error)}; {ways}"
    value: Any = layer.values
    for part in setting:
        value = value[part]
    shown = shlex.quote(value) if layer.raw_strings else json.dumps(value, default=str)
    if len(shown) > 100:  # a runaway value would hide the reason
        shown = f"{shown[:60]}... ({len(str(value))} characters)"
    return f"{layer.names[setting]}={shown}{layer.origin} is not allowed: {_reason(setting, error)}"


def _reason(setting: tuple[str, ...], error: ErrorDetails) -> str:
    """Why a value was refused: a check's own words, else what the setting allows."""
    if error["type"] == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return _allowed(setting) or str(error["msg"])
