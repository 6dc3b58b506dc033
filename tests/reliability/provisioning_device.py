"""A device process for the provisioning crash tests: provision by claim, run, rotate.

``python provisioning_device.py MODE [KILL_AT]``, configured by environment variables:
``CLAIM_CERT``, ``CLAIM_KEY``, ``ROOT_CA``, ``ENDPOINT``, ``PORT``, ``TEMPLATE``, ``SERIAL``,
``IDENTITY_DIR`` and ``DATA_DIR``. With ``KILL_AT`` the process SIGKILLs itself the moment that
step has reached the disk (no cleanup runs, as in a power cut).

- ``provision``: provision by claim (or find the identity), print ``identity <thing> <cert id>``.
- ``rotate``: start the device from its identity, report 3 emergencies (each printed as
  ``emergency <event_id>`` once stored), then rotate its certificate; print ``rotated <cert id>``.
- ``run``: start the device, wait until every stored emergency is acknowledged, print
  ``running <cert id>``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio

from ancsync import (
    BackoffPolicy,
    DataSyncOrchestrator,
    DeviceIdentity,
    provision_by_claim,
    rotate_certificate,
)
from ancsync.provisioning.keys import certificate_id

FAST = BackoffPolicy(base=0.05, cap=0.3)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def killer(kill_at: str | None):  # type: ignore[no-untyped-def]
    def on_step(step: str) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


async def provision(kill_at: str | None) -> None:
    identity = await provision_by_claim(
        os.environ["IDENTITY_DIR"],
        endpoint=os.environ["ENDPOINT"],
        port=int(os.environ["PORT"]),
        claim_cert=os.environ["CLAIM_CERT"],
        claim_key=os.environ["CLAIM_KEY"],
        root_ca=os.environ["ROOT_CA"],
        template=os.environ["TEMPLATE"],
        parameters={"SerialNumber": os.environ["SERIAL"]},
        on_step=killer(kill_at),
        connection_options={"reconnect": FAST},
    )
    say(f"identity {identity.thing_name} {identity.certificate_id}")


def device() -> DataSyncOrchestrator:
    identity = DeviceIdentity.find(os.environ["IDENTITY_DIR"])
    assert identity is not None, "provision first"
    return DataSyncOrchestrator.from_config_file(
        identity.config_path,
        data_dir=os.environ["DATA_DIR"],
        stop_timeout=2.0,
        connection_options={"reconnect": FAST},
    )


def current_certificate(orchestrator: DataSyncOrchestrator) -> str:
    path = orchestrator.settings.iot.cert_path
    assert path is not None
    return certificate_id(Path(path).read_bytes())


async def rotate(kill_at: str | None) -> None:
    async with device() as orchestrator:
        await orchestrator.wait_connected(20)
        for n in range(3):
            event = await orchestrator.report_emergency(
                is_emergency=True, predicted_class="siren", confidence=0.9, action=f"bypass {n}"
            )
            say(f"emergency {event.event_id}")
        new_id = await rotate_certificate(
            orchestrator.connection,
            template=os.environ["TEMPLATE"],
            parameters={"SerialNumber": os.environ["SERIAL"]},
            on_step=killer(kill_at),
        )
        say(f"rotated {new_id}")


async def run() -> None:
    async with device() as orchestrator:
        await orchestrator.wait_connected(20)
        await orchestrator.emergencies.wait_acknowledged()
        say(f"running {current_certificate(orchestrator)}")


def main() -> None:
    mode, kill_at = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    work = {"provision": lambda: provision(kill_at), "rotate": lambda: rotate(kill_at), "run": run}
    anyio.run(work[mode])


if __name__ == "__main__":
    main()
