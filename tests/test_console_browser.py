"""The web console in a real headless Chromium (playwright driving Debian's /usr/bin/chromium).

Flows: a logged-out browser is refused every page but /status and the login form; log in, open
a failed run, fix the task, retry, watch the run page turn to succeeded without a reload;
trigger a task with text; pause and resume a monitor (on SQLite and on PostgreSQL). Every page is screenshotted at desktop
(1280) and phone (390) width into `console-screenshots/` under the test's tmp directory (the
path is printed); with RUNNERD_DOCS_SCREENSHOTS=1 the docs' copies in docs/console/ are
regenerated from them (from the SQLite run).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, require, wait_until
from .console_client import TOKEN
from .test_postgres import PgDaemon

pytestmark = pytest.mark.timeout(240)
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "console"
DOCS_PAGES = {"tasks", "runs", "run-failed", "run-succeeded", "events", "preview", "monitor", "queue"}
WIDTHS = {"desktop": 1280, "phone": 390}
CONFIG = f"""
admin_token: {TOKEN}
monitors:
  - {{name: backup, period: 1h, grace: 10m}}
tasks:
  - name: Order mailer
    subscriptions: user/orders/ready
    code: |
      {{% log "order", event.data.order %}}
      {{% CODE %}}
  - name: Note taker
    subscriptions: mechanic/user/text
    code: '{{% action "echo", note: event.data %}}'
"""
BROKEN = CONFIG.replace("{% CODE %}", '{% error "the mail target is down" %}')
FIXED = CONFIG.replace("{% CODE %}", '{% action "echo", sent: event.data.order %}')


@pytest.fixture
def browser() -> Iterator[Any]:
    require(os.access(CHROMIUM, os.X_OK), "no /usr/bin/chromium (Debian package chromium)")
    require(importlib.util.find_spec("playwright") is not None,
            "no playwright (pip install -e '.[test]')")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


class Shots:
    """Screenshots of the current page at both widths."""

    def __init__(self, page: Any, where: Path) -> None:
        self.page, self.where = page, where
        where.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> None:
        for label, width in WIDTHS.items():
            self.page.set_viewport_size({"width": width, "height": 900})
            overflow = self.page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{name} is wider than {width} px by {overflow} px"
            self.page.screenshot(path=str(self.where / f"{name}-{label}.png"), full_page=True)
        self.page.set_viewport_size({"width": WIDTHS["desktop"], "height": 900})


def test_logged_out_browser_sees_only_status_and_login(make_daemon: Any, browser: Any) -> None:
    d: Daemon = make_daemon(BROKEN).start()
    page = browser.new_page()
    for path in ("/console/", "/console/tasks", "/console/runs", "/console/runs/1",
                 "/console/events", "/console/monitors", "/console/monitors/backup",
                 "/console/queue"):
        page.goto(d.url + path)
        assert page.url == d.url + "/console/login", path
        assert page.locator("input[name=token]").count() == 1
        assert "Order mailer" not in page.content()
    page.goto(d.url + "/status")
    assert page.locator("#headline").count() == 1 and "Open the console" not in page.content()
    page.goto(d.url + "/console/login")
    page.fill("input[name=token]", "wrong")
    page.click("button:has-text('Sign in')")
    page.wait_for_selector(".problem")
    assert "wrong token" in page.content() and page.url.endswith("/console/login")
    assert d.stop() == 0


def _login(page: Any, url: str) -> None:
    page.goto(url + "/console/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(url + "/console/tasks")


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_fix_and_retry_trigger_pause_with_screenshots(make_daemon: Any, browser: Any,
                                                       tmp_path: Path, engine: str,
                                                       request: Any) -> None:
    if engine == "postgres":
        d: Daemon = make_daemon(BROKEN, PgDaemon, url=request.getfixturevalue("pg_url"))
    else:
        d = make_daemon(BROKEN)
    d.start()
    assert d.post_json("/api/events", {"topic": "user/orders/ready",
                                       "data": {"order": 1042}},
                       {"Authorization": f"Bearer {TOKEN}"})[0] == 201
    d.wait_runs("kind = 'task' AND state = 'failed'", 1)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    shots = Shots(page, tmp_path / "console-screenshots")
    print("screenshots in", shots.where)
    page.goto(d.url + "/console/login")
    shots.take("login")
    _login(page, d.url)
    shots.take("tasks")

    page.goto(d.url + "/console/runs?state=failed")
    page.click("a.refresh")  # the same list, its filters kept
    page.wait_for_load_state()
    assert page.url == d.url + "/console/runs?state=failed"
    shots.take("runs")
    page.click("a:has-text('#')")
    assert "the mail target is down" in page.inner_text("#error")
    assert page.inner_text("#state") == "failed"
    shots.take("run-failed")

    d.write_config(FIXED)  # fix the task, reload, retry: the task run renders the new code
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in d.logs())
    page.click("button:has-text('Retry')")
    # the page polls while the run is in progress: it turns succeeded without a reload
    page.wait_for_selector("#state.succeeded", timeout=20_000)
    assert "sent" in page.content() and "1042" in page.inner_text("#live")
    shots.take("run-succeeded")

    page.goto(d.url + "/console/tasks")
    page.fill("input[name=text]", "call the supplier")
    page.click("button:has-text('Trigger')")
    page.wait_for_url(lambda url: "/console/events?id=" in url)
    assert "mechanic/user/text" in page.content() and "call the supplier" in page.content()
    d.wait_runs("kind = 'action' AND action_type = 'echo' AND state = 'succeeded'", 2)
    page.reload()
    shots.take("events")

    page.goto(d.url + "/console/tasks")
    stored = d.query("SELECT COUNT(*) FROM runs")[0][0]
    mailer = page.locator("section", has_text="Order mailer")
    mailer.locator("summary").click()
    mailer.locator("textarea[name=data]").fill('{"order": 7}')
    mailer.locator("button:has-text('Preview')").click()
    page.wait_for_selector("text=Nothing was performed")
    assert '"sent": 7' in page.inner_text("main")
    shots.take("preview")
    assert d.query("SELECT COUNT(*) FROM runs")[0][0] == stored  # a preview stores nothing

    page.goto(d.url + "/console/monitors")
    shots.take("monitors")
    page.click("a:has-text('backup')")
    page.click("button:has-text('Pause')")
    assert page.inner_text("#state") == "paused"
    assert d.query("SELECT state FROM task_status WHERE name = 'backup'")[0][0] == "paused"
    shots.take("monitor")
    page.click("button:has-text('Resume')")
    assert page.inner_text("#state") == "new"

    page.goto(d.url + "/console/queue")
    assert "Workers" in page.content()
    shots.take("queue")
    page.goto(d.url + "/status")
    page.click("text=Open the console")
    page.wait_for_url(d.url + "/console/tasks")
    page.click("text=Log out")
    page.goto(d.url + "/console/tasks")
    assert page.url.endswith("/console/login")
    assert d.stop() == 0
    if os.environ.get("RUNNERD_DOCS_SCREENSHOTS") == "1" and engine == "sqlite":
        DOCS.mkdir(exist_ok=True)
        for name in DOCS_PAGES:
            for label in WIDTHS:
                shutil.copy(shots.where / f"{name}-{label}.png", DOCS / f"{name}-{label}.png")
