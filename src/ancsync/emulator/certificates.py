"""The emulator's certificate registry: every client certificate it knows, by AWS certificate id.

AWS IoT names a certificate by its ``certificateId``, the SHA-256 of its DER encoding in hex
(:func:`certificate_id`). Only an ``ACTIVE`` certificate may connect; ``INACTIVE`` can be made
active again, ``REVOKED`` is final here (AWS does not document whether it may be reactivated);
``PENDING_ACTIVATION`` is what fleet provisioning issues until ``RegisterThing`` activates it.

Each :class:`CertificateRecord` holds the PEM, the thing it is attached to (None for the
operator and claim certificates), the policy attached to it (:data:`DEVICE_POLICY`,
:data:`CLAIM_POLICY`, :data:`OPERATOR_POLICY`, or None: none yet) and when it was created. The
registry is pure bookkeeping: disconnecting the clients of a certificate that leaves
``ACTIVE`` is the emulator's (:meth:`~ancsync.emulator.server.Emulator.revoke_certificate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from ancsync.errors import ConfigError
from ancsync.provisioning.keys import certificate_id

__all__ = [
    "CLAIM_POLICY",
    "DEVICE_POLICY",
    "OPERATOR_POLICY",
    "CertificateRecord",
    "CertificateRegistry",
    "CertificateStatus",
    "certificate_id",
]

DEVICE_POLICY = "ancsync-device"
"""The name of the device policy (``device_policy.json.tpl``) when attached to a certificate."""
CLAIM_POLICY = "ancsync-claim"
"""The name of the claim policy (``claim_policy.json.tpl``): the provisioning topics only."""
OPERATOR_POLICY = "ancsync-operator"
"""The operator certificate's policy: the cloud side, every topic."""


class CertificateStatus(StrEnum):
    """A certificate's status, as AWS IoT spells it."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"
    PENDING_ACTIVATION = "PENDING_ACTIVATION"


@dataclass(frozen=True)
class CertificateRecord:
    """What the registry knows of one certificate (``created_at``: epoch seconds)."""

    certificate_id: str
    certificate_pem: str
    status: CertificateStatus
    thing_name: str | None
    policy: str | None
    created_at: float

    def describe(self) -> str:
        """One line: the id (shortened), status, thing and policy."""
        return (
            f"certificate {self.certificate_id[:12]}… ({self.status.value}, thing "
            f"{self.thing_name!r}, policy {self.policy!r})"
        )


class CertificateRegistry:
    """The certificates the emulator issued or signed, by certificate id.

    ``clock`` gives the creation times (epoch seconds).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[str, CertificateRecord] = {}
        self._clock = clock

    def register(
        self,
        certificate_pem: str,
        status: CertificateStatus = CertificateStatus.ACTIVE,
        *,
        thing_name: str | None = None,
        policy: str | None = DEVICE_POLICY,
    ) -> CertificateRecord:
        """Add (or replace) a certificate; returns its record."""
        cert_id = certificate_id(certificate_pem)
        record = CertificateRecord(
            cert_id, certificate_pem, status, thing_name, policy, self._clock()
        )
        self._records[cert_id] = record
        return record

    def get(self, cert_id: str | None) -> CertificateRecord | None:
        """The record of ``cert_id``, or None if the registry does not know it."""
        return self._records.get(cert_id) if cert_id is not None else None

    def require(self, cert_id: str) -> CertificateRecord:
        """The record of ``cert_id``; :class:`ConfigError` if unknown."""
        record = self._records.get(cert_id)
        if record is None:
            raise ConfigError(
                f"no certificate {cert_id!r} in the emulator; list them with "
                "emulator.list_certificates()"
            )
        return record

    def list(self) -> list[CertificateRecord]:
        """Every record, oldest first."""
        return sorted(self._records.values(), key=lambda record: record.created_at)

    def set_status(self, cert_id: str, status: CertificateStatus) -> CertificateRecord:
        """UpdateCertificate: set the status of ``cert_id`` (idempotent); returns the record.

        :class:`ConfigError` for an unknown id, for leaving ``REVOKED``, or for setting
        ``PENDING_ACTIVATION`` (AWS: internal statuses are not for callers).
        """
        record = self.require(cert_id)
        if status is CertificateStatus.PENDING_ACTIVATION:
            raise ConfigError("PENDING_ACTIVATION is not a status to set; use ACTIVE or INACTIVE")
        if record.status is CertificateStatus.REVOKED and status is not CertificateStatus.REVOKED:
            raise ConfigError(
                f"{record.describe()} is revoked, which is final; issue a new certificate"
            )
        updated = replace(record, status=status)
        self._records[cert_id] = updated
        return updated

    def attach(self, cert_id: str, thing_name: str, policy: str = DEVICE_POLICY) -> None:
        """Attach ``cert_id`` to ``thing_name`` with ``policy`` (RegisterThing's attachments)."""
        self._records[cert_id] = replace(
            self.require(cert_id), thing_name=thing_name, policy=policy
        )

    def connect_refusal(self, cert_id: str | None) -> str | None:
        """Why a client with ``cert_id`` may not connect (None: it may, or it is not known)."""
        record = self.get(cert_id)
        if record is None or record.status is CertificateStatus.ACTIVE:
            return None
        status = record.status.value.lower().replace("_", " ")
        return (
            f"certificate {record.certificate_id[:12]}… is {status} "
            f"(only ACTIVE certificates connect); use an active certificate"
        )
