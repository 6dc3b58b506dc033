"""The emulator's authorizer: a certificate's status and attachments choose the policy it gets.

AWS IoT evaluates the policies attached to the certificate (the principal) a client connected
with, and ``${iot:Connection.Thing.ThingName}`` is the thing attached to it. Here
:class:`PrincipalAuthorizer` looks the certificate up in the
:class:`~ancsync.emulator.certificates.CertificateRegistry`:

- a certificate that is not ``ACTIVE`` may not connect (the reason names its status);
- :data:`~ancsync.emulator.certificates.CLAIM_POLICY`: the claim policy (provisioning topics
  only); :data:`~ancsync.emulator.certificates.DEVICE_POLICY`: the device policy as the thing
  the certificate is attached to, whatever its subject CN; the operator's: every topic;
- a certificate the registry does not know (made with the dev CA outside the emulator, as some
  tests do) and the plain listener's clients get the device policy by their CN or client id,
  as before the registry existed.
"""

from __future__ import annotations

from dataclasses import replace

from ancsync.emulator.auth import ClientIdentity, Denial
from ancsync.emulator.certificates import (
    CLAIM_POLICY,
    DEVICE_POLICY,
    OPERATOR_POLICY,
    CertificateRegistry,
)
from ancsync.emulator.policy import DevicePolicy

__all__ = ["PrincipalAuthorizer"]


class PrincipalAuthorizer:
    """An :class:`~ancsync.emulator.auth.Authorizer` (and ``ExplainsDenials``) that applies the
    policy attached to each client's certificate (see the module docstring)."""

    def __init__(
        self,
        certificates: CertificateRegistry,
        device_policy: DevicePolicy,
        claim_policy: DevicePolicy,
    ) -> None:
        self.certificates = certificates
        self.device_policy = device_policy
        self.claim_policy = claim_policy

    def _principal(self, identity: ClientIdentity) -> tuple[DevicePolicy | None, ClientIdentity]:
        """The policy for ``identity`` (None: no policy attached) and the identity it sees."""
        record = self.certificates.get(identity.certificate_id)
        if record is None:
            return self.device_policy, identity
        if record.policy == CLAIM_POLICY:
            return self.claim_policy, identity
        if record.policy == OPERATOR_POLICY:
            return self.device_policy, identity
        if record.policy == DEVICE_POLICY and record.thing_name is not None:
            return self.device_policy, replace(identity, common_name=record.thing_name)
        return None, identity

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        """None to accept; else why: the certificate is not ACTIVE, or its policy refuses."""
        refusal = self.certificates.connect_refusal(identity.certificate_id)
        if refusal is not None:
            return refusal
        policy, seen = self._principal(identity)
        if policy is None:
            return "the certificate is not attached to a thing and a policy; register it first"
        return policy.authorize_connect(seen)

    def authorize_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> bool:
        """Whether the certificate's policy allows the publish (and its retain flag)."""
        return self.explain_publish(identity, topic, retain=retain) is None

    def authorize_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        """Whether the certificate's policy allows subscribing ``topic_filter``."""
        return self.explain_subscribe(identity, topic_filter) is None

    def explain_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> Denial | None:
        """None if the publish is allowed, else the action and statement denying it."""
        policy, seen = self._principal(identity)
        if policy is None:
            return Denial("iot:Publish", f"topic/{topic}", None)
        return policy.explain_publish(seen, topic, retain=retain)

    def explain_subscribe(self, identity: ClientIdentity, topic_filter: str) -> Denial | None:
        """None if the subscription is allowed, else the action and statement denying it."""
        policy, seen = self._principal(identity)
        if policy is None:
            return Denial("iot:Subscribe", f"topicfilter/{topic_filter}", None)
        return policy.explain_subscribe(seen, topic_filter)
