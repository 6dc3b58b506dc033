"""Certificate rotation while running: a new key and certificate, switched to without a gap.

:func:`rotate_certificate` works on a running :class:`~ancsync.IoTConnection`:

1. makes a new private key beside the current one (``<key>.new``, 0600), asks for its
   certificate with CreateCertificateFromCsr and registers it for the same thing with
   RegisterThing (the device policy must allow the provisioning topics of ``template``);
2. switches the files: the current pair is copied to ``<cert>.old`` / ``<key>.old``, then the new
   pair takes the paths the connection reads;
3. reconnects (:meth:`~ancsync.IoTConnection.reconnect`): nothing queued is lost, the durable
   outbox drains through the switch;
4. if the broker refuses the new certificate, goes back to the old pair and reconnects with it.

Each step is recorded in ``<key>.rotation.json`` first, so a device killed in the middle of the
switch finishes it at the next start (:func:`finish_interrupted_rotation`, which
``DataSyncOrchestrator`` calls before it connects) and never starts with a certificate and a key
that do not belong together.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from cryptography import x509

from ancsync.connection import IoTConnection
from ancsync.errors import AncSyncError, ProvisionError
from ancsync.files import write_atomically
from ancsync.lifecycle import Component
from ancsync.provisioning.claim import FleetProvisioning, StepCallback
from ancsync.provisioning.identity import IDENTITY_FILE
from ancsync.provisioning.keys import certificate_request, new_private_key

__all__ = [
    "ROTATION_JOB_OPERATION",
    "CertificateRotator",
    "finish_interrupted_rotation",
    "rotate_certificate",
]

ROTATION_JOB_OPERATION = "rotate_certificate"
"""The ``operation`` of the job document that makes a device rotate its certificate (the
default of ``DataSyncOrchestrator.enable_rotation``; ``ancsync certs rotate`` creates it)."""

log = logging.getLogger("ancsync.provisioning.rotation")


@dataclass(frozen=True)
class _Files:
    """The current pair and the files a rotation keeps beside it."""

    cert: Path
    key: Path

    @property
    def new_key(self) -> Path:
        return self.key.with_name(self.key.name + ".new")

    @property
    def old_cert(self) -> Path:
        return self.cert.with_name(self.cert.name + ".old")

    @property
    def old_key(self) -> Path:
        return self.key.with_name(self.key.name + ".old")

    @property
    def journal(self) -> Path:
        return self.key.with_name(self.key.name + ".rotation.json")

    def read_journal(self) -> dict[str, str] | None:
        try:
            return dict(json.loads(self.journal.read_bytes()))
        except FileNotFoundError:
            return None

    def write_journal(self, **entry: str) -> None:
        write_atomically(self.journal, json.dumps(entry).encode(), 0o600)

    def switch(self, certificate_pem: str) -> None:
        """Keep the current pair as ``.old`` and put the new one in place (resumable)."""
        if self.new_key.exists():  # not yet moved: the current pair is still the old one
            write_atomically(self.old_cert, self.cert.read_bytes(), 0o644)
            write_atomically(self.old_key, self.key.read_bytes(), 0o600)
            self.new_key.replace(self.key)
        write_atomically(self.cert, certificate_pem.encode(), 0o644)

    def switch_back(self) -> None:
        write_atomically(self.key, self.old_key.read_bytes(), 0o600)
        write_atomically(self.cert, self.old_cert.read_bytes(), 0o644)
        self.forget()

    def forget(self) -> None:
        """Remove what the rotation kept aside (the journal last)."""
        for path in (self.old_cert, self.old_key, self.new_key, self.journal):
            with suppress(FileNotFoundError):
                path.unlink()


def finish_interrupted_rotation(cert_path: Path, key_path: Path) -> bool:
    """Complete a switch to a new certificate that a stop interrupted; whether there was one.

    Blocking (file I/O): call it before connecting, in a worker thread from async code. A
    rotation interrupted before its switch is dropped: the current pair stays, and the next
    rotation starts afresh.
    """
    files = _Files(Path(cert_path), Path(key_path))
    journal = files.read_journal()
    if journal is None:
        return False
    if journal.get("phase") == "switching":
        files.switch(journal["certificate_pem"])
        _record_certificate_id(files, journal["certificate_id"])
        log.warning(
            "finished switching to certificate %s, interrupted by the last stop",
            journal["certificate_id"],
        )
        with suppress(FileNotFoundError):
            files.journal.unlink()  # .old stays until the new pair has connected
        return True
    files.forget()
    log.info("dropped a certificate rotation interrupted before its switch")
    return True


async def rotate_certificate(
    iot: IoTConnection,
    *,
    template: str,
    parameters: Mapping[str, str] | None = None,
    reply_timeout: float = 10.0,
    connect_timeout: float = 30.0,
    on_step: StepCallback | None = None,
) -> str:
    """Give the running connection's device a new key and certificate; return its id.

    The files are those the connection uses (``cert_path``, ``key_path``). ``parameters`` go to
    ``template`` as in provisioning by claim; it must register the same thing. ``on_step(name)``
    is called after ``key``, ``certificate``, ``registered``, ``switched`` and ``connected``.

    Raises:
        ProvisioningRejected: the service refused a request.
        ProvisionError: no answer, the template named another thing, or the new certificate was
            refused by the broker (the connection is back on the old one).
    """
    settings = iot.settings.iot
    if settings.cert_path is None or settings.key_path is None:
        raise ProvisionError("certificate rotation needs a connection with cert_path and key_path")
    files = _Files(Path(settings.cert_path), Path(settings.key_path))
    step = on_step or (lambda _name: None)
    service = FleetProvisioning(iot, template, reply_timeout=reply_timeout)
    try:
        key = await anyio.to_thread.run_sync(_new_key, files)
        step("key")
        issued = await service.create_certificate_from_csr(certificate_request(key, iot.thing_name))
        step("certificate")
        registration = await service.register_thing(issued.ownership_token, dict(parameters or {}))
    finally:
        service.close()
    if registration.thing_name != iot.thing_name:
        raise ProvisionError(
            f"the template {template!r} registered the certificate for {registration.thing_name!r},"
            f" not for this device ({iot.thing_name!r}); rotation needs a template whose "
            "ThingName resolves to the device's own name"
        )
    step("registered")
    await anyio.to_thread.run_sync(
        partial(_switch, files, issued.certificate_pem, issued.certificate_id)
    )
    step("switched")
    await iot.reconnect()
    try:
        await iot.wait_connected(connect_timeout)
    except AncSyncError as refused:
        log.error(  # noqa: TRY400 (the error is raised below, with its cause)
            "the new certificate %s was refused (%s): back to the old one",
            issued.certificate_id,
            refused,
        )
        await anyio.to_thread.run_sync(files.switch_back)
        await iot.reconnect()
        raise ProvisionError(
            f"the broker refused the new certificate {issued.certificate_id} ({refused}); the "
            "device went back to its old certificate"
        ) from refused
    await anyio.to_thread.run_sync(files.forget)
    step("connected")
    log.info("rotated the certificate of %s to %s", iot.thing_name, issued.certificate_id)
    return issued.certificate_id


def _new_key(files: _Files) -> bytes:
    files.forget()  # what an earlier, interrupted rotation left
    key = new_private_key()
    write_atomically(files.new_key, key, 0o600)
    return key


def _switch(files: _Files, certificate_pem: str, certificate_id: str) -> None:
    files.write_journal(
        phase="switching", certificate_pem=certificate_pem, certificate_id=certificate_id
    )
    files.switch(certificate_pem)
    _record_certificate_id(files, certificate_id)


def _record_certificate_id(files: _Files, certificate_id: str) -> None:
    """Keep ``identity.json`` (if the pair lives in an identity directory) in step."""
    record = files.cert.parent / IDENTITY_FILE
    with suppress(FileNotFoundError, ValueError):
        data = json.loads(record.read_bytes())
        data["certificate_id"] = certificate_id
        write_atomically(record, (json.dumps(data, indent=2) + "\n").encode(), 0o644)


class CertificateRotator(Component):
    """Rotates the certificate of ``iot`` before it expires, and whenever :meth:`rotate` is called
    (e.g. from a job). One more part on the one lifecycle: the orchestrator supervises it.

    The rotation is due ``before_expiry`` ahead of the certificate's ``notAfter``; a failed one
    is tried again every ``retry_interval`` seconds. ``on_rotated(certificate_id)`` is called
    after each rotation (the orchestrator reports it in the shadow).
    """

    name = "rotation"

    def __init__(
        self,
        iot: IoTConnection,
        *,
        template: str,
        parameters: Mapping[str, str] | None = None,
        before_expiry: timedelta = timedelta(days=30),
        retry_interval: float = 3600.0,
        on_rotated: Callable[[str], None] | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self._iot = iot
        self.template = template
        self.parameters = dict(parameters or {})
        self.before_expiry = before_expiry
        self.retry_interval = retry_interval
        self._on_rotated = on_rotated
        self._lock: anyio.Lock | None = None
        self.rotations = 0
        self.last_error: str | None = None

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        self._lock = anyio.Lock()
        task_status.started()
        while True:
            due_in = await anyio.to_thread.run_sync(self._seconds_until_due)
            if due_in > 0:
                # Looked at again at least every retry_interval: a rotation made another way
                # (a job) moves the date.
                await anyio.sleep(min(due_in, self.retry_interval))
                continue
            try:
                await self.rotate()
            except AncSyncError as exc:
                log.warning("certificate rotation failed (%s); trying again later", exc)
                await anyio.sleep(self.retry_interval)

    async def _shutdown(self) -> None:
        self._lock = None

    def _seconds_until_due(self) -> float:
        path = self._iot.settings.iot.cert_path
        if path is None:
            return math.inf
        expires = x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_after_utc
        return (expires - self.before_expiry - datetime.now(UTC)).total_seconds()

    async def rotate(self) -> str:
        """Rotate now (one rotation at a time); return the new certificate's id."""
        if self._lock is None:
            raise ProvisionError("the rotation part is not running; start it first")
        async with self._lock:
            try:
                certificate_id = await rotate_certificate(
                    self._iot, template=self.template, parameters=self.parameters
                )
            except AncSyncError as exc:
                self.last_error = str(exc)
                raise
            self.rotations += 1
            self.last_error = None
        if self._on_rotated is not None:
            try:
                self._on_rotated(certificate_id)
            except Exception:  # the rotation is done: a failing report must not redo it
                log.exception("reporting the rotation to %s failed", certificate_id)
        return certificate_id
