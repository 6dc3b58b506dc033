"""The emulator console in a real headless Chromium (apt's), driven by playwright.

A running emulator, a simulated device publishing telemetry and applying desired state, and the
console: the page shows the device online, draws its telemetry, edits its desired state (the
device applies and reports it), refuses a bad edit with the shadow service's own error, runs the
MQTT test client, acknowledges an emergency (the device receives the command), and follows a
job's execution in the Jobs panel until the device reports it SUCCEEDED. Screenshots
go to ``$ANCSYNC_TEST_ARTIFACTS/console`` (default ``.test-artifacts/console``).
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from playwright.async_api import Page, async_playwright, expect
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute
from starlette.routing import Route as StarletteRoute

from ancsync.emulator.console.service import Console
from ancsync.emulator.server import Emulator
from ancsync.errors import ConfigError
from ancsync.jobs import Job
from ancsync.orchestrator import DataSyncOrchestrator
from ancsync.tools.simulator import SimulatedAncDevice

pytestmark = pytest.mark.slow

THING = "anc-device-001"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("ANCSYNC_TEST_ARTIFACTS", ".test-artifacts")) / "console"
# Generous: two cores shared with other work. A wait ends as soon as the page shows the value.
UI_TIMEOUT_MS = 20_000


@asynccontextmanager
async def running_device(
    emulator: Emulator, data_dir: Path, calibrated: anyio.Event | None = None
) -> AsyncIterator[SimulatedAncDevice]:
    """A simulated device on ``emulator``, publishing metrics until the block ends. It takes
    ``calibrate`` jobs: IN_PROGRESS at once, SUCCEEDED when ``calibrated`` is set."""
    settings = emulator.device_settings(THING)
    orchestrator = DataSyncOrchestrator(
        thing_name=THING,
        endpoint=settings["IOT_ENDPOINT"],
        port=emulator.port,
        cert_path=settings["IOT_CERT_PATH"],
        key_path=settings["IOT_KEY_PATH"],
        root_ca_path=settings["IOT_ROOT_CA_PATH"],
        data_dir=data_dir,
        batch_size=5,
        batch_interval=0.2,
        firmware_version="1.2.3",
    )
    device = SimulatedAncDevice(orchestrator, rate=20)

    @orchestrator.on_job("calibrate")
    async def calibrate(job: Job[Any]) -> None:
        await job.progress(step="measuring", percent=50)
        await (calibrated or anyio.Event()).wait()
        await job.succeed({"offset_db": "0.4"})

    async with orchestrator, anyio.create_task_group() as loop:
        await orchestrator.wait_connected(timeout=15)
        await device.report_state()
        loop.start_soon(device.run)
        yield device
        loop.cancel_scope.cancel()


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_console_shows_and_drives_a_device_in_a_real_browser(tmp_path: Path) -> None:
    assert CHROMIUM is not None, "chromium is missing: `make test` installs it (apt chromium)"
    expect.set_options(timeout=UI_TIMEOUT_MS)
    calibrated = anyio.Event()
    async with (
        Emulator(tmp_path / "certs", [THING]) as emulator,
        Console(emulator) as console,
        running_device(emulator, tmp_path / "device", calibrated) as device,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        await page.goto(console.url)
        thing_row = page.locator(f'#things tr[data-thing="{THING}"]')
        await expect(thing_row.locator(".badge")).to_have_text("online")
        await expect(thing_row).to_contain_text("1.2.3")
        await expect(thing_row).to_contain_text(THING)  # the certificate's CN

        # Telemetry charts draw points as batches arrive.
        latency = page.locator('.chart[data-metric="latency_ms"]')
        await expect(latency.locator("polyline")).to_have_count(1)
        await expect(page.locator('.chart[data-metric="battery_level"] polyline')).to_have_count(1)
        drawn = int(await latency.get_attribute("data-points") or 0)
        await expect(latency).not_to_have_attribute("data-points", str(drawn))  # more arrive

        # Edit desired: the device applies it and reports it back.
        await page.fill("#desired-input", '{"anc_intensity": 0.35}')
        await page.click("#desired-send")
        await expect(page.locator("#shadow-desired")).to_contain_text('"anc_intensity": 0.35')
        await expect(page.locator("#shadow-reported")).to_contain_text('"anc_intensity": 0.35')
        await expect(page.locator("#shadow-delta")).to_have_text("")
        assert device.state.intensity == 0.35
        await screenshot(page, "shadow-applied")

        # A document over 8 KB: refused by the shadow service, shown, nothing changes.
        await page.fill("#desired-input", '{"anc_algorithm": "' + "x" * 9000 + '"}')
        await page.click("#desired-send")
        await expect(page.locator("#desired-result")).to_contain_text("413")
        await expect(page.locator("#shadow-desired")).not_to_contain_text("xxxx")

        # The MQTT test client: subscribe, publish as the operator, see it arrive.
        await page.fill("#subscribe-filter", "anc/console-test/#")
        await page.click("#subscribe-form button")
        await expect(page.locator("#subscriptions")).to_contain_text("anc/console-test/#")
        await page.fill("#publish-topic", "anc/console-test/hello")
        await page.fill("#publish-payload", '{"from": "browser"}')
        await page.click("#publish-form button")
        await expect(page.locator("#messages")).to_contain_text('{"from":"browser"}')
        await page.fill("#publish-topic", "anc/bad/#")
        await page.click("#publish-form button")
        await expect(page.locator("#publish-result")).to_contain_text("anc/bad/#")

        # An emergency appears; acknowledging it sends emergency_ack to the device.
        event = await device.fire_alarm()
        row = page.locator(f'#emergencies tr[data-event="{event.event_id}"]')
        await expect(row).to_contain_text("fire_alarm")
        await screenshot(page, "emergency")
        await row.locator("button.ack").click()
        await expect(row).to_contain_text("acknowledged")
        with anyio.fail_after(10):
            await device.wait_acknowledged()
        assert event.event_id in device.acknowledged

        # A job for the device: the Jobs panel follows its execution live, to SUCCEEDED.
        await expect(page.locator("#section-jobs")).to_contain_text("none yet")
        await emulator.jobs.create_job("calibrate-1", [THING], {"operation": "calibrate"})
        job_row = page.locator("#section-jobs tbody tr").filter(has_text="calibrate-1")
        status = job_row.locator('td[data-column="status"]')
        await expect(status).to_have_text("IN_PROGRESS")
        details = job_row.locator('td[data-column="statusDetails"]')
        await expect(details).to_contain_text("measuring")
        await screenshot(page, "job-in-progress")
        calibrated.set()
        await expect(status).to_have_text("SUCCEEDED")
        await expect(details).to_contain_text("offset_db")
        await expect(job_row.locator('td[data-column="thing"]')).to_have_text(THING)
        await screenshot(page, "console")
        await browser.close()


async def test_console_refuses_non_loopback_without_flag_and_token(tmp_path: Path) -> None:
    emulator = Emulator(tmp_path / "certs", [THING])
    with pytest.raises(ConfigError, match="not a loopback address"):
        Console(emulator, host="0.0.0.0")
    with pytest.raises(ConfigError, match="needs a token"):
        Console(emulator, host="0.0.0.0", allow_remote=True)
    Console(emulator, host="0.0.0.0", allow_remote=True, token="s3cret")  # accepted


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_console_with_a_token_refuses_requests_without_it(tmp_path: Path) -> None:
    async with (
        Emulator(tmp_path / "certs", [THING]) as emulator,
        Console(emulator, token="s3cret") as console,
    ):
        base = f"http://127.0.0.1:{console.port}"
        assert await anyio.to_thread.run_sync(_status, f"{base}/api/snapshot") == 401
        wrong = f"{base}/api/snapshot?token=guess"
        assert await anyio.to_thread.run_sync(_status, wrong) == 401
        right = f"{base}/api/snapshot?token=s3cret"
        assert await anyio.to_thread.run_sync(_status, right) == 200


class ExampleSection:
    """A panel as another service adds one: rows in the snapshot, a route of its own."""

    key = "example"
    title = "Example"

    def routes(self) -> list[BaseRoute]:
        async def count(request: Request) -> Response:
            return PlainTextResponse("1")

        return [StarletteRoute("/count", count)]

    def snapshot(self) -> list[dict[str, object]]:
        return [{"name": "calibration", "status": "IN_PROGRESS"}]


async def test_a_section_adds_rows_and_routes_to_the_console(tmp_path: Path) -> None:
    async with (
        Emulator(tmp_path / "certs", [THING]) as emulator,
        Console(emulator, sections=[ExampleSection()]) as console,
    ):
        base = f"http://127.0.0.1:{console.port}"
        snapshot = orjson.loads(await anyio.to_thread.run_sync(_read, f"{base}/api/snapshot"))
        assert snapshot["sections"]["example"] == {
            "title": "Example",
            "rows": [{"name": "calibration", "status": "IN_PROGRESS"}],
        }
        assert snapshot["sections"]["jobs"] == {"title": "Jobs", "rows": []}
        assert await anyio.to_thread.run_sync(_read, f"{base}/api/sections/example/count") == "1"


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())
