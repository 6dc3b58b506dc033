"""The emulator's fleet provisioning service: the device MQTT API of provisioning by claim.

A device (with the claim certificate, or with its own certificate when it rotates) publishes

- ``$aws/certificates/create/json`` (CreateKeysAndCertificate): the service makes a key and a
  certificate signed by the emulator's CA, registers it ``PENDING_ACTIVATION`` and answers
  ``certificateId``, ``certificatePem``, ``privateKey`` and ``certificateOwnershipToken``;
- ``$aws/certificates/create-from-csr/json`` (CreateCertificateFromCsr): the same for the key of
  the device's CSR (no ``privateKey``: the key never leaves the device);
- ``$aws/provisioning-templates/{name}/provision/json`` (RegisterThing): checks the ownership
  token, runs the template's pre-provisioning hook, then the template: the thing is created
  (the device policy learns it), the certificate attached to it with the device policy and set
  to the template's status. Answers ``thingName`` and ``deviceConfiguration``.

Replies go to ``{request topic}/accepted`` or ``/rejected`` on the requesting connection only
(:meth:`~ancsync.emulator.broker.EmbeddedBroker.publish_to_client`). A rejection is
``{"statusCode", "errorCode", "errorMessage"}`` with AWS's codes: 400 ``InvalidParameters``,
400 ``InvalidCSR``, 400 ``InvalidCertificateOwnershipToken``, 403 ``ACCESS_DENIED`` (the hook
refused or failed), 404 ``ResourceNotFound`` (no such template), 500 ``InternalFailure``.
An ownership token is valid once, for one hour (AWS's limit).
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certificates import (
    DEVICE_POLICY,
    CertificateRecord,
    CertificateRegistry,
    CertificateStatus,
)
from ancsync.emulator.certs import (
    CLAIM_NAME,
    OPERATOR_NAME,
    CertificateAuthority,
    issue_certificate,
    private_key_pem,
    sign_csr,
)
from ancsync.emulator.policy import DEFAULT_ACCOUNT_ID, DEFAULT_REGION, DevicePolicy
from ancsync.emulator.provisioning_templates import (
    HookRequest,
    HookResult,
    ProvisioningTemplate,
    default_template,
)
from ancsync.emulator.service import EmulatorService
from ancsync.errors import InvalidTopic, NotStarted
from ancsync.topics import parse_provisioning_topic, validate_thing_name

__all__ = ["OWNERSHIP_TOKEN_LIFETIME", "PROVISIONED_COMMON_NAME", "ProvisioningService"]

log = logging.getLogger("ancsync.emulator.provisioning")

OWNERSHIP_TOKEN_LIFETIME = 3600.0
"""Seconds a certificateOwnershipToken stays valid (AWS: one hour)."""
PROVISIONED_COMMON_NAME = "AWS IoT Certificate"
"""The subject CN of a certificate made by CreateKeysAndCertificate (as AWS names it)."""
# Thing names a template may not create: they are the operator's and the claim's certificates.
_RESERVED_THINGS = frozenset({OPERATOR_NAME, CLAIM_NAME})


class _Rejected(Exception):
    """A request answered on ``/rejected`` with AWS's status and error codes."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.payload = {"statusCode": status, "errorCode": code, "errorMessage": message}


@dataclass(frozen=True)
class _Ownership:
    certificate_id: str
    issued_at: float


