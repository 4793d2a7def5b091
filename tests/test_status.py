"""GET /status: the sections, no payloads or secrets, and a real render in headless Chromium."""

from __future__ import annotations

import os
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from runnerd.web import status

from .conftest import Daemon, require

CHROMIUM = "/usr/bin/chromium"
SECRET = "s3cr3t-payload-value"
CONFIG = """
monitors:
  - {name: backup, period: 1h, grace: 10m}
webhooks:
  - {name: orders, topic: user/orders/ready}
tasks:
  - name: Order mailer
    subscriptions: |
      user/orders/ready
    code: |
      {% if event.data.fail %}{% error "failed with {{ event.data.secret }}" %}{% endif %}
      {% action "echo", secret: event.data.secret %}
"""


def test_percentile_and_series() -> None:
    assert status.percentile([], 50) is None
    assert status.percentile([3, 1, 2, 4], 50) == 2
    assert status.percentile([3, 1, 2, 4], 95) == 4
    now = 100_000.0
    rows = [
        {"state": "succeeded", "run_at": now - 10, "started_at": now - 9, "finished_at": now - 8,
         "event_id": "a", "event_created_at": now - 10},
        {"state": "failed", "run_at": now - 8, "started_at": now - 8, "finished_at": now - 5,
         "event_id": "a", "event_created_at": now - 10},
        {"state": "due", "run_at": now - 1, "started_at": None, "finished_at": None,
         "event_id": "b", "event_created_at": now - 1},
    ]
    s = status.series(rows, now)
    assert s["done"][-1] == [1, 1] and s["finished"] == 2 and s["failed"] == 1
    assert s["trip_p50"] == 5.0  # event a: created -10, last run done -5; b is not done
    assert s["boot_p95"] == 1.0


def test_status_page_sections_and_no_secrets(make_daemon) -> None:
    d: Daemon = make_daemon(CONFIG).start()
    for data in ({"secret": SECRET}, {"secret": SECRET, "fail": True}):
        assert d.post_json("/webhooks/orders", data)[0] == 204
    d.wait_runs("kind = 'task' AND state IN ('failed', 'succeeded')", 2)
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 1)
    assert d.request("GET", "/ping/backup")[0] == 200
    code, headers, body = d.request("GET", "/status")
    html = body.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert '<meta http-equiv="refresh"' in html
    for section in ('id="summary"', 'id="timing"', 'id="throughput"', 'id="queue"',
                    'id="failures"', 'id="monitors"', 'id="tasks"', "<svg", "Round trip",
                    "Run boot time", "Order mailer", "backup"):
        assert section in html, section
    assert SECRET not in html  # neither event data, nor results, nor error texts
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in html and "src=" not in html
    d.tmp.joinpath("status.html").write_text(html)
    assert d.stop() == 0


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG (enough to judge its content)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_status_page_renders_in_chromium(make_daemon, tmp_path: Path) -> None:
    require(os.access(CHROMIUM, os.X_OK),
            "no /usr/bin/chromium (Debian package chromium; scripts/test installs it when "
            "CI=true and apt-get is available)")
    d: Daemon = make_daemon(CONFIG).start()
    assert d.post_json("/webhooks/orders", {"secret": SECRET})[0] == 204
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 1)
    shot = tmp_path / "status.png"
    profile = tmp_path / "chromium-profile"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={profile}", "--window-size=800,1600",
                    f"--screenshot={shot}", d.url + "/status"],
                   capture_output=True, timeout=60, check=True, cwd=tmp_path)
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (800, 1600)
    assert shot.stat().st_size > 20_000
    # Not a blank page: many distinct byte values, and the charts' green is in there.
    assert len(set(pixels)) > 100
    assert d.stop() == 0
