"""A device's own identity on disk: its certificate, its private key and the settings that use them.

The layout is the one ``ancsync provision`` writes, so both ways of provisioning produce a
directory the orchestrator starts from (``DataSyncOrchestrator.from_config_file``):

- ``cert.pem`` (0644) and ``private.key`` (0600): the X.509 identity;
- ``ancsync.json``: the ``iot`` settings (endpoint, port, thing name, the two files, the CA);
- ``identity.json``: what provisioning learnt (certificate id, the template's device
  configuration), written last: a directory without it holds no finished identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ancsync.errors import ProvisionError
from ancsync.files import write_atomically

__all__ = ["CERT_FILE", "CONFIG_FILE", "IDENTITY_FILE", "KEY_FILE", "DeviceIdentity"]

CERT_FILE = "cert.pem"
KEY_FILE = "private.key"
CONFIG_FILE = "ancsync.json"
IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class DeviceIdentity:
    """A provisioned device: start it with ``DataSyncOrchestrator.from_config_file(config_path)``.

    ``device_configuration`` is the provisioning template's ``DeviceConfiguration`` (empty for
    an identity made another way).
    """

    directory: Path
    thing_name: str
    certificate_id: str
    device_configuration: dict[str, str] = field(default_factory=dict)

    @property
    def cert_path(self) -> Path:
        """The device certificate (PEM)."""
        return self.directory / CERT_FILE

    @property
    def key_path(self) -> Path:
        """The device's private key (PEM, readable by its owner only)."""
        return self.directory / KEY_FILE

    @property
    def config_path(self) -> Path:
        """The ``iot`` settings of the device, for ``from_config_file`` or ``ANCSYNC_CONFIG``."""
        return self.directory / CONFIG_FILE

    @classmethod
    def find(cls, directory: str | Path) -> DeviceIdentity | None:
        """The finished identity in ``directory``, or ``None`` if there is none (yet)."""
        root = Path(directory)
        try:
            data = json.loads((root / IDENTITY_FILE).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ProvisionError(
                f"{root / IDENTITY_FILE} cannot be read ({exc}); remove it to provision again"
            ) from None
        identity = cls(
            directory=root,
            thing_name=str(data["thing_name"]),
            certificate_id=str(data.get("certificate_id", "")),
            device_configuration={
                str(k): str(v) for k, v in dict(data.get("device_configuration", {})).items()
            },
        )
        missing = [p.name for p in (identity.cert_path, identity.key_path, identity.config_path)]
        missing = [name for name in missing if not (root / name).exists()]
        if missing:
            raise ProvisionError(
                f"{root} holds {IDENTITY_FILE} but not {', '.join(missing)}; restore them or "
                f"remove {IDENTITY_FILE} to provision again"
            )
        return identity

    def save(
        self,
        certificate_pem: str,
        *,
        endpoint: str,
        port: int,
        root_ca_path: Path | None,
    ) -> None:
        """Write the certificate and the settings; ``private.key`` must be in place already.

        The identity is finished only once :meth:`commit` has written ``identity.json``.
        """
        write_atomically(self.cert_path, certificate_pem.encode(), 0o644)
        iot: dict[str, Any] = {
            "endpoint": endpoint,
            "port": port,
            "thing_name": self.thing_name,
            "cert_path": CERT_FILE,
            "key_path": KEY_FILE,
        }
        if root_ca_path is not None:
            iot["root_ca_path"] = str(root_ca_path.resolve())
        write_atomically(self.config_path, _json({"iot": iot}), 0o644)

    def commit(self) -> None:
        """Mark the identity finished (``identity.json``): :meth:`find` returns it from now on."""
        record = {
            "thing_name": self.thing_name,
            "certificate_id": self.certificate_id,
            "device_configuration": self.device_configuration,
        }
        write_atomically(self.directory / IDENTITY_FILE, _json(record), 0o644)


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()
