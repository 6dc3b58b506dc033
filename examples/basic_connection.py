"""Connect, subscribe, publish, and look at the connection's status.

python examples/basic_connection.py     # a local emulator, or AWS IoT with IOT_* set
"""

from __future__ import annotations

import json
import sys

import anyio
from _local import target

from ancsync import Command, DeviceStatus, IoTConnection, commands_topic, status_topic, utc_now


async def main() -> None:
    async with target() as where:
        iot = IoTConnection.from_settings(where.settings, firmware_version="1.2.3")
        thing = iot.thing_name

        def on_command(topic: str, command: Command) -> None:
            print(f"command received: {command.command} {command.params}")

        iot.subscribe(commands_topic(thing), on_command, Command)  # re-made after reconnects

        async with iot:  # returns at once; the session connects in the background
            await iot.wait_connected(timeout=30)
            status = DeviceStatus(
                device_id=thing,
                status="online",
                firmware_version="1.2.3",
                session_id="example",
                timestamp=utc_now(),
            )
            handle = await iot.publish(status_topic(thing), status, retain=True)
            await handle.delivered(timeout=10)  # the broker's PUBACK
            status = iot.get_status()
            keys = ("state", "connected_since", "subscriptions", "published", "acknowledged")
            print(json.dumps({key: status[key] for key in keys}, indent=2))


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:  # Ctrl-C cancelled main() and everything stopped cleanly
        sys.exit(130)
