"""Helpers for tests that talk to a real broker: TLS contexts and aiomqtt clients per identity.

Import them as ``from helpers import mqtt_client`` (pytest puts ``tests/`` on ``sys.path``
because ``tests/conftest.py`` lives there).
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from faultproxy import FaultProxy

from ancsync.connection import IoTConnection
from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.certs import (
    CertificateAuthority,
    CertPair,
    DevCerts,
    PrivateKey,
    generate_ca,
    issue_certificate,
    write_pair,
)
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.testing import FakeBroker

HOST = "127.0.0.1"
SUBACK_FAILURE = 0x80
"""The SUBACK return code of a refused subscription (MQTT 3.1.1, 3.9.3)."""


def client_tls_context(
    ca: Path, pair: CertPair | None, *, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting ``ca`` and presenting ``pair`` (None: no certificate)."""
    context = ssl.create_default_context(cafile=str(ca))
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key)
    if max_version is not None:
        context.maximum_version = max_version
    return context


def load_ca(certs: DevCerts) -> CertificateAuthority:
    """The dev CA's certificate and key, to issue certificates of a test's own."""
    cert = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    assert isinstance(key, PrivateKey)
    return cert, key


def foreign_pair(directory: Path, common_name: str) -> tuple[Path, CertPair]:
    """A CA unrelated to the dev CA (its PEM file), and a certificate it issued to
    ``common_name`` (a valid device name, say), written under ``directory``."""
    ca_cert, ca_key = generate_ca("some other CA")
    ca_file = directory / "other-ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pair = write_pair(directory / "foreign", *issue_certificate((ca_cert, ca_key), common_name))
    return ca_file, pair


def mqtt_client(
    port: int,
    certs: DevCerts,
    pair: CertPair | None,
    client_id: str,
    *,
    ca: Path | None = None,
    max_tls_version: ssl.TLSVersion | None = None,
    timeout: float = 5,
    **kwargs: Any,
) -> aiomqtt.Client:
    """An (unconnected) aiomqtt client for ``pair`` over TLS to ``127.0.0.1:port``.

    ``ca`` overrides the trusted CA (default: the dev CA); other keyword arguments go to
    :class:`aiomqtt.Client` (``clean_session``, ``will``, ``keepalive``...).
    """
    return aiomqtt.Client(
        HOST,
        port,
        identifier=client_id,
        tls_context=client_tls_context(ca or certs.ca, pair, max_version=max_tls_version),
        timeout=timeout,
        **kwargs,
    )


def device_client(port: int, certs: DevCerts, thing: str, **kwargs: Any) -> aiomqtt.Client:
    """An (unconnected) client with ``thing``'s certificate and its thing name as client id."""
    return mqtt_client(port, certs, certs.device(thing), thing, **kwargs)


def operator_client(port: int, certs: DevCerts, client_id: str, **kwargs: Any) -> aiomqtt.Client:
    """An (unconnected) client with the operator certificate (the cloud side)."""
    return mqtt_client(port, certs, certs.operator, client_id, **kwargs)


def plain_mqtt_client(
    port: int, client_id: str, *, timeout: float = 5, **kwargs: Any
) -> aiomqtt.Client:
    """An (unconnected) aiomqtt client without TLS to ``127.0.0.1:port``."""
    return aiomqtt.Client(HOST, port, identifier=client_id, timeout=timeout, **kwargs)


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    """The next message ``client`` receives (bound the wait with ``anyio.fail_after``)."""
    return await anext(aiter(client.messages))


def granted(codes: object) -> list[int]:
    """SUBACK return codes as integers (aiomqtt gives ReasonCode objects or ints)."""
    return [getattr(code, "value", code) for code in codes]  # type: ignore[attr-defined]


async def cut_off(client: aiomqtt.Client, proxy: FaultProxy) -> None:
    """Cut the connection ``client`` has through ``proxy`` and wait until the client sees it.

    No DISCONNECT reaches the broker, so it publishes the client's last will.
    """
    await proxy.cut()
    with pytest.raises(aiomqtt.MqttError):
        await next_message(client)


class AllowEverything:
    """An authorizer for tests that allows everything; subclasses refuse what they test."""

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        return None

    def authorize_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> bool:
        return True

    def authorize_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        return True


@dataclass(frozen=True)
class MosquittoBroker:
    """A running mosquitto: ``port`` is TLS (client certificate required), ``plain_port`` not."""

    port: int
    plain_port: int
    process: subprocess.Popen[bytes]
    log: Path


