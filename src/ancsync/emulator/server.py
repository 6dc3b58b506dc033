"""The local AWS IoT Core emulator: broker, shadow service, device policy and rules sink in one.

:class:`Emulator` is what ``ancsync emulator``, the test fixtures and the demo start::

    async with Emulator(certs_dir, things=["anc-device-001"]) as emulator:
        settings = emulator.device_settings("anc-device-001")  # IOT_ENDPOINT=... for a device
        ...
        emergencies = emulator.rules.emergencies()

It is a :class:`~ancsync.lifecycle.Component`: it runs in the current event loop, in the task
group of its owner (``await task_group.start(emulator.run)``) or for the length of an
``async with`` block, and its broker and services run in its own task group.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from ancsync.emulator.broker import DEFAULT_SESSION_EXPIRY, EmbeddedBroker
from ancsync.emulator.certificate_operator import CertificateOperatorService
from ancsync.emulator.certificates import (
    CLAIM_POLICY,
    DEVICE_POLICY,
    OPERATOR_POLICY,
    CertificateRecord,
    CertificateRegistry,
    CertificateStatus,
)
from ancsync.emulator.certificates import (
    certificate_id as id_of_certificate,
)
from ancsync.emulator.certs import CertPair, DevCerts, ensure_dev_certs, load_ca
from ancsync.emulator.component import EmulatorComponent
from ancsync.emulator.jobs import JobsService
from ancsync.emulator.policy import DevicePolicy, load_claim_policy
from ancsync.emulator.principals import PrincipalAuthorizer
from ancsync.emulator.provisioning import ProvisioningService
from ancsync.emulator.provisioning_templates import ProvisioningTemplate
from ancsync.emulator.rules import RulesSink
from ancsync.emulator.service import EmulatorService
from ancsync.emulator.shadow_documents import ShadowLimits
from ancsync.emulator.shadows import ShadowService
from ancsync.errors import ConfigError, NotStarted
from ancsync.lifecycle import Component, unwrapping
from ancsync.topics import validate_thing_name

__all__ = ["DEFAULT_THING", "Emulator", "serve_until_signalled"]

log = logging.getLogger("ancsync.emulator.server")

DEFAULT_THING = "anc-device-001"


class Emulator(EmulatorComponent):
    """Broker + Device Shadow and Jobs services + device policy + rules sink, on ``host:port``.

    ``certs_dir`` receives the dev CA, server, operator and one certificate per thing (reused
    when still valid). ``tls=False`` serves plain MQTT instead (loopback hosts only; clients are
    then identified by client id alone). ``port`` 0 picks a free port: read :attr:`port`.
    ``db_path`` None keeps the rules sink in memory. ``limits``, ``clock`` (epoch seconds for
    every shadow timestamp) and ``shadow_latency`` (seconds added to each shadow request)
    configure the shadow service; ``jobs_seconds_per_minute`` shortens the Jobs timeouts' minutes
    (tests). ``session_expiry`` is how long a persistent session outlives its connection
    (seconds; AWS IoT Core's default is one hour). ``services`` adds services of your own
    (:class:`~ancsync.emulator.service.EmulatorService`) beside the shadow service and the rules
    sink. Each part stops within its own ``stop_timeout`` (5 s), all at the same time.

    Every certificate is in :attr:`certificates` (ACTIVE, INACTIVE, REVOKED); the claim
    certificate (``certs.claim``) may use the fleet provisioning topics only, and
    :attr:`provisioning` answers them with ``templates`` (default: ``anc-fleet``, thing
    ``anc-{SerialNumber}``). Things it provisions join :attr:`things`.
    """

    name = "emulator"

    def __init__(
        self,
        certs_dir: Path | str,
        things: Sequence[str] = (DEFAULT_THING,),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = True,
        db_path: Path | str | None = None,
        limits: ShadowLimits | None = None,
        clock: Callable[[], float] = time.time,
        shadow_latency: float = 0.0,
        jobs_seconds_per_minute: float = 60.0,
        session_expiry: float = DEFAULT_SESSION_EXPIRY,
        services: Sequence[EmulatorService] = (),
        templates: Sequence[ProvisioningTemplate] | None = None,
    ) -> None:
        super().__init__()
        if not things:
            raise ConfigError("the emulator needs at least one thing name, e.g. anc-device-001")
        self._dev_things = tuple(validate_thing_name(thing) for thing in things)
        self.certs_dir = Path(certs_dir)
        self.host = host
        self.tls = tls
        self.db_path = db_path
        self.session_expiry = session_expiry
        self._requested_port = port
        self.policy = DevicePolicy(self._dev_things)
        #: Every certificate the emulator issued or signed, by certificate id.
        self.certificates = CertificateRegistry(clock=clock)
        self.authorizer = PrincipalAuthorizer(
            self.certificates, self.policy, DevicePolicy(statements=load_claim_policy())
        )
        #: The fleet provisioning service: ``emulator.provisioning.register_template(...)``.
        self.provisioning = ProvisioningService(
            self.certificates,
            self.policy,
            templates=tuple(templates) if templates is not None else None,
            clock=clock,
        )
        self.shadows = ShadowService(limits=limits, clock=clock, latency=shadow_latency)
        #: The Jobs service: ``emulator.jobs.create_job(...)``, describe, cancel.
        self.jobs = JobsService(clock=clock, seconds_per_minute=jobs_seconds_per_minute)
        #: The operator certificates API over MQTT (``ancsync certs list|revoke...``).
        self.certificate_operator = CertificateOperatorService(
            self.certificates,
            self.update_certificate,
            region=self.policy.region,
            account_id=self.policy.account_id,
        )
        self._rules = RulesSink(db_path)
        #: Every service, run beside the broker: shadow, jobs, provisioning, the certificates
        #: operator API, the rules sink, then yours.
        self.services: tuple[EmulatorService, ...] = (
            self.shadows,
            self.jobs,
            self.provisioning,
            self.certificate_operator,
            self._rules,
            *services,
        )
        self._certs: DevCerts | None = None
        self._broker: EmbeddedBroker | None = None

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Generate certificates, open the services, then start the broker."""
        certs = None
        if self.tls:
            certs = await anyio.to_thread.run_sync(self._prepare_certs)
        broker = EmbeddedBroker(
            certs,
            host=self.host,
            port=self._requested_port,
            plain_port=None if self.tls else self._requested_port,
            authorizer=self.authorizer,
            session_expiry=self.session_expiry,
        )
        for service in self.services:
            service.attach(broker)
        # One part failed (a taken port, an unwritable database): raise its own error.
        async with unwrapping(), anyio.create_task_group() as parts:
            # The services first: a client may connect as soon as the broker listens.
            for service in self.services:
                await parts.start(service.run)
            await parts.start(broker.run)
            self._certs, self._broker = certs, broker
            log.info(
                "emulator ready on %s:%s (%s)",
                self.host,
                self.port,
                "TLS" if self.tls else "plain",
            )
            task_status.started()

    def _prepare_certs(self) -> DevCerts:
        """Create or reuse the dev certificates and register them (the status of one already
        registered, e.g. revoked before a restart, is kept)."""
        certs = ensure_dev_certs(self.certs_dir, self._dev_things, claim=True)
        pairs: list[tuple[CertPair, str | None, str]] = [
            (pair, thing, DEVICE_POLICY) for thing, pair in certs.devices.items()
        ]
        pairs.append((certs.operator, None, OPERATOR_POLICY))
        if certs.claim is not None:
            pairs.append((certs.claim, None, CLAIM_POLICY))
        for pair, thing, policy in pairs:
            pem = pair.cert.read_text()
            if self.certificates.get(id_of_certificate(pem)) is None:
                self.certificates.register(pem, thing_name=thing, policy=policy)
        self.provisioning.use_ca(load_ca(certs))
        return certs

    async def _shutdown(self) -> None:
        self._certs, self._broker = None, None

    @property
    def things(self) -> tuple[str, ...]:
        """The thing names: those given, then those fleet provisioning created (sorted)."""
        provisioned = sorted(self.policy.things.difference(self._dev_things))
        return (*self._dev_things, *provisioned)

    # -- certificates ----------------------------------------------------------------------

    def list_certificates(self) -> list[CertificateRecord]:
        """Every certificate the emulator knows (dev, claim, operator, provisioned)."""
        return self.certificates.list()

    def certificate_of(self, thing_name: str) -> CertificateRecord:
        """The newest certificate attached to ``thing_name``; ConfigError if there is none."""
        attached = [r for r in self.certificates.list() if r.thing_name == thing_name]
        if not attached:
            raise ConfigError(f"no certificate is attached to thing {thing_name!r}")
        return attached[-1]

    async def update_certificate(
        self, certificate_id: str, status: CertificateStatus
    ) -> CertificateRecord:
        """UpdateCertificate: set the status; leaving ACTIVE drops the certificate's
        connections at once (AWS: within minutes), and it can no longer connect."""
        record = self.certificates.set_status(certificate_id, status)
        if status is not CertificateStatus.ACTIVE and self._broker is not None:
            await self._broker.disconnect_certificate(certificate_id, status.value)
        return record

    async def revoke_certificate(self, certificate_id: str) -> CertificateRecord:
        """Set ``certificate_id`` REVOKED (final) and drop its connections."""
        return await self.update_certificate(certificate_id, CertificateStatus.REVOKED)

    async def deactivate_certificate(self, certificate_id: str) -> CertificateRecord:
        """Set ``certificate_id`` INACTIVE and drop its connections (reactivate it later)."""
        return await self.update_certificate(certificate_id, CertificateStatus.INACTIVE)

    async def activate_certificate(self, certificate_id: str) -> CertificateRecord:
        """Set ``certificate_id`` ACTIVE again (not a revoked one)."""
        return await self.update_certificate(certificate_id, CertificateStatus.ACTIVE)

    def _started(self) -> EmbeddedBroker:
        if self._broker is None:
            raise NotStarted("the emulator is not running; use `async with Emulator(...)`")
        return self._broker

    @property
    def certs(self) -> DevCerts:
        """The dev certificate paths (CA, server, operator, claim, one per thing); TLS only."""
        self._started()
        if self._certs is None:
            raise ConfigError("this emulator runs without TLS (tls=False): it has no certificates")
        return self._certs

    @property
    def broker(self) -> EmbeddedBroker:
        """The running embedded broker (``publish``, ``stats``...)."""
        return self._started()

    @property
    def rules(self) -> RulesSink:
        """The rules sink holding the telemetry and emergencies received."""
        self._started()
        return self._rules

    @property
    def port(self) -> int:
        """The bound port: TLS, or plain MQTT with ``tls=False``."""
        broker = self.broker
        return broker.port if self.tls else int(broker.plain_port or 0)

    def device_settings(self, thing_name: str = DEFAULT_THING) -> dict[str, str]:
        """The environment variables a device needs to connect as ``thing_name``.

        A provisioned thing's certificate and key are the device's own: its settings have no
        ``IOT_CERT_PATH`` or ``IOT_KEY_PATH``.
        """
        if thing_name not in self.things:
            raise ConfigError(f"{thing_name!r} is not one of this emulator's things {self.things}")
        settings = {"IOT_ENDPOINT": self.host, "IOT_PORT": str(self.port)}
        settings["IOT_THING_NAME"] = thing_name
        if self.tls:
            if thing_name in self._dev_things:
                device = self.certs.device(thing_name)
                settings["IOT_CERT_PATH"] = str(device.cert.resolve())
                settings["IOT_KEY_PATH"] = str(device.key.resolve())
            settings["IOT_ROOT_CA_PATH"] = str(self.certs.ca.resolve())
        else:
            settings["IOT_TLS"] = "false"
        return settings


async def serve_until_signalled(
    emulator: Emulator,
    on_ready: Callable[[Emulator], None],
    *,
    parts: Sequence[Component] = (),
) -> None:
    """Run ``emulator``, then ``parts`` beside it (e.g. its console); call ``on_ready(emulator)``
    once all are ready; stop them all on SIGINT/SIGTERM."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with emulator, AsyncExitStack() as running:
            for part in parts:
                await running.enter_async_context(part)
            on_ready(emulator)
            async for signum in signals:
                log.info("%s received: shutting down", signal.Signals(signum).name)
                return
