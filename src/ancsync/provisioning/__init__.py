"""A device's own identity: fleet provisioning by claim, and the files that hold the identity.

See :func:`~ancsync.provisioning.claim.provision_by_claim` and
:class:`~ancsync.provisioning.identity.DeviceIdentity`.
"""
