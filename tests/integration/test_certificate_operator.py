"""The emulator's operator certificates API through EmulatorCertificatesOperator: list,
describe, revoke (the device is dropped and refused) and the refusals."""

from __future__ import annotations

import anyio
import pytest

from ancsync.config import Settings
from ancsync.connection import IoTConnection
from ancsync.emulator.server import Emulator
from ancsync.errors import CertificateRejected, NotAuthorized
from ancsync.tools.certs_operator import EmulatorCertificatesOperator
from ancsync.tools.operator import OperatorCredentials

THING = "anc-device-001"
OTHER = "anc-device-002"
TIMEOUT = 15


def operator(emulator: Emulator) -> EmulatorCertificatesOperator:
    credentials = OperatorCredentials.from_certs_dir(emulator.certs.root, port=emulator.port)
    return EmulatorCertificatesOperator(credentials.connection(), timeout=TIMEOUT)


def device(emulator: Emulator, thing: str = THING) -> IoTConnection:
    values = emulator.device_settings(thing).items()
    settings = Settings.load(**{k.lower().removeprefix("iot_"): v for k, v in values})
    return IoTConnection(settings=settings, announce_status=False)


async def test_list_describe_and_revoke(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as certs:
            listed = await certs.list()
            devices = {c["thingName"]: c for c in listed if c["thingName"]}
            assert set(devices) == {THING, OTHER}
            assert {c["status"] for c in devices.values()} == {"ACTIVE"}
            mine = devices[THING]
            assert mine["certificateArn"].endswith(f":cert/{mine['certificateId']}")
            assert [c["thingName"] for c in await certs.list(THING)] == [THING]

            described = await certs.describe(mine["certificateId"])
            assert described["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
            assert described["status"] == "ACTIVE"

            revoked = await certs.update(mine["certificateId"], "REVOKED")
            assert revoked["status"] == "REVOKED"
            assert emulator.certificate_of(THING).status.value == "REVOKED"
            with pytest.raises(NotAuthorized, match="revoked"):
                async with device(emulator) as refused:
                    await refused.wait_connected(TIMEOUT)

            with pytest.raises(CertificateRejected, match="CertificateStateException"):
                await certs.update(mine["certificateId"], "ACTIVE")
            with pytest.raises(CertificateRejected, match="ResourceNotFoundException"):
                await certs.describe("0" * 64)
            with pytest.raises(CertificateRejected, match="InvalidRequestException"):
                await certs.update(devices[OTHER]["certificateId"], "PENDING_ACTIVATION")
