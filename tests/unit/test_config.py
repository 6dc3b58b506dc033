"""Settings.load: layering, and the ConfigError a user sees for each bad value."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ancsync import ConfigError, Settings
from ancsync.config import CONFIG_FILE_ENV_VAR, ENV_VARS, Allowed

DOCS_PAGE = Path(__file__).parents[2] / "docs" / "configuration.md"
NOBODY = 65534


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own IOT_* variables must not leak into these tests."""
    for var in [*ENV_VARS, CONFIG_FILE_ENV_VAR]:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    """Files standing in for the certificate and key: config checks they exist and can be read."""
    paths = {"cert_path": tmp_path / "cert.pem", "key_path": tmp_path / "private.key"}
    for path in paths.values():
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
    return paths


def write_config(directory: Path, data: Any) -> Path:
    path = directory / "ancsync.json"
    path.write_text(json.dumps(data))
    return path


def load_error(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.load(*args, **kwargs)
    return str(info.value)


# --- layering -------------------------------------------------------------------------------


def test_defaults_fill_everything_not_given(certs: dict[str, Path]) -> None:
    settings = Settings.load(thing_name="anc-device-001", endpoint="example.com", **certs)

    assert (settings.iot.port, settings.iot.keep_alive) == (8883, 60)
    assert settings.iot.tls is True
    assert settings.iot.persistent_session is False
    assert settings.iot.root_ca_path is None
    assert settings.telemetry.batch_size == 10
    assert settings.telemetry.batch_interval == 30
    assert settings.telemetry.max_buffer_size == 1000
    assert settings.shadow.sync_interval == 60
    assert settings.data_dir is None


def test_arguments_beat_environment_beat_file_beat_defaults(
    tmp_path: Path, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path,
        {
            "iot": {"thing_name": "from-file", "endpoint": "file.example.com", "port": 1001},
            "telemetry": {"batch_size": 5, "batch_interval": 7},
            "shadow": {"sync_interval": 9},
        },
    )
    monkeypatch.setenv("IOT_PORT", "1002")
    monkeypatch.setenv("TELEMETRY_BATCH_SIZE", "6")
    monkeypatch.setenv("IOT_ENDPOINT", "env.example.com")

    settings = Settings.load(config, port=1003, endpoint=None, **certs)

    assert settings.iot.port == 1003  # argument over environment over file
    assert settings.iot.endpoint == "env.example.com"  # None means "not given"
    assert settings.telemetry.batch_size == 6  # environment over file
    assert settings.iot.thing_name == "from-file"
    assert settings.telemetry.batch_interval == 7
    assert settings.shadow.sync_interval == 9
    assert settings.iot.keep_alive == 60  # default
    assert settings.telemetry.max_buffer_size == 1000


def test_every_environment_variable_reaches_its_setting(
    tmp_path: Path, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root_ca = tmp_path / "ca.pem"
    root_ca.write_text("ca")
    given = {
        "IOT_THING_NAME": "env-thing",
        "IOT_ENDPOINT": "127.0.0.1",
        "IOT_CERT_PATH": str(certs["cert_path"]),
        "IOT_KEY_PATH": str(certs["key_path"]),
        "IOT_ROOT_CA_PATH": str(root_ca),
        "IOT_PORT": "1883",
        "IOT_KEEP_ALIVE": "30",
        "IOT_TLS": "false",
        "IOT_PERSISTENT_SESSION": "true",
        "IOT_TRANSPORT": "crt",
        "TELEMETRY_BATCH_SIZE": "3",
        "TELEMETRY_BATCH_INTERVAL": "0.5",
        "TELEMETRY_MAX_BUFFER_SIZE": "50",
        "SHADOW_SYNC_INTERVAL": "2.5",
        "ANCSYNC_DATA_DIR": str(tmp_path / "outbox"),
    }
    assert set(given) == set(ENV_VARS)
    for var, value in given.items():
        monkeypatch.setenv(var, value)

    dumped = Settings.load().model_dump()

    for var, setting in ENV_VARS.items():
        value: Any = dumped
        for part in setting:
            value = value[part]
        assert str(value).lower() == given[var].lower(), var


def test_nested_section_arguments(certs: dict[str, Path]) -> None:
    settings = Settings.load(
        iot={"thing_name": "dev", "endpoint": "example.com", "port": 8884, **certs},
        telemetry={"batch_size": 2},
    )
    assert settings.iot.port == 8884
    assert settings.telemetry.batch_size == 2


def test_config_file_from_environment_and_argument_wins(
    tmp_path: Path, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from_env = write_config(tmp_path / "a", {"iot": {"thing_name": "from-env-file"}})
    from_arg = write_config(tmp_path / "b", {"iot": {"thing_name": "from-arg-file"}})
    monkeypatch.setenv(CONFIG_FILE_ENV_VAR, str(from_env))

    assert Settings.load(endpoint="e.com", **certs).iot.thing_name == "from-env-file"
    assert Settings.load(from_arg, endpoint="e.com", **certs).iot.thing_name == "from-arg-file"


def test_relative_paths_in_the_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_dir = tmp_path / "device"
    (device_dir / "certs").mkdir(parents=True)
    for name in ("cert.pem", "private.key"):
        (device_dir / "certs" / name).write_text("x")
    config = write_config(
        device_dir,
        {
            "iot": {
                "thing_name": "dev",
                "endpoint": "example.com",
                "cert_path": "certs/cert.pem",
                "key_path": "certs/private.key",
            },
            "data_dir": "outbox",
        },
    )
    monkeypatch.chdir(tmp_path)  # not the file's directory

    settings = Settings.load(config)

    assert settings.iot.cert_path == device_dir / "certs" / "cert.pem"
    assert settings.iot.key_path == device_dir / "certs" / "private.key"
    assert settings.data_dir == device_dir / "outbox"


def test_direct_construction_validates_only_what_it_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IOT_PORT", "1234")
    settings = Settings(iot={"thing_name": "dev", "endpoint": "localhost", "tls": False})
    assert settings.iot.port == 8883


def test_plaintext_is_allowed_to_loopback_hosts_only_without_certificates() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "localhost", "LOCALHOST"):
        settings = Settings.load(thing_name="dev", endpoint=host, tls=False)
        assert settings.iot.tls is False
        assert settings.iot.cert_path is None


def test_settings_are_immutable(certs: dict[str, Path]) -> None:
    settings = Settings.load(thing_name="dev", endpoint="example.com", **certs)
    with pytest.raises(ValueError, match="frozen"):
        settings.iot.port = 1  # type: ignore[misc]


# --- bad values: the message names the setting as written, the value and what is allowed ------


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("IOT_PORT", "0", "IOT_PORT=0 is not allowed: the port must be an integer from 1 to 65535"),
        ("IOT_PORT", "70000", "IOT_PORT=70000 is not allowed: the port must be an integer from 1"),
        ("IOT_PORT", "88a3", "IOT_PORT=88a3 is not allowed: the port must be an integer"),
        ("IOT_KEEP_ALIVE", "29", "IOT_KEEP_ALIVE=29 is not allowed: the keep-alive must be"),
        ("IOT_KEEP_ALIVE", "1201", "IOT_KEEP_ALIVE=1201 is not allowed: the keep-alive must be"),
        ("IOT_THING_NAME", "anc/001", "IOT_THING_NAME=anc/001 is not allowed: the thing name must"),
        ("IOT_THING_NAME", "anc#1", "IOT_THING_NAME='anc#1' is not allowed: the thing name must"),
        ("IOT_THING_NAME", "a" * 129, "(129 characters) is not allowed: the thing name must be"),
        ("IOT_TLS", "maybe", "IOT_TLS=maybe is not allowed: tls must be true or false"),
        ("TELEMETRY_BATCH_SIZE", "-1", "TELEMETRY_BATCH_SIZE=-1 is not allowed: the batch size"),
        ("TELEMETRY_BATCH_INTERVAL", "0", "TELEMETRY_BATCH_INTERVAL=0 is not allowed: the batch"),
        ("TELEMETRY_MAX_BUFFER_SIZE", "0", "TELEMETRY_MAX_BUFFER_SIZE=0 is not allowed:"),
        ("SHADOW_SYNC_INTERVAL", "nan", "SHADOW_SYNC_INTERVAL=nan is not allowed:"),
        (
            "IOT_TRANSPORT",
            "mqttv5",
            'IOT_TRANSPORT=mqttv5 is not allowed: the transport must be "paho"',
        ),
    ],
)
def test_bad_environment_value_names_the_variable(
    var: str,
    value: str,
    expected: str,
    certs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(var, value)
    # Only the one bad setting, so the message is a single line about it.
    given = {"thing_name": "dev", "endpoint": "example.com", **certs}
    given.pop(ENV_VARS[var][-1], None)

    message = load_error(**given)

    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("iot", "port", 70000, "iot.port=70000 in {file} is not allowed: the port must be"),
        ("iot", "port", 0, "iot.port=0 in {file} is not allowed: the port must be an integer"),
        ("iot", "port", 8883.5, "iot.port=8883.5 in {file} is not allowed: the port must be"),
        ("iot", "thing_name", "", 'iot.thing_name="" in {file} is not allowed: the thing name'),
        ("iot", "keep_alive", 5, "iot.keep_alive=5 in {file} is not allowed: the keep-alive"),
        ("telemetry", "batch_size", -5, "telemetry.batch_size=-5 in {file} is not allowed:"),
    ],
)
def test_bad_file_value_names_the_key_and_the_file(
    section: str, key: str, value: Any, expected: str, tmp_path: Path, certs: dict[str, Path]
) -> None:
    data: dict[str, Any] = {"iot": {"thing_name": "dev", "endpoint": "example.com"}}
    data.setdefault(section, {})[key] = value
    config = write_config(tmp_path, data)

    assert expected.format(file=config) in load_error(config, **certs)


