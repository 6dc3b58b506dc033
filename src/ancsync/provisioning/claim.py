"""Fleet provisioning by claim: a device leaves the factory with a shared claim certificate and
gets its own identity on first boot.

:func:`provision_by_claim` connects with the claim certificate and, over AWS IoT's fleet
provisioning MQTT API (:class:`FleetProvisioning`):

1. makes a private key on the device and asks for a certificate for it
   (CreateCertificateFromCsr: the key never leaves the device), or, with
   ``key_on_device=False``, lets AWS make both (CreateKeysAndCertificate);
2. registers the thing with the template's parameters (RegisterThing), which activates the
   certificate and attaches the device policy;
3. writes the identity (:class:`~ancsync.provisioning.identity.DeviceIdentity`): the key (0600,
   written before any request names it), the certificate and the settings, each atomically;
4. connects once with the new certificate, to prove it works before the claim is given up.

It is idempotent and resumable: every step is on disk before the next starts (the key, then the
issued certificate with its ownership token, then the registration), so a device killed at any
point carries on from there on the next boot, and one already provisioned returns at once. A
certificate issued but never registered is not an identity anyone can use: AWS discards it
when its ownership token expires (one hour).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from ancsync.connection import IoTConnection
from ancsync.errors import AncSyncError, ProvisionError, ProvisioningRejected
from ancsync.files import write_atomically
from ancsync.models import new_id
from ancsync.mqtt.outbox import Lane
from ancsync.provisioning.identity import DeviceIdentity
from ancsync.provisioning.keys import certificate_request, new_private_key
from ancsync.topics import (
    CREATE_CERTIFICATE_FROM_CSR_TOPIC,
    CREATE_KEYS_AND_CERTIFICATE_TOPIC,
    register_thing_topic,
)

__all__ = [
    "FleetProvisioning",
    "IssuedCertificate",
    "Registration",
    "provision_by_claim",
]

log = logging.getLogger("ancsync.provisioning")

PROGRESS_FILE = "provisioning.json"
NEW_KEY_FILE = "private.key.new"
# AWS's ownership token lives an hour; a resumed registration older than this starts over.
TOKEN_REUSE_SECONDS = 50 * 60

StepCallback = Callable[[str], None]
"""Called with each step's name once it is on disk: ``key`` (CSR only), ``certificate``,
``registered``, ``saved``, ``verified`` (with ``verify``)."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the service issued, not yet registered (PENDING_ACTIVATION)."""

    certificate_id: str
    certificate_pem: str
    ownership_token: str
    private_key: bytes | None = None
    """Only from CreateKeysAndCertificate: the key AWS made (a CSR's key stays on the device)."""


@dataclass(frozen=True)
class Registration:
    """RegisterThing's answer: the thing and the template's device configuration."""

    thing_name: str
    device_configuration: dict[str, str]


