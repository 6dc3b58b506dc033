"""The emulator's operator certificates API: list, describe and update certificates over MQTT.

The operator (the operator certificate, or on a ``--no-tls`` emulator any client id that is not
a thing name) publishes a JSON request on ``ancsync/emulator/certificates/{op}``, ``op`` one of

- ``list`` (optional ``thingName``): ``{"certificates": [...]}``, the summaries of
  boto3's ``list_certificates`` (``certificateId``, ``certificateArn``, ``status``,
  ``creationDate``) plus ``thingName``;
- ``describe`` (``certificateId``): the ``certificateDescription`` of boto3's
  ``describe_certificate`` (the summary and ``certificatePem``);
- ``update`` (``certificateId``, ``newStatus``: ACTIVE, INACTIVE or REVOKED): UpdateCertificate,
  answered with the certificate as described; leaving ACTIVE drops its connections.

It is answered on ``.../{op}/accepted`` (``{"result": ...}``) or ``.../{op}/rejected``
(``code``: ``ResourceNotFoundException``, ``CertificateStateException``,
``InvalidRequestException``; ``message``), with the request's ``clientToken``, as the Jobs
operator API is (:mod:`ancsync.emulator.jobs`). The device policy gives devices no access to
these topics, and a request from a device certificate is ignored anyway. ``ancsync certs`` uses
them (:mod:`ancsync.tools.certs_operator`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certificates import (
    OPERATOR_POLICY,
    CertificateRecord,
    CertificateRegistry,
    CertificateStatus,
)
from ancsync.emulator.policy import DEFAULT_ACCOUNT_ID, DEFAULT_REGION
from ancsync.emulator.service import EmulatorService
from ancsync.errors import CertificateRejected, ConfigError, NotStarted
from ancsync.topics import OPERATOR_CERTIFICATES_PREFIX

__all__ = ["CertificateOperatorService", "certificate_description", "certificate_summary"]

log = logging.getLogger("ancsync.emulator.certificate_operator")

_OPERATIONS = ("list", "describe", "update")
_SETTABLE = ("ACTIVE", "INACTIVE", "REVOKED")

UpdateCertificate = Callable[[str, CertificateStatus], Awaitable[CertificateRecord]]
"""Set a certificate's status and drop its connections (``Emulator.update_certificate``)."""


def certificate_summary(
    record: CertificateRecord,
    *,
    region: str = DEFAULT_REGION,
    account_id: str = DEFAULT_ACCOUNT_ID,
) -> dict[str, Any]:
    """A certificate as boto3's ``list_certificates`` lists it, with its ``thingName``.

    ``creationDate`` is ISO 8601 in UTC; ``thingName`` is None for the operator and claim
    certificates.
    """
    return {
        "certificateId": record.certificate_id,
        "certificateArn": f"arn:aws:iot:{region}:{account_id}:cert/{record.certificate_id}",
        "status": record.status.value,
        "creationDate": datetime.fromtimestamp(record.created_at, UTC).isoformat(),
        "thingName": record.thing_name,
    }


def certificate_description(
    record: CertificateRecord,
    *,
    region: str = DEFAULT_REGION,
    account_id: str = DEFAULT_ACCOUNT_ID,
) -> dict[str, Any]:
    """A certificate as boto3's ``describe_certificate`` describes it: the summary and PEM."""
    summary = certificate_summary(record, region=region, account_id=account_id)
    return {**summary, "certificatePem": record.certificate_pem}


class CertificateOperatorService(EmulatorService):
    """Answers the operator certificates API (see the module docstring) from ``certificates``.

    ``update`` sets a status (the emulator's ``update_certificate``, which also drops the
    connections of a certificate leaving ACTIVE).
    """

    name = "certificate-operator"

    def __init__(
        self,
        certificates: CertificateRegistry,
        update: UpdateCertificate,
        *,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT_ID,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.certificates = certificates
        self._update = update
        self._region = region
        self._account_id = account_id
        self._broker: EmbeddedBroker | None = None

    def attach(self, broker: EmbeddedBroker) -> None:
        """Answer the operator certificates topics published to ``broker``."""
        self._broker = broker
        broker.add_publish_listener(self._on_publish)

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Nothing to run: requests are answered as they are published, until cancelled."""
        if self._broker is None:
            raise NotStarted("attach the certificate operator API to a broker before running it")
        task_status.started()
        await anyio.sleep_forever()

    async def _shutdown(self) -> None:
        return None

    def is_operator(self, identity: ClientIdentity) -> bool:
        """Whether ``identity`` may use this API: the operator certificate, or a client of the
        plain listener (no certificate; the policy already refused a thing name as client id)."""
        if identity.certificate_id is None:
            return identity.common_name is None
        record = self.certificates.get(identity.certificate_id)
        return record is not None and record.policy == OPERATOR_POLICY

    def _record(self, request: dict[str, Any]) -> CertificateRecord:
        certificate_id = request.get("certificateId")
        if not isinstance(certificate_id, str) or not certificate_id:
            raise CertificateRejected("InvalidRequestException", "give the certificateId")
        record = self.certificates.get(certificate_id)
        if record is None:
            raise CertificateRejected(
                "ResourceNotFoundException",
                f"there is no certificate {certificate_id!r}; list them with `ancsync certs list`",
            )
        return record

    def _description(self, record: CertificateRecord) -> dict[str, Any]:
        return certificate_description(record, region=self._region, account_id=self._account_id)

    async def operate(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request (``operation``: list, describe or update); the result's dict.

        Raises:
            CertificateRejected: an unknown certificate, a missing or bad field, or a status
                change that is not allowed (leaving REVOKED).
        """
        if operation == "list":
            thing = request.get("thingName")
            records = [r for r in self.certificates.list() if thing in (None, r.thing_name)]
            summaries = [
                certificate_summary(r, region=self._region, account_id=self._account_id)
                for r in records
            ]
            return {"certificates": summaries}
        record = self._record(request)
        if operation == "describe":
            return self._description(record)
        status = request.get("newStatus")
        if status not in _SETTABLE:
            raise CertificateRejected(
                "InvalidRequestException",
                f"newStatus {status!r} is not one of {', '.join(_SETTABLE)}",
            )
        try:
            updated = await self._update(record.certificate_id, CertificateStatus(status))
        except ConfigError as exc:
            raise CertificateRejected("CertificateStateException", str(exc)) from None
        return self._description(updated)

    async def _answer(self, operation: str, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise CertificateRejected("InvalidRequestException", "not a JSON object")
        return await self.operate(operation, request)

    async def _on_publish(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        prefix, _, operation = topic.rpartition("/")
        if prefix != OPERATOR_CERTIFICATES_PREFIX or operation not in _OPERATIONS:
            return
        if not self.running or not self.is_operator(identity):
            log.warning("ignored %s from %s: not the running operator API", topic, identity)
            return
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError:
            request = None
        token = request.get("clientToken") if isinstance(request, dict) else None
        try:
            reply: dict[str, Any] = {"result": await self._answer(operation, request)}
            suffix = "accepted"
        except CertificateRejected as exc:
            reply = {"code": exc.code, "message": exc.message}
            suffix = "rejected"
        if isinstance(token, str):
            reply["clientToken"] = token
        log.info("operator %s: certificates %s %s", identity.client_id, operation, suffix)
        if self._broker is None:
            return
        try:
            await self._broker.publish(f"{topic}/{suffix}", orjson.dumps(reply), qos=1)
        except NotStarted:
            log.info("the broker has stopped; dropped the reply on %s/%s", topic, suffix)