class ProvisioningService(EmulatorService):
    """The fleet provisioning service of the emulator (see the module docstring).

    ``certificates`` receives every certificate it makes; ``policy`` learns every thing it
    creates. ``templates`` defaults to :func:`default_template` (``anc-fleet``). The CA is set
    by the emulator once its certificates exist (:meth:`use_ca`). ``clock`` gives epoch seconds
    (token expiry).
    """

    name = "provisioning"

    def __init__(
        self,
        certificates: CertificateRegistry,
        policy: DevicePolicy,
        *,
        templates: tuple[ProvisioningTemplate, ...] | None = None,
        clock: Callable[[], float] = time.time,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT_ID,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.certificates = certificates
        self.policy = policy
        self.region = region
        self.account_id = account_id
        self._clock = clock
        self._templates: dict[str, ProvisioningTemplate] = {}
        for template in templates if templates is not None else (default_template(),):
            self.register_template(template)
        self._tokens: dict[str, _Ownership] = {}
        self._ca: CertificateAuthority | None = None
        self._broker: EmbeddedBroker | None = None
        self._stats = dict.fromkeys(("accepted", "rejected"), 0)

    # -- operator API ----------------------------------------------------------------------

    def register_template(self, template: ProvisioningTemplate) -> None:
        """Add or replace a template (CreateProvisioningTemplate / UpdateProvisioningTemplate)."""
        self._templates[template.name] = template

    def remove_template(self, name: str) -> None:
        """DeleteProvisioningTemplate; unknown names are ignored."""
        self._templates.pop(name, None)

    def templates(self) -> list[ProvisioningTemplate]:
        """Every registered template, by name."""
        return [self._templates[name] for name in sorted(self._templates)]

    def use_ca(self, ca: CertificateAuthority | None) -> None:
        """Sign new certificates with ``ca`` (None: no TLS, requests fail InternalFailure)."""
        self._ca = ca

    def stats(self) -> dict[str, int]:
        """Counters: ``accepted`` and ``rejected`` replies."""
        return dict(self._stats)

    # -- service ---------------------------------------------------------------------------

    def attach(self, broker: EmbeddedBroker) -> None:
        """Answer the fleet provisioning topics of ``broker``; reply through it."""
        self._broker = broker
        broker.add_reserved_route(
            lambda topic: parse_provisioning_topic(topic) is not None, self.handle_request
        )

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        if self._broker is None:
            raise NotStarted("attach the provisioning service to a broker before running it")
        task_status.started()
        await anyio.sleep_forever()

    async def _shutdown(self) -> None:
        return None

    async def handle_request(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        """Answer one provisioning request (a ReservedTopicHandler)."""
        parsed = parse_provisioning_topic(topic)
        if parsed is None:
            return
        if not self.running:
            log.warning("provisioning service not running; dropped %r from %r", topic, identity)
            return
        operation, template = parsed
        try:
            request = _json_object(payload)
            if operation == "CreateKeysAndCertificate":
                reply = self._create_keys_and_certificate()
            elif operation == "CreateCertificateFromCsr":
                reply = self._create_certificate_from_csr(request)
            else:
                reply = await self._register_thing(identity, str(template), request)
        except _Rejected as rejected:
            suffix, body = "rejected", rejected.payload
        except Exception:
            log.exception("the provisioning request on %s failed", topic)
            suffix = "rejected"
            body = _Rejected(500, "InternalFailure", "internal service failure").payload
        else:
            suffix, body = "accepted", reply
        self._stats[suffix] += 1
        code = body.get("errorCode", "")
        log.info("%s of %r: %s %s", operation, identity.client_id, suffix, code)
        if self._broker is None:
            return
        try:
            delivered = await self._broker.publish_to_client(
                identity, f"{topic}/{suffix}", orjson.dumps(body), qos=1
            )
        except NotStarted:
            log.info("the broker has stopped; dropped the reply on %s/%s", topic, suffix)
            return
        if not delivered:
            log.warning(
                "%r is not subscribed to %s/%s (subscribe before publishing); reply dropped",
                identity.client_id,
                topic,
                suffix,
            )

    # -- operations ------------------------------------------------------------------------

    def _signing_ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise _Rejected(500, "InternalFailure", "the emulator runs without TLS: no CA")
        return self._ca

    def _pending(self, cert: x509.Certificate) -> dict[str, Any]:
        """Register a new certificate PENDING_ACTIVATION; its id, PEM and ownership token."""
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        record = self.certificates.register(pem, CertificateStatus.PENDING_ACTIVATION, policy=None)
        token = secrets.token_urlsafe(48)
        self._tokens[token] = _Ownership(record.certificate_id, self._clock())
        return {
            "certificateId": record.certificate_id,
            "certificatePem": pem,
            "certificateOwnershipToken": token,
        }

    def _create_keys_and_certificate(self) -> dict[str, Any]:
        cert, key = issue_certificate(self._signing_ca(), PROVISIONED_COMMON_NAME)
        reply = self._pending(cert)
        reply["privateKey"] = private_key_pem(key).decode()
        return reply

    def _create_certificate_from_csr(self, request: Mapping[str, Any]) -> dict[str, Any]:
        csr_pem = request.get("certificateSigningRequest")
        if not isinstance(csr_pem, str) or not csr_pem:
            raise _Rejected(400, "InvalidParameters", "certificateSigningRequest is required")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
            cert = sign_csr(self._signing_ca(), csr)
        except ValueError as exc:
            message = f"invalid certificate signing request: {exc}"
            raise _Rejected(400, "InvalidCSR", message) from exc
        return self._pending(cert)

    def _owned_certificate(self, token: Any) -> CertificateRecord:
        if not isinstance(token, str) or not token:
            raise _Rejected(
                400,
                "InvalidCertificateOwnershipToken",
                "Certificate ownership token cannot be empty.",
            )
        ownership = self._tokens.get(token)
        now = self._clock()
        if ownership is None or now - ownership.issued_at > OWNERSHIP_TOKEN_LIFETIME:
            self._tokens.pop(token, None)
            raise _Rejected(
                400,
                "InvalidCertificateOwnershipToken",
                "Certificate ownership token is invalid, expired or already used.",
            )
        record = self.certificates.get(ownership.certificate_id)
        if record is None or record.status is not CertificateStatus.PENDING_ACTIVATION:
            raise _Rejected(
                400,
                "InvalidCertificateOwnershipToken",
                "the certificate of this token is no longer pending activation",
            )
        return record

    async def _register_thing(
        self, identity: ClientIdentity, template_name: str, request: Mapping[str, Any]
    ) -> dict[str, Any]:
        template = self._templates.get(template_name)
        if template is None:
            raise _Rejected(404, "ResourceNotFound", f"Template {template_name} not found")
        token = request.get("certificateOwnershipToken")
        record = self._owned_certificate(token)
        given = request.get("parameters") or {}
        if not isinstance(given, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in given.items()
        ):
            raise _Rejected(400, "InvalidParameters", "parameters must map strings to strings")
        if template.pre_provisioning_hook is not None:
            given = {**given, **await self._ask_hook(template, identity, record, given)}
        try:
            values = template.resolve(given)
        except KeyError as missing:
            message = f"Missing parameter {missing.args[0]}"
            raise _Rejected(400, "InvalidParameters", message) from None
        thing = template.render_thing_name(values)
        try:
            validate_thing_name(thing)
        except InvalidTopic as exc:
            raise _Rejected(400, "InvalidParameters", f"invalid thing name: {exc}") from exc
        if thing in _RESERVED_THINGS:
            raise _Rejected(400, "InvalidParameters", f"thing name {thing!r} is reserved")
        self._tokens.pop(str(token), None)
        self.policy.add_thing(thing)
        self.certificates.attach(record.certificate_id, thing, DEVICE_POLICY)
        self.certificates.set_status(record.certificate_id, template.certificate_status)
        log.info(
            "provisioned thing %r with certificate %s… (%s) from template %r",
            thing,
            record.certificate_id[:12],
            template.certificate_status.value,
            template.name,
        )
        return {
            "thingName": thing,
            "deviceConfiguration": template.render_device_configuration(values),
        }

    async def _ask_hook(
        self,
        template: ProvisioningTemplate,
        identity: ClientIdentity,
        record: CertificateRecord,
        parameters: Mapping[str, str],
    ) -> Mapping[str, str]:
        """Run the template's hook; its parameter overrides, or ACCESS_DENIED."""
        hook = template.pre_provisioning_hook
        assert hook is not None
        arn = f"arn:aws:iot:{self.region}:{self.account_id}:provisioningtemplate/{template.name}"
        request = HookRequest(
            claim_certificate_id=identity.certificate_id,
            certificate_id=record.certificate_id,
            certificate_pem=record.certificate_pem,
            template_arn=arn,
            client_id=identity.client_id,
            parameters=dict(parameters),
        )
        try:
            answer = hook(request)
            result = await answer if inspect.isawaitable(answer) else answer
        except Exception as exc:
            log.exception("the pre-provisioning hook of %r failed", template.name)
            message = f"the pre-provisioning hook failed: {exc}"
            raise _Rejected(403, "ACCESS_DENIED", message) from exc
        if not isinstance(result, HookResult):
            raise _Rejected(403, "ACCESS_DENIED", "the pre-provisioning hook gave no HookResult")
        if not result.allow:
            reason = result.reason or "the pre-provisioning hook did not allow provisioning"
            raise _Rejected(403, "ACCESS_DENIED", reason)
        return result.parameter_overrides


def _json_object(payload: bytes) -> dict[str, Any]:
    """The request as a JSON object (an empty payload is ``{}``)."""
    if not payload.strip():
        return {}
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _Rejected(400, "InvalidParameters", "the payload is not valid JSON") from None
    if not isinstance(request, dict):
        raise _Rejected(400, "InvalidParameters", "the payload is not a JSON object")
    return request