class FleetProvisioning:
    """AWS IoT's fleet provisioning MQTT API on an :class:`~ancsync.IoTConnection`.

    It subscribes to the replies it needs, only those (a claim policy allows nothing else),
    and each request waits for those subscriptions first: the service answers on the connection
    that asked. One request at a time; each raises :class:`~ancsync.errors.ProvisioningRejected`
    with AWS's codes when rejected and :class:`~ancsync.errors.ProvisionError` when unanswered.
    :meth:`close` unsubscribes.
    """

    def __init__(
        self,
        iot: IoTConnection,
        template: str,
        *,
        key_on_device: bool = True,
        reply_timeout: float = 10.0,
    ) -> None:
        self._iot = iot
        self.template = template
        self.reply_timeout = reply_timeout
        create = (
            CREATE_CERTIFICATE_FROM_CSR_TOPIC
            if key_on_device
            else CREATE_KEYS_AND_CERTIFICATE_TOPIC
        )
        self._reply: tuple[str, Any] | None = None
        self._answered: anyio.Event | None = None
        self.reply_filters = tuple(
            f"{request}/{outcome}"
            for request in (create, register_thing_topic(template))
            for outcome in ("accepted", "rejected")
        )
        self._routes = [iot.subscribe(f, self._on_reply) for f in self.reply_filters]

    def close(self) -> None:
        """Unsubscribe from the replies."""
        for route in self._routes:
            self._iot.unsubscribe(route)
        self._routes = []

    def _on_reply(self, topic: str, payload: Any) -> None:
        self._reply = (topic, payload)
        if self._answered is not None:
            self._answered.set()

    async def _request(self, step: str, topic: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            await self._iot.wait_subscribed(*self.reply_filters, timeout=self.reply_timeout)
        except AncSyncError as exc:
            raise ProvisionError(f"cannot ask for {step}: {exc}") from exc
        self._reply, self._answered = None, anyio.Event()
        await self._iot.publish(topic, dict(body), lane=Lane.SHADOW)
        with anyio.move_on_after(self.reply_timeout):
            await self._answered.wait()
        if self._reply is None:
            raise ProvisionError(
                f"no answer to {step} within {self.reply_timeout:g} s; check that the claim "
                f"policy allows {topic} and its replies, and that the endpoint is AWS IoT's"
            )
        reply_topic, payload = self._reply
        answer = payload if isinstance(payload, dict) else {}
        if reply_topic.endswith("/rejected"):
            raise ProvisioningRejected(
                step,
                int(answer.get("statusCode", 0)),
                str(answer.get("errorCode", "unknown")),
                str(answer.get("errorMessage", "")),
            )
        return answer

    async def create_certificate_from_csr(self, csr_pem: str) -> IssuedCertificate:
        """CreateCertificateFromCsr: a certificate for the key that signed ``csr_pem``."""
        answer = await self._request(
            "CreateCertificateFromCsr",
            CREATE_CERTIFICATE_FROM_CSR_TOPIC,
            {"certificateSigningRequest": csr_pem},
        )
        return _issued("CreateCertificateFromCsr", answer, with_key=False)

    async def create_keys_and_certificate(self) -> IssuedCertificate:
        """CreateKeysAndCertificate: a key pair and certificate made by the service."""
        answer = await self._request(
            "CreateKeysAndCertificate", CREATE_KEYS_AND_CERTIFICATE_TOPIC, {}
        )
        return _issued("CreateKeysAndCertificate", answer, with_key=True)

    async def register_thing(
        self, ownership_token: str, parameters: Mapping[str, str]
    ) -> Registration:
        """RegisterThing with the template: the thing, its active certificate and policy."""
        answer = await self._request(
            "RegisterThing",
            register_thing_topic(self.template),
            {"certificateOwnershipToken": ownership_token, "parameters": dict(parameters)},
        )
        if not isinstance(answer.get("thingName"), str):
            raise ProvisionError(f"RegisterThing's answer has no thingName: {answer}")
        configuration = answer.get("deviceConfiguration") or {}
        return Registration(
            answer["thingName"], {str(k): str(v) for k, v in dict(configuration).items()}
        )


def _issued(step: str, answer: dict[str, Any], *, with_key: bool) -> IssuedCertificate:
    fields = ["certificateId", "certificatePem", "certificateOwnershipToken"]
    if with_key:
        fields.append("privateKey")
    missing = [name for name in fields if not isinstance(answer.get(name), str)]
    if missing:
        raise ProvisionError(f"{step}'s answer lacks {', '.join(missing)}")
    return IssuedCertificate(
        certificate_id=answer["certificateId"],
        certificate_pem=answer["certificatePem"],
        ownership_token=answer["certificateOwnershipToken"],
        private_key=answer["privateKey"].encode() if with_key else None,
    )


@dataclass
class _Progress:
    """What :func:`provision_by_claim` has done so far, in ``provisioning.json`` (0600: it holds
    the ownership token)."""

    directory: Path
    certificate: IssuedCertificate | None = None
    issued_at: float = 0.0
    registration: Registration | None = None

    @classmethod
    def load(cls, directory: Path) -> _Progress:
        try:
            data = json.loads((directory / PROGRESS_FILE).read_bytes())
        except FileNotFoundError:
            return cls(directory)
        except (OSError, ValueError) as exc:
            log.warning("ignoring an unreadable %s (%s): starting over", PROGRESS_FILE, exc)
            return cls(directory)
        progress = cls(directory, issued_at=float(data.get("issued_at", 0)))
        if "certificate" in data:
            progress.certificate = IssuedCertificate(**data["certificate"])
        if "registration" in data:
            progress.registration = Registration(**data["registration"])
        return progress

    def save(self) -> None:
        data: dict[str, Any] = {"issued_at": self.issued_at}
        if self.certificate is not None:
            data["certificate"] = {
                "certificate_id": self.certificate.certificate_id,
                "certificate_pem": self.certificate.certificate_pem,
                "ownership_token": self.certificate.ownership_token,
            }
        if self.registration is not None:
            data["registration"] = {
                "thing_name": self.registration.thing_name,
                "device_configuration": self.registration.device_configuration,
            }
        write_atomically(self.directory / PROGRESS_FILE, json.dumps(data).encode(), 0o600)

    def forget(self) -> None:
        with suppress(FileNotFoundError):
            (self.directory / PROGRESS_FILE).unlink()


async def provision_by_claim(
    identity_dir: str | Path,
    *,
    endpoint: str,
    claim_cert: str | Path,
    claim_key: str | Path,
    template: str,
    parameters: Mapping[str, str] | None = None,
    root_ca: str | Path | None = None,
    port: int = 8883,
    client_id: str | None = None,
    key_on_device: bool = True,
    reply_timeout: float = 10.0,
    verify: bool = True,
    on_step: StepCallback | None = None,
    connection_options: Mapping[str, Any] | None = None,
) -> DeviceIdentity:
    """Give this device its own identity in ``identity_dir``, using the claim certificate.

    Returns the identity at once if ``identity_dir`` already holds one; resumes an interrupted
    run (see the module docstring). ``parameters`` are the template's (e.g. ``SerialNumber``);
    ``client_id`` is the claim connection's MQTT client id (default: a random one, since many
    devices share the claim certificate). With ``verify``, the new certificate must connect
    before this returns. ``on_step(name)`` is called after each step reached the disk.

    Raises:
        ProvisioningRejected: the service refused a request (``step``, AWS's ``error_code``).
        ProvisionError: no connection with the claim certificate (the message says why: a
            file that cannot be used, a refused or revoked certificate), no answer, a directory
            that cannot be written, or the new certificate refused by the broker (nothing is
            committed then: run it again).
        ConfigError: a claim certificate or key file that does not exist.
    """
    directory, existing, progress = await anyio.to_thread.run_sync(_open_dir, Path(identity_dir))
    if existing is not None:
        log.info("%s already holds the identity of %s", directory, existing.thing_name)
        return existing
    step = on_step or (lambda _name: None)
    ca = None if root_ca is None else Path(root_ca)
    if progress.registration is None:
        options = {"port": port, "announce_status": False, **(connection_options or {})}
        claim = IoTConnection(
            client_id or f"claim-{new_id()[:12]}",
            endpoint,
            claim_cert,
            claim_key,
            ca,
            **options,
        )
        service = FleetProvisioning(
            claim, template, key_on_device=key_on_device, reply_timeout=reply_timeout
        )
        async with claim:
            await _connected(claim, "the claim certificate", reply_timeout)
            await _register(service, progress, dict(parameters or {}), key_on_device, step)
    registration = progress.registration
    certificate = progress.certificate
    assert registration is not None
    assert certificate is not None
    identity = DeviceIdentity(
        directory,
        registration.thing_name,
        certificate.certificate_id,
        registration.device_configuration,
    )
    await _write(partial(_save, identity, certificate.certificate_pem, endpoint, port, ca))
    step("saved")
    if verify:  # before the commit: a refused certificate is not a finished identity
        options = {"port": port, "announce_status": False, **(connection_options or {})}
        async with IoTConnection(
            identity.thing_name, endpoint, identity.cert_path, identity.key_path, ca, **options
        ) as iot:
            await _connected(iot, f"the new certificate of {identity.thing_name}", reply_timeout)
        step("verified")
    await _write(identity.commit)
    await anyio.to_thread.run_sync(progress.forget)
    log.info("provisioned %s (certificate %s)", identity.thing_name, identity.certificate_id)
    return identity


async def _register(
    service: FleetProvisioning,
    progress: _Progress,
    parameters: dict[str, str],
    key_on_device: bool,
    step: StepCallback,
) -> None:
    """Issue a certificate (unless a fresh one is on disk) and register it; both on disk."""
    resumed = progress.certificate is not None
    if resumed and time.time() - progress.issued_at > TOKEN_REUSE_SECONDS:
        log.info("the certificate issued at the last attempt is too old to register: a new one")
        resumed, progress.certificate = False, None
    if progress.certificate is None:
        await _issue(service, progress, key_on_device, step)
    assert progress.certificate is not None
    try:
        progress.registration = await service.register_thing(
            progress.certificate.ownership_token, parameters
        )
    except ProvisioningRejected as exc:
        if not resumed or exc.status_code >= 500:
            raise
        # The token of an earlier attempt may have been used or have expired: start over once.
        log.info("RegisterThing refused the earlier attempt's certificate (%s): a new one", exc)
        await _issue(service, progress, key_on_device, step)
        progress.registration = await service.register_thing(
            progress.certificate.ownership_token, parameters
        )
    await _write(progress.save)
    step("registered")


async def _issue(
    service: FleetProvisioning, progress: _Progress, key_on_device: bool, step: StepCallback
) -> None:
    new_key = progress.directory / NEW_KEY_FILE
    if key_on_device:
        key, made = await anyio.to_thread.run_sync(_device_key, new_key)
        if made:
            step("key")
        issued = await service.create_certificate_from_csr(
            certificate_request(key, "ancsync device")
        )
    else:
        issued = await service.create_keys_and_certificate()
        assert issued.private_key is not None
        await _write(partial(write_atomically, new_key, issued.private_key, 0o600))
    progress.certificate, progress.issued_at = issued, time.time()
    await _write(progress.save)
    step("certificate")


def _open_dir(given: Path) -> tuple[Path, DeviceIdentity | None, _Progress]:
    """The identity directory (created 0700), its finished identity if any, and the progress
    of an unfinished run."""
    directory = given.expanduser()
    existing = DeviceIdentity.find(directory)
    if existing is not None:
        _Progress(directory).forget()  # left by a run killed right after it finished
        return directory, existing, _Progress(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create {directory}: {exc.strerror}") from None
    return directory, None, _Progress.load(directory)


def _device_key(path: Path) -> tuple[bytes, bool]:
    """The key waiting at ``path`` from an earlier attempt, or a new one written there (0600);
    and whether it is new. Written before any request names it, so a restart asks for the same
    key's certificate."""
    if path.exists():
        return path.read_bytes(), False
    key = new_private_key()
    try:
        write_atomically(path, key, 0o600)
    except OSError as exc:
        raise ProvisionError(f"cannot write the device key to {path} ({exc})") from None
    return key, True


def _save(
    identity: DeviceIdentity, certificate_pem: str, endpoint: str, port: int, ca: Path | None
) -> None:
    new_key = identity.directory / NEW_KEY_FILE
    if new_key.exists():
        new_key.replace(identity.key_path)
    identity.save(certificate_pem, endpoint=endpoint, port=port, root_ca_path=ca)


async def _write(action: Callable[[], None]) -> None:
    try:
        await anyio.to_thread.run_sync(action)
    except OSError as exc:
        raise ProvisionError(
            f"cannot write the device identity ({exc}); the directory must be writable"
        ) from None


async def _connected(iot: IoTConnection, what: str, timeout: float) -> None:  # noqa: ASYNC109
    try:
        await iot.wait_connected(timeout)
    except AncSyncError as exc:
        raise ProvisionError(f"could not connect with {what}: {exc}") from exc