_MOSQUITTO_CONFIG = """\
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
user {user}

listener {port} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2

listener {plain_port} 127.0.0.1
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _start_mosquitto(binary: str, certs: DevCerts, workdir: Path) -> MosquittoBroker | None:
    """Start mosquitto on two free ports; None if it lost a race for a port (try again)."""
    port, plain_port = _free_port(), _free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(
        _MOSQUITTO_CONFIG.format(
            user=getpass.getuser(),
            port=port,
            plain_port=plain_port,
            ca=certs.ca,
            cert=certs.server.cert,
            key=certs.server.key,
        )
    )
    log = workdir / "mosquitto.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            if "Address already in use" in output:
                return None
            pytest.fail(f"mosquitto exited with {process.returncode}:\n{output}")
        if _accepts(port) and _accepts(plain_port):
            return MosquittoBroker(port, plain_port, process, log)
        time.sleep(0.02)  # ok: polling a port for readiness, bounded by a deadline
    process.kill()
    process.wait()
    pytest.fail(f"mosquitto did not listen within 10 s:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_mosquitto(certs: DevCerts, workdir: Path) -> Iterator[MosquittoBroker]:
    """Run mosquitto with ``certs`` on two free loopback ports until the block exits."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        pytest.fail("mosquitto is not installed: `apt-get install mosquitto` (make test does it)")
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(5):
        broker = _start_mosquitto(binary, certs, workdir)
        if broker is not None:
            break
    else:
        pytest.fail("mosquitto could not bind a free port in 5 attempts")
    try:
        yield broker
    finally:
        broker.process.terminate()
        try:
            broker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            broker.process.kill()
            broker.process.wait()


def assert_typed(value: Any, shape: Any, where: str = "status") -> None:
    """Fail unless ``value`` has exactly the keys of the TypedDict ``shape``, recursively.

    Follows ``TD``, ``TD | None``, ``dict[str, TD]`` and ``list[TD]``; other types are left to
    mypy. Checks that what ``get_status()`` returns is what its documented type says.
    """
    if value is None and type(None) in typing.get_args(shape):
        return
    options = [arg for arg in typing.get_args(shape) if arg is not type(None)]
    if typing.get_origin(shape) in (typing.Union, types.UnionType) and len(options) == 1:
        shape = options[0]
    if typing.is_typeddict(shape):
        hints = typing.get_type_hints(shape)
        assert isinstance(value, dict), f"{where}: {value!r} is not a dict"
        assert set(value) == set(hints), (
            f"{where}: keys {sorted(set(value) - set(hints))} are not in {shape.__name__}, "
            f"{sorted(set(hints) - set(value))} are missing"
        )
        for key, hint in hints.items():
            assert_typed(value[key], hint, f"{where}[{key!r}]")
    elif typing.get_origin(shape) is dict:
        for key, item in value.items():
            assert_typed(item, typing.get_args(shape)[1], f"{where}[{key!r}]")
    elif typing.get_origin(shape) is list:
        for index, item in enumerate(value):
            assert_typed(item, typing.get_args(shape)[0], f"{where}[{index}]")


def load_script(path: Path, name: str | None = None) -> Any:
    """Import the Python file at ``path`` (a script, not a package module) for a test."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_docs_script(name: str) -> Any:
    """Import ``docs/<name>.py`` (a page generator) for a test."""
    return load_script(Path(__file__).parent.parent / "docs" / f"{name}.py")


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real, small file system at ``mount_point`` (created) for full-disk tests: root only.

    Fails the test (not a skip) where mounting is not allowed: a full disk cannot be faked.
    """
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs here ({result.stderr.decode().strip()}): the full-disk tests "
            "need root with mount allowed"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


@contextlib.contextmanager
def read_only_view(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (created).

    As root, mode bits do not stop a write: a read-only bind mount (``EROFS``, as on a
    read-only file system). Otherwise ``target`` is ``source`` itself, made ``0555``.
    """
    if os.geteuid() != 0:
        mode = source.stat().st_mode
        source.chmod(0o555)
        try:
            yield source
        finally:
            source.chmod(mode)
        return
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def fake_connection(broker: FakeBroker, thing: str, *args: Any, **options: Any) -> IoTConnection:
    """An unstarted IoTConnection of ``thing`` on the in-memory ``broker``: plaintext, no
    "online" status (only what the test publishes), fast reconnects and a short stop.

    ``args`` (cert and key paths) and ``options`` go to the constructor and win."""
    defaults: dict[str, Any] = {
        "tls": False,
        "announce_status": False,
        "transport_factory": broker.transport,
        "reconnect": BackoffPolicy(base=0.001, cap=0.002),
        "stop_timeout": 0.4,
    }
    return IoTConnection(thing, "127.0.0.1", *args, **{**defaults, **options})
