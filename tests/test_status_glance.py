"""GET /status answers "is everything OK?" (issue 19, item 6): the title and headline count the
monitors down and the tasks failing; every configured task and monitor is listed, never-ran ones
too; the page fits a phone (390 px, no sideways scrolling) and a desktop, measured in a real
headless Chromium through the DevTools protocol, with screenshots; no payload is shown."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from . import test_status as status_test
from .conftest import Daemon, free_port, require, wait_until
from .test_status import CHROMIUM, SECRET

pytestmark = pytest.mark.timeout(120)

# test_status's page set-up (a webhook, a task that fails on demand with a secret in its error),
# with more monitors and a task that never runs.
CONFIG = status_test.CONFIG.replace("  - {name: backup, period: 1h, grace: 10m}\n", """\
  - {name: backup-with-a-rather-long-monitor-name, period: 1s, grace: 1s}
  - {name: sync, schedule: "*/15 * * * *", grace: 5m}
  - {name: never-pinged, period: 1h, grace: 10m}
""") + """\
  - name: Never ran
    subscriptions: |
      user/nothing/happens
    code: |
      {% action "echo", x: 1 %}
"""


def test_headline_counts_problems_and_lists_everything(make_daemon: Any) -> None:
    d: Daemon = make_daemon(CONFIG).start()
    page = d.request("GET", "/status")[2].decode()
    assert "<title>runnerd: all OK</title>" in page
    assert d.request("GET", "/ping/sync/start?rid=r1")[0] == 200
    assert d.request("GET", "/ping/sync/fail?rid=r1", "disk full " + SECRET)[0] == 200
    assert d.request("GET", "/ping/backup-with-a-rather-long-monitor-name")[0] == 200
    assert d.post_json("/webhooks/orders", {"secret": SECRET, "fail": True})[0] == 204
    d.wait_runs("kind = 'task' AND state = 'failed'", 1)
    wait_until(lambda: d.query("SELECT state FROM task_status WHERE name = "
                               "'backup-with-a-rather-long-monitor-name'")[0][0] == "down")
    page = d.request("GET", "/status")[2].decode()
    assert "<title>runnerd: 2 monitors down, 1 task failing</title>" in page
    assert 'class="bad">runnerd: 2 monitors down, 1 task failing</h1>' in page
    assert re.search(r">sync<.*? \(took \d+ ms\)</td>", page)  # its start → its failure
    for name in ("never-pinged", "Never ran", "Order mailer", "sync"):
        assert name in page
    # Monitors first, down ones first; tasks next, failing ones first.
    assert page.index('id="monitors"') < page.index('id="tasks"') < page.index('id="timing"')
    assert page.index(">sync<") < page.index(">never-pinged<")
    assert page.index(">Order mailer<") < page.index(">Never ran<")
    assert SECRET not in page and "disk full" not in page
    assert d.stop() == 0


async def _measure(port: int, url: str, width: int, shot: Path) -> dict[str, int]:
    """Open `url` at `width` CSS px; the document's scroll width, and a PNG screenshot."""
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
            target = await resp.json()
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1000))

            async def call(method: str, **params: Any) -> Any:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                while True:
                    msg = json.loads((await ws.receive()).data)
                    if msg.get("id") == n:
                        assert "error" not in msg, msg
                        return msg["result"]

            await call("Emulation.setDeviceMetricsOverride", width=width, height=900,
                        deviceScaleFactor=1, mobile=width < 500)
            await call("Page.enable")
            await call("Page.navigate", url=url)
            for _ in range(200):
                ready = await call("Runtime.evaluate", expression="document.readyState")
                if ready["result"]["value"] == "complete":
                    break
                await asyncio.sleep(0.05)
            sizes = await call("Runtime.evaluate", returnByValue=True, expression=(
                "({scroll: document.documentElement.scrollWidth, "
                "client: document.documentElement.clientWidth, "
                "height: document.documentElement.scrollHeight})"))
            png = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            shot.write_bytes(base64.b64decode(png["data"]))
            return dict(sizes["result"]["value"])


@pytest.mark.parametrize("width", [1280, 390])
def test_status_fits_desktop_and_phone_in_chromium(make_daemon: Any, tmp_path: Path,
                                                   width: int) -> None:
    require(os.access(CHROMIUM, os.X_OK), "no /usr/bin/chromium (Debian package chromium)")
    d: Daemon = make_daemon(CONFIG).start()
    assert d.post_json("/webhooks/orders", {"secret": SECRET})[0] == 204
    assert d.post_json("/webhooks/orders", {"secret": SECRET, "fail": True})[0] == 204
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 1)
    d.request("GET", "/ping/sync/start")
    port = free_port()
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={port}",
         "--remote-allow-origins=*", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_until(lambda: _listening(port), timeout=30)
        shot = tmp_path / f"status-{width}.png"
        sizes = asyncio.run(_measure(port, d.url + "/status", width, shot))
    finally:
        browser.terminate()
        browser.wait(timeout=20)
    assert sizes["client"] == width
    assert sizes["scroll"] <= width, f"the page scrolls sideways at {width} px: {sizes}"
    assert sizes["height"] > 600 and shot.stat().st_size > 20_000
    assert d.stop() == 0


def _listening(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1):
            return True
    except OSError:
        return False


def test_status_says_schedules_in_words(make_daemon: Any) -> None:
    d: Daemon = make_daemon(CONFIG).start()
    page = d.request("GET", "/status")[2].decode()
    assert "<code>*/15 * * * *</code>: Every 15th minute" in page
    assert d.stop() == 0
