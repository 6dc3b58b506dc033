"""The cloud side of device certificates: list, describe, and set their status.

``ancsync certs list|describe|revoke|deactivate|activate`` uses one of two operators with the same
three calls:

- :class:`EmulatorCertificatesOperator` talks to the emulator's operator certificates API over
  MQTT with the operator certificate (JSON requests on
  ``ancsync/emulator/certificates/{list|describe|update}``, answered on ``.../accepted`` or
  ``.../rejected``; see :mod:`ancsync.emulator.certificate_operator`);
- :class:`AwsCertificatesOperator` calls AWS IoT's control plane through boto3's ``iot`` client
  (``pip install 'ancsync[aws]'``).

Both return AWS-shaped dicts: ``certificateId``, ``certificateArn``, ``status``,
``creationDate`` (ISO 8601) and ``thingName`` (None when attached to no thing); ``describe``
and ``update`` also ``certificatePem``. A refused request raises
:class:`~ancsync.errors.CertificateRejected` with AWS's error code.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

from ancsync.connection import IoTConnection
from ancsync.errors import CertificateRejected
from ancsync.tools.operator_api import AwsOperatorApi, EmulatorOperatorApi
from ancsync.topics import OPERATOR_CERTIFICATES_PREFIX

__all__ = [
    "AwsCertificatesOperator",
    "CertificatesOperator",
    "EmulatorCertificatesOperator",
]

log = logging.getLogger("ancsync.tools.certs_operator")


class CertificatesOperator(Protocol):
    """What ``ancsync certs`` needs of an operator."""

    async def list(self, thing_name: str | None = None) -> list[dict[str, Any]]:
        """ListCertificates: every certificate, or those attached to ``thing_name``."""
        ...

    async def describe(self, certificate_id: str) -> dict[str, Any]:
        """DescribeCertificate."""
        ...

    async def update(self, certificate_id: str, new_status: str) -> dict[str, Any]:
        """UpdateCertificate to ``new_status`` (ACTIVE, INACTIVE, REVOKED); returns it described."""
        ...


class EmulatorCertificatesOperator(EmulatorOperatorApi):
    """The emulator's operator certificates API over an operator :class:`IoTConnection` (not
    started): ``async with EmulatorCertificatesOperator(connection) as certs: ...``."""

    def __init__(self, connection: IoTConnection, *, timeout: float = 15.0) -> None:
        super().__init__(
            connection, OPERATOR_CERTIFICATES_PREFIX, CertificateRejected, timeout=timeout
        )

    name = "certificates-operator"

    async def list(self, thing_name: str | None = None) -> list[dict[str, Any]]:
        """ListCertificates on the emulator (``thing_name``: those attached to it)."""
        body = {} if thing_name is None else {"thingName": thing_name}
        return list((await self._call("list", body))["certificates"])

    async def describe(self, certificate_id: str) -> dict[str, Any]:
        """DescribeCertificate on the emulator."""
        return dict(await self._call("describe", {"certificateId": certificate_id}))

    async def update(self, certificate_id: str, new_status: str) -> dict[str, Any]:
        """UpdateCertificate on the emulator; leaving ACTIVE drops the certificate's clients."""
        body = {"certificateId": certificate_id, "newStatus": new_status}
        return dict(await self._call("update", body))


class AwsCertificatesOperator(AwsOperatorApi):
    """AWS IoT's certificates through boto3's ``iot`` client (``client`` may be given).

    boto3's errors become :class:`~ancsync.errors.CertificateRejected` with AWS's code. Each
    certificate's ``thingName`` is looked up with ``list_principal_things`` (one call each).
    """

    def __init__(self, client: Any | None = None, *, region: str | None = None) -> None:
        super().__init__(CertificateRejected, client, region=region)

    name = "aws-certificates-operator"

    async def _thing_of(self, certificate_arn: str) -> str | None:
        things = (await self._call("list_principal_things", principal=certificate_arn))["things"]
        return str(things[0]) if things else None

    async def _shaped(self, certificate: dict[str, Any], *, pem: bool) -> dict[str, Any]:
        """The fields the emulator gives too, dates as ISO 8601 (and the PEM if ``pem``)."""
        created = certificate.get("creationDate")
        shaped = {
            "certificateId": certificate["certificateId"],
            "certificateArn": certificate["certificateArn"],
            "status": certificate["status"],
            "creationDate": created.isoformat() if isinstance(created, datetime) else created,
            "thingName": await self._thing_of(certificate["certificateArn"]),
        }
        if pem:
            shaped["certificatePem"] = certificate.get("certificatePem")
        return shaped

    async def list(self, thing_name: str | None = None) -> list[dict[str, Any]]:
        """ListCertificates (the first page), or the certificates attached to ``thing_name``
        (``list_thing_principals``)."""
        if thing_name is None:
            found = (await self._call("list_certificates"))["certificates"]
            return [await self._shaped(certificate, pem=False) for certificate in found]
        principals = (await self._call("list_thing_principals", thingName=thing_name))["principals"]
        ids = [arn.rsplit("/", 1)[-1] for arn in principals if ":cert/" in arn]
        described = [await self.describe(certificate_id) for certificate_id in ids]
        return [{k: v for k, v in d.items() if k != "certificatePem"} for d in described]

    async def describe(self, certificate_id: str) -> dict[str, Any]:
        """DescribeCertificate."""
        reply = await self._call("describe_certificate", certificateId=certificate_id)
        return await self._shaped(reply["certificateDescription"], pem=True)

    async def update(self, certificate_id: str, new_status: str) -> dict[str, Any]:
        """UpdateCertificate; returns the certificate as described afterwards."""
        await self._call("update_certificate", certificateId=certificate_id, newStatus=new_status)
        return await self.describe(certificate_id)