def test_bad_argument_names_the_keyword(certs: dict[str, Path]) -> None:
    message = load_error(thing_name="dev", endpoint="example.com", port=70000, **certs)
    assert message.startswith("port=70000 passed to Settings.load() is not allowed: the port must")


def test_section_argument_that_is_not_a_dict(certs: dict[str, Path]) -> None:
    message = load_error(thing_name="d", endpoint="e.com", telemetry=5, **certs)
    assert message == (
        "telemetry=5 passed to Settings.load() is not allowed: "
        "the telemetry section must be a table: [telemetry] in TOML, an object in JSON, "
        "a dict in Python"
    )


def test_missing_endpoint_and_thing_name_say_how_to_set_them(certs: dict[str, Path]) -> None:
    message = load_error(**certs)

    assert message.startswith("the configuration has 2 problems:")
    assert "iot.thing_name is required: set IOT_THING_NAME, iot.thing_name in the config" in message
    assert "iot.endpoint is required: set IOT_ENDPOINT, iot.endpoint in the config" in message


def test_tls_without_certificate_paths_is_refused() -> None:
    message = load_error(thing_name="dev", endpoint="example.com")

    assert (
        "iot.cert_path is not set: TLS needs the device's certificate file; set IOT_CERT_PATH"
        in (message)
    )
    assert "iot.key_path is not set: TLS needs the device's private key file" in message


