"""First boot of a device that left the factory with only the fleet's claim certificate.

    python examples/first_boot.py     # a local emulator (AWS IoT: see docs/provisioning.md)

The device provisions itself by claim (its key is made here and never sent), starts from the
identity it wrote, sends its first telemetry, then rotates its certificate while running, as a
``rotate_certificate`` job or an approaching expiry would make it do. Run it twice against the
same identity directory and the second boot skips provisioning.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

from ancsync import DataSyncOrchestrator, DeviceIdentity, provision_by_claim, rotate_certificate
from ancsync.emulator.server import Emulator

TEMPLATE = "anc-fleet"  # the emulator's template: the thing is anc-<SerialNumber>
SERIAL = "SN0001"


async def first_boot(emulator: Emulator, identity_dir: Path) -> None:
    claim = emulator.certs.claim
    assert claim is not None
    identity = DeviceIdentity.find(identity_dir) or await provision_by_claim(
        identity_dir,
        endpoint="127.0.0.1",
        port=emulator.port,
        claim_cert=claim.cert,
        claim_key=claim.key,
        root_ca=emulator.certs.ca,
        template=TEMPLATE,
        parameters={"SerialNumber": SERIAL},
        on_step=lambda step: print(f"  provisioning: {step}"),
    )
    print(f"identity: {identity.thing_name}, certificate {identity.certificate_id[:12]}...")

    async with DataSyncOrchestrator.from_config_file(
        identity.config_path, data_dir=identity_dir / "data", batch_size=5, batch_interval=0.2
    ) as device:
        await device.wait_connected(20)
        for n in range(5):
            device.publish_metrics(
                anc_metrics={"latency_ms": 30 + n, "cancellation_db": 40.0, "snr_improvement_db": 9}
            )
        await emulator.rules.wait_for(
            lambda sink: sink.record_count(identity.thing_name, "anc") == 5
        )
        stored = emulator.rules.record_count(identity.thing_name, "anc")
        print(f"first telemetry: {stored} records stored")

        new_id = await rotate_certificate(
            device.connection, template=TEMPLATE, parameters={"SerialNumber": SERIAL}
        )
        await emulator.revoke_certificate(identity.certificate_id)  # the operator's next step
        device.publish_metrics(
            anc_metrics={"latency_ms": 35, "cancellation_db": 41.0, "snr_improvement_db": 9}
        )
        await emulator.rules.wait_for(
            lambda sink: sink.record_count(identity.thing_name, "anc") == 6
        )
        print(f"rotated to certificate {new_id[:12]}...; the old one is revoked, telemetry goes on")


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ancsync-example-") as workdir:
        async with Emulator(Path(workdir) / "certs") as emulator:
            print(f"using a local emulator on 127.0.0.1:{emulator.port}")
            await first_boot(emulator, Path(workdir) / "identity")


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(130)
