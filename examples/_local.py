"""Where the examples connect: AWS IoT (or any broker) from the environment, else a local emulator.

With ``IOT_ENDPOINT`` set, the examples use the usual settings (``IOT_THING_NAME``,
``IOT_CERT_PATH``...; see docs/configuration.md). Without it, each example starts the ancsync
emulator in its own process, with fresh certificates in a temporary directory, so that
``python examples/<name>.py`` works on a machine with nothing else installed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ancsync import OperatorCredentials, Settings
from ancsync.config import ENV_VARS
from ancsync.emulator.server import Emulator

THING = "anc-device-001"


@dataclass
class Target:
    """The device's settings, and the emulator when running locally (None against AWS)."""

    settings: Settings
    emulator: Emulator | None

    def operator(self) -> OperatorCredentials:
        """Credentials for the cloud side (the emulator's operator certificate)."""
        assert self.emulator is not None, "the operator certificate exists only locally"
        return OperatorCredentials.from_certs_dir(self.emulator.certs.root, port=self.emulator.port)


@asynccontextmanager
async def target() -> AsyncIterator[Target]:
    if os.environ.get("IOT_ENDPOINT"):
        yield Target(Settings.load(), None)
        return
    with tempfile.TemporaryDirectory(prefix="ancsync-example-") as workdir:
        async with Emulator(Path(workdir) / "certs", [THING]) as emulator:
            variables = emulator.device_settings(THING)
            settings = Settings.load(**{ENV_VARS[name][-1]: v for name, v in variables.items()})
            print(f"no IOT_ENDPOINT set: using a local emulator on 127.0.0.1:{emulator.port}")
            yield Target(settings, emulator)