def test_missing_certificate_file(certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    missing = certs["cert_path"].with_name("nope.pem")
    monkeypatch.setenv("IOT_CERT_PATH", str(missing))

    message = load_error(thing_name="dev", endpoint="example.com", key_path=certs["key_path"])

    assert message == f"IOT_CERT_PATH={missing} is not allowed: the file {missing} does not exist"


def test_missing_root_ca_file(tmp_path: Path, certs: dict[str, Path]) -> None:
    missing = tmp_path / "AmazonRootCA1.pem"
    message = load_error(thing_name="d", endpoint="e.com", root_ca_path=missing, **certs)
    assert f"the file {missing} does not exist" in message


def test_key_path_that_is_a_directory_is_refused(tmp_path: Path, certs: dict[str, Path]) -> None:
    message = load_error(
        thing_name="dev", endpoint="example.com", cert_path=certs["cert_path"], key_path=tmp_path
    )
    assert f"is not allowed: {tmp_path} is a directory; give the path of a PEM file" in message


@contextmanager
def without_root() -> Iterator[None]:
    """Run the block as user nobody: root reads a mode-000 file regardless of its mode."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_key_file_is_refused(certs: dict[str, Path]) -> None:
    # A directory nobody can traverse (tmp_path's parents are private to root), holding the key.
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        cert = Path(directory, "cert.pem")
        key = Path(directory, "private.key")
        cert.write_text("cert")
        cert.chmod(0o644)
        key.write_text("key")
        key.chmod(0o000)
        with without_root():
            message = load_error(thing_name="dev", endpoint="e.com", cert_path=cert, key_path=key)

    assert message == (
        f'key_path="{key}" passed to Settings.load() is not allowed: '
        f"the file {key} cannot be read (Permission denied)"
    )


def test_plaintext_to_a_remote_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_TLS", "false")
    message = load_error(thing_name="dev", endpoint="xxxxx.iot.us-east-1.amazonaws.com")
    assert message.startswith(
        "IOT_TLS=false is not allowed: plaintext MQTT is allowed only to a loopback host"
    )
    assert "the endpoint is xxxxx.iot.us-east-1.amazonaws.com" in message


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("mqtts://example.com", "without a scheme"),
        ("example.com:8883", "set the port with IOT_PORT or iot.port"),
        ("exa mple.com", "not a valid host name or IP address"),
        ("-bad.example.com", "not a valid host name or IP address"),
    ],
)
def test_endpoint_must_be_a_bare_host(endpoint: str, reason: str, certs: dict[str, Path]) -> None:
    message = load_error(thing_name="dev", endpoint=endpoint, **certs)
    assert message.startswith(f"endpoint={json.dumps(endpoint)} passed to Settings.load()")
    assert reason in message


def test_data_dir_that_is_a_file_is_refused(certs: dict[str, Path]) -> None:
    message = load_error(thing_name="d", endpoint="e.com", data_dir=certs["cert_path"], **certs)
    assert f"{certs['cert_path']} exists and is not a directory" in message


# --- the file itself ------------------------------------------------------------------------


def test_unknown_top_level_key_lists_the_allowed_ones(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    config = write_config(
        tmp_path, {"iot": {"thing_name": "d", "endpoint": "e.com"}, "telemtry": {}}
    )
    message = load_error(config, **certs)
    assert message == (
        f"unknown setting telemtry in {config} (did you mean telemetry?); "
        "the top level allows: iot, telemetry, shadow, data_dir"
    )


def test_unknown_key_in_a_section_lists_the_allowed_ones(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    config = write_config(
        tmp_path, {"iot": {"thing_name": "d", "endpoint": "e.com", "keepalive": 30}}
    )
    message = load_error(config, **certs)
    assert message.startswith(
        f"unknown setting iot.keepalive in {config} (did you mean keep_alive?)"
    )
    assert "the iot section allows: thing_name, endpoint, port, keep_alive" in message


def test_unknown_keyword_argument(certs: dict[str, Path]) -> None:
    message = load_error(thing_name="d", endpoint="e.com", keepalive=30, **certs)
    assert message.startswith("Settings.load() got an unknown setting keepalive=30")
    assert "did you mean keep_alive?" in message


def test_malformed_json_gives_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "ancsync.json"
    config.write_text('{\n  "iot": {\n    "port": 8883,\n  }\n}\n')
    message = load_error(config)
    assert message.startswith(f"the config file {config} is not valid JSON: ")
    assert message.endswith("at line 4, column 3")


def test_config_file_that_is_not_an_object(tmp_path: Path) -> None:
    config = write_config(tmp_path, [1, 2])
    assert "must hold a JSON object with the sections iot, telemetry and shadow" in load_error(
        config
    )


def test_section_that_is_not_an_object(tmp_path: Path) -> None:
    iot = {"thing_name": "d", "endpoint": "localhost"}
    config = write_config(tmp_path, {"iot": iot, "shadow": 5})
    message = load_error(config, tls=False)
    assert message.startswith(f"shadow=5 in {config} is not allowed: the shadow section must be")


def test_missing_config_file_names_where_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.json"
    assert f"the config file {missing} does not exist (config_file={missing})" in load_error(
        missing
    )
    monkeypatch.setenv(CONFIG_FILE_ENV_VAR, str(missing))
    assert f"(ANCSYNC_CONFIG={missing})" in load_error()


# --- TOML, the Python convention for config files --------------------------------------------

DEVICE_TOML = """\
data_dir = "outbox"

[iot]
thing_name = "from-toml"
endpoint = "toml.example.com"
port = 1001
cert_path = "cert.pem"
key_path = "private.key"

[telemetry]
batch_size = 5
"""


def test_a_toml_file_layers_like_a_json_file(
    tmp_path: Path, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ancsync.toml"
    config.write_text(DEVICE_TOML)
    monkeypatch.chdir(tmp_path.parent)  # relative paths are relative to the file, not here
    monkeypatch.setenv("IOT_PORT", "1002")

    settings = Settings.load(config, batch_size=6)

    assert settings.iot.thing_name == "from-toml"
    assert settings.iot.port == 1002  # environment over file
    assert settings.telemetry.batch_size == 6  # argument over file
    assert settings.iot.cert_path == certs["cert_path"]
    assert settings.data_dir == tmp_path / "outbox"
    monkeypatch.setenv(CONFIG_FILE_ENV_VAR, str(config))
    assert Settings.load().iot.endpoint == "toml.example.com"


def test_a_bad_toml_value_names_the_key_and_the_file(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    config = tmp_path / "ancsync.toml"
    config.write_text(DEVICE_TOML.replace("port = 1001", "port = 70000"))
    assert load_error(config).startswith(
        f"iot.port=70000 in {config} is not allowed: the port must be an integer from 1 to 65535"
    )
    config.write_text("shadow = 5\n" + DEVICE_TOML)  # top level: before the first [table]
    assert load_error(config) == (
        f"shadow=5 in {config} is not allowed: the shadow section must be a table: [shadow] "
        "in TOML, an object in JSON, a dict in Python"
    )


def test_malformed_toml_gives_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "ancsync.toml"
    config.write_text("[iot]\nport = 8883\nthing_name =\n")
    message = load_error(config)
    assert message.startswith(f"the config file {config} is not valid TOML: ")
    assert message.endswith("(at line 3, column 13)")


@pytest.mark.parametrize("name", ["ancsync.yaml", "ancsync.ini", "ancsync"])
def test_another_format_is_refused_naming_the_formats_that_work(tmp_path: Path, name: str) -> None:
    config = tmp_path / name
    config.write_text("iot:\n  port: 8883\n")
    assert load_error(config) == (
        f"the config file {config} (config_file={config}) is in a format ancsync does not "
        "read; use a .toml file (TOML) or a .json file (JSON)"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, {"iot": {"thing_name": "a/b", "endpoint": "localhost"}})
    monkeypatch.setenv("IOT_PORT", "0")
    message = load_error(config, tls=False, batch_size=0)

    assert message.startswith("the configuration has 3 problems:")
    assert 'iot.thing_name="a/b" in' in message
    assert "IOT_PORT=0 is not allowed" in message
    assert "batch_size=0 passed to Settings.load() is not allowed" in message


# --- the docs page follows the table --------------------------------------------------------


def field_of(setting: tuple[str, ...]) -> Any:
    field = Settings.model_fields[setting[0]]
    for part in setting[1:]:
        field = field.annotation.model_fields[part]  # type: ignore[union-attr]
    return field


def test_docs_page_lists_every_setting_with_its_default() -> None:
    # Rows of the settings table: | `ENV_VAR` | `json.key` | default | allowed |
    rows = {
        match[1]: (match[2], match[3].strip().strip("`"))
        for match in re.finditer(
            r"^\| `(\w+)` \| `([\w.]+)` \| ([^|]+) \|", DOCS_PAGE.read_text(), re.MULTILINE
        )
    }
    for var, setting in ENV_VARS.items():
        assert var in rows, f"{var} is missing from {DOCS_PAGE}"
        field = field_of(setting)
        if field.is_required():
            expected = "required"
        elif field.default is None:
            expected = "unset"
        else:
            expected = json.dumps(field.default).removesuffix(".0")
        assert rows[var] == (".".join(setting), expected), var


def test_every_setting_says_what_it_allows() -> None:
    for setting in ENV_VARS.values():
        assert any(isinstance(meta, Allowed) for meta in field_of(setting).metadata), setting
