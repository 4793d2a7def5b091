"""The web console over HTTP: access, sessions, CSRF, escaping and secrets (issue 21, SPEC §15).

The tests on the `daemon` fixture run on SQLite and on PostgreSQL. The browser flows and
screenshots are in tests/test_console_browser.py; the queries' plans in
tests/test_console_queries.py.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Clock, Daemon
from .console_client import TOKEN, Client, csrf_of
from .test_postgres import PgDaemon

pytestmark = pytest.mark.timeout(120)

XSS = "<script>alert('x')</script>"
OPTION_SECRET = "opt-s3cret-value"
HEADER_SECRET = "hdr-s3cret-value"
CONFIG = f"""
admin_token: {TOKEN}
monitors:
  - {{name: backup, period: 1h, grace: 10m}}
tasks:
  - name: "Evil <img src=x onerror=alert(1)>"
    subscriptions: user/evil/go
    options: {{api_key__secret: {OPTION_SECRET}, plain: visible}}
    code: '{{% error event.data.why %}}'
  - name: Caller
    subscriptions: user/evil/go
    code: |
      {{% action "http" %}}{{"method": "get", "url": "http://127.0.0.1:9/x",
        "headers": {{"Authorization": "Bearer {HEADER_SECRET}"}}}}{{% endaction %}}
  - name: Trigger me
    subscriptions: mechanic/user/text
    code: '{{% log event.data %}}'
"""
PAGES = ["/console/", "/console/tasks", "/console/runs", "/console/runs/1", "/console/events",
         "/console/monitors", "/console/monitors/backup", "/console/queue"]
POSTS = ["/console/runs/1/retry", "/console/runs/1/cancel", "/console/tasks/Trigger%20me/trigger",
         "/console/tasks/Trigger%20me/preview", "/console/monitors/backup/pause",
         "/console/monitors/backup/resume", "/console/logout"]


@pytest.fixture(params=["sqlite", "postgres"])
def daemon(make_daemon: Any, request: Any) -> Any:
    """A daemon with the console on, on SQLite and on a PostgreSQL database."""
    if request.param == "postgres":
        d: Daemon = make_daemon(CONFIG, PgDaemon, url=request.getfixturevalue("pg_url"))
    else:
        d = make_daemon(CONFIG)
    yield d.start()
    assert d.stop() == 0, d.logs()


def test_console_is_off_without_admin_token(make_daemon: Any) -> None:
    d: Daemon = make_daemon("tasks: []\n").start()
    c = Client(d.port)
    for path in PAGES + ["/console/login"]:
        assert c.get(path)[0] == 404, path
    assert c.request("POST", "/console/login", {"token": "x", "csrf": "y"})[0] == 404
    assert d.stop() == 0


def test_logged_out_is_refused_everything_but_status_and_login(daemon: Daemon) -> None:
    c = Client(daemon.port)
    for path in PAGES:
        status, headers, body = c.get(path)
        assert status == 303 and headers["Location"] == "/console/login", path
        assert "runs" not in body.lower() or "303" in body, path
    for path in POSTS:
        assert c.request("POST", path, {"csrf": "x"})[0] == 403, path
    assert c.get("/console/login")[0] == 200
    status, _, page = c.get("/status")
    assert status == 200 and 'href="/console/' not in page  # no console link when signed out


def test_login_session_cookie_and_logout(daemon: Daemon) -> None:
    c = Client(daemon.port)
    status, headers, _ = c.login()
    assert status == 303 and headers["Location"] == "/console/tasks"
    [line] = [x for x in c.set_cookies if x.startswith("runnerd_session=")]
    for flag in ("HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"):
        assert flag in line, line
    assert "Secure" not in line  # plain http here; request.secure decides
    assert TOKEN not in line and TOKEN not in headers["Location"]
    status, headers, page = c.get("/console/tasks")
    assert status == 200 and "Trigger me" in page
    policy = headers["Content-Security-Policy"]  # inline scripts run only with this nonce
    assert re.search(r"script-src 'nonce-[\w-]{20,}';", policy) and "unsafe-inline'; f" not in policy
    assert headers["Cache-Control"] == "no-store" and headers["X-Frame-Options"] == "DENY"
    assert 'href="/console/' in c.get("/status")[2]  # /status links in for a signed-in browser
    assert c.post("/console/logout")[0] == 303
    assert c.get("/console/tasks")[0] == 303


def test_wrong_token_is_refused_and_rate_limited(daemon: Daemon) -> None:
    c = Client(daemon.port)
    status, _, page = c.login("wrong")
    assert status == 401 and "wrong token" in page and "runnerd_session" not in c.cookies
    for _ in range(4):
        c.login("wrong")
    status, _, page = c.login()  # the right token, but one attempt too many
    assert status == 429 and "too many login attempts" in page
    assert "runnerd_session" not in c.cookies


def test_login_form_needs_its_own_csrf_token(daemon: Daemon) -> None:
    c = Client(daemon.port)
    status, _, page = c.get("/console/login")
    assert c.request("POST", "/console/login", {"token": TOKEN})[0] == 403
    assert c.request("POST", "/console/login", {"token": TOKEN, "csrf": "forged"})[0] == 403
    other = Client(daemon.port)  # a page elsewhere cannot sign this browser in: no cookie
    assert other.request("POST", "/console/login", {"token": TOKEN,
                                                    "csrf": csrf_of(page)})[0] == 403
    assert "runnerd_session" not in c.cookies and "runnerd_session" not in other.cookies


def test_session_fixation(daemon: Daemon) -> None:
    c = Client(daemon.port)
    c.cookies["runnerd_session"] = "chosen-by-an-attacker"
    assert c.get("/console/tasks")[0] == 303
    assert c.login()[0] == 303
    assert c.cookies["runnerd_session"] != "chosen-by-an-attacker"
    assert c.get("/console/tasks")[0] == 200
    attacker = Client(daemon.port)
    attacker.cookies["runnerd_session"] = "chosen-by-an-attacker"
    assert attacker.get("/console/tasks")[0] == 303


def test_csrf_is_required_on_every_post(daemon: Daemon) -> None:
    assert daemon.post_json("/api/events", {"topic": "user/evil/go", "data": {"why": "no"}},
                            {"Authorization": f"Bearer {TOKEN}"})[0] == 201
    daemon.wait_runs("kind = 'task' AND state = 'failed'", 1)
    [failed] = daemon.query("SELECT id FROM runs WHERE kind = 'task' AND state = 'failed'")
    c = Client(daemon.port)
    c.login()
    for path in POSTS:
        path = path.replace("/runs/1/", f"/runs/{failed['id']}/")
        assert c.request("POST", path, {})[0] == 403, path
        assert c.request("POST", path, {"csrf": "wrong"})[0] == 403, path
    assert daemon.query("SELECT state FROM runs WHERE id = ?", (failed["id"],))[0][0] == "failed"
    assert daemon.query("SELECT state FROM task_status WHERE name = 'backup'")[0][0] != "paused"
    assert c.get("/console/tasks")[0] == 200  # logout without a token did not sign out
    status, headers, _ = c.post(f"/console/runs/{failed['id']}/retry")
    assert status == 303 and headers["Location"] == f"/console/runs/{failed['id']}"


def _crawl(c: Client, daemon: Daemon) -> dict[str, str]:
    run_ids = [r[0] for r in daemon.query("SELECT id FROM runs")]
    paths = PAGES[1:] + [f"/console/runs/{i}" for i in run_ids] + [
        "/console/runs?state=failed", "/console/events?topic=user/evil/go"]
    pages = {}
    for path in paths:
        status, _, page = c.get(path)
        assert status == 200, (path, page[:300])
        pages[path] = page
    return pages


def test_user_text_is_escaped_and_secrets_never_shown(daemon: Daemon) -> None:
    assert daemon.post_json("/api/events", {"topic": "user/evil/go",
                                            "data": {"why": XSS, "x": XSS}},
                            {"Authorization": f"Bearer {TOKEN}"})[0] == 201
    daemon.wait_runs("kind = 'task' AND state = 'failed'", 1)
    daemon.wait_runs("kind = 'action' AND error IS NOT NULL", 1)
    c = Client(daemon.port)
    c.login()
    pages = _crawl(c, daemon)
    c.post("/console/tasks/Trigger%20me/trigger", {"with_text": "1", "text": XSS})
    preview = c.post("/console/tasks/Caller/preview", {"data": '{"why": "<b>bold</b>"}'})
    assert preview[0] == 200 and "[redacted]" in preview[2]
    pages["preview"] = preview[2]
    pages.update({"again " + k: v for k, v in _crawl(c, daemon).items()})
    seen_error = False
    for path, page in pages.items():
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page
        for secret in (OPTION_SECRET, HEADER_SECRET, TOKEN):
            assert secret not in page, (path, secret)
        seen_error |= "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert seen_error
    assert "Evil &lt;img src=x onerror=alert(1)&gt;" in pages["/console/tasks"]
    assert "visible" in pages["/console/tasks"]  # options shown, the secret one masked


def test_bad_input_gets_a_clear_answer(daemon: Daemon) -> None:
    c = Client(daemon.port)
    c.login()
    assert c.get("/console/runs/999")[0] == 404
    status, _, page = c.get("/console/runs?state=nope")
    assert status == 400 and "bad state &#39;nope&#39;" in page
    status, _, page = c.get("/console/runs?since=yesterday")
    assert status == 400 and "bad since" in page
    assert c.get("/console/monitors/nope")[0] == 404
    status, _, page = c.post("/console/tasks/Trigger%20me/preview", {"data": "{nope"})
    assert status == 400 and "not valid JSON" in page
    status, _, page = c.post("/console/runs/1/retry")
    assert status == 404 and "no run with id 1" in page
    daemon.post_json("/api/events", {"topic": "user/other/thing"},
                     {"Authorization": f"Bearer {TOKEN}"})
    daemon.wait_runs("kind = 'event' AND state = 'succeeded'", 1)
    status, _, page = c.post("/console/runs/1/retry")
    assert status == 400 and "only task and action runs" in page


def test_runs_pages_by_keyset(daemon: Daemon) -> None:
    for i in range(60):
        daemon.post_json("/api/tasks/Trigger%20me/trigger", {"text": f"n{i}"},
                         {"Authorization": f"Bearer {TOKEN}"})
    daemon.wait_runs("kind = 'task' AND state = 'succeeded'", 60)
    c = Client(daemon.port)
    c.login()
    _, _, first = c.get("/console/runs?kind=task")
    ids = [int(x) for x in re.findall(r'href="/console/runs/(\d+)">#', first)]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True)
    older = re.search(r'href="/console/runs(\?[^"]+)" rel="next"', first)
    assert older, "no link to older runs"
    _, _, second = c.get("/console/runs" + older.group(1).replace("&amp;", "&"))
    rest = [int(x) for x in re.findall(r'href="/console/runs/(\d+)">#', second)]
    assert len(rest) == 10 and max(rest) < min(ids)
    assert 'rel="next"' not in second


def test_cancel_a_waiting_run_big_payloads_cut_monitor_history(make_daemon: Any) -> None:
    d: Daemon = make_daemon(CONFIG + """
  - name: Later
    subscriptions: user/later/go+1.hour
    code: '{% log "later" %}'
""").start()
    big = "x" * 10_000
    assert d.post_json("/api/events", {"topic": "user/later/go", "data": {"big": big}},
                       {"Authorization": f"Bearer {TOKEN}"})[0] == 201
    d.wait_runs("kind = 'task' AND state = 'scheduled'", 1)
    [waiting] = d.query("SELECT id FROM runs WHERE kind = 'task'")
    assert d.request("GET", "/ping/backup")[0] == 200
    c = Client(d.port)
    c.login()
    status, _, page = c.get(f"/console/runs/{waiting['id']}")
    assert status == 200 and "Cancel" in page and "Retry" not in page
    assert f'href="/api/runs/{waiting["id"]}"' in page and big not in page and "x" * 3000 in page
    assert 'data-live="1"' in page  # a run in progress polls itself
    status, headers, _ = c.post(f"/console/runs/{waiting['id']}/cancel")
    assert status == 303
    row = d.query("SELECT state, error FROM runs WHERE id = ?", (waiting["id"],))[0]
    assert (row["state"], row["error"]) == ("failed", "cancelled")
    _, _, page = c.get(f"/console/runs/{waiting['id']}")
    assert "Retry" in page and 'data-live="1"' not in page
    _, _, page = c.get("/console/monitors")
    assert "every 60 min" in page and 'class="up">up' in page
    assert d.request("GET", "/ping/backup/fail")[0] == 200
    _, _, page = c.get("/console/monitors/backup")
    assert "<td>success</td>" in page and "127.0.0.1" in page  # the ping, its kind and client
    assert '<td>up</td><td class="down">down</td>' in page  # the flip up → down
    assert d.stop() == 0


def test_events_page_by_keyset_with_equal_times(daemon: Daemon) -> None:
    for i in range(55):
        daemon.post_json("/api/events", {"topic": "user/many/same", "data": {"n": i}},
                         {"Authorization": f"Bearer {TOKEN}"})
    daemon.execute("UPDATE events SET created_at = 1750000000.5")  # one instant: ties in order
    c = Client(daemon.port)
    c.login()
    _, _, first = c.get("/console/events?topic=user/many/same")
    older = re.search(r'href="/console/events(\?[^"]+)" rel="next"', first)
    assert older
    _, _, second = c.get("/console/events" + older.group(1).replace("&amp;", "&"))
    seen = re.findall(r'&#34;n&#34;: (\d+)', first + second)
    assert sorted(map(int, seen)) == list(range(55))  # each event once, none skipped
    assert 'rel="next"' not in second
    assert c.get("/console/events?before=garbage")[0] == 400


def test_sessions_are_stored_hashed_survive_a_restart_and_end_at_logout(daemon: Daemon) -> None:
    c = Client(daemon.port)
    c.login()
    sid = c.cookies["runnerd_session"]
    [row] = daemon.query("SELECT * FROM console_sessions")
    assert row["id_hash"] == hashlib.sha256(sid.encode()).hexdigest()
    assert sid not in repr(dict(row))  # the id itself is never stored
    assert row["expires_at"] - row["created_at"] == 12 * 3600
    assert daemon.stop() == 0
    daemon.start()
    status, _, page = c.get("/console/tasks")  # the same browser, signed in after the restart
    assert status == 200 and "Trigger me" in page
    assert c.post("/console/logout")[0] == 303
    assert daemon.query("SELECT COUNT(*) AS n FROM console_sessions")[0]["n"] == 0
    assert c.get("/console/tasks")[0] == 303
    c.cookies["runnerd_session"] = sid  # an ended session is not honoured again
    assert c.get("/console/tasks")[0] == 303


def test_expired_sessions_are_refused_and_pruned_at_the_next_login(daemon: Daemon) -> None:
    old, new = Client(daemon.port), Client(daemon.port)
    old.login()
    daemon.execute("UPDATE console_sessions SET expires_at = 1")  # expired long ago
    assert old.get("/console/tasks")[0] == 303
    new.login()
    [row] = daemon.query("SELECT id_hash FROM console_sessions")
    assert row["id_hash"] == hashlib.sha256(new.cookies["runnerd_session"].encode()).hexdigest()


T0 = 1_750_000_000.0


def _events_shown(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'&#34;n&#34;: (\d+)', page)]


def test_events_by_topic_and_time_by_keyset(daemon: Daemon) -> None:
    for i in range(60):
        daemon.post_json("/api/events", {"topic": "user/many/times", "data": {"n": i}},
                         {"Authorization": f"Bearer {TOKEN}"})
    daemon.post_json("/api/events", {"topic": "user/other/thing", "data": {"n": 1000}},
                     {"Authorization": f"Bearer {TOKEN}"})
    # event n at T0 + n minutes; the other topic's inside the window
    daemon.execute("UPDATE events SET created_at = ? + 60 * CAST(CAST(data AS json) ->> 'n' "
                  "AS INTEGER)" if isinstance(daemon, PgDaemon) else
                  "UPDATE events SET created_at = ? + 60 * json_extract(data, '$.n')", (T0,))
    daemon.execute("UPDATE events SET created_at = ? WHERE topic = 'user/other/thing'",
          (T0 + 600,))
    c = Client(daemon.port)
    c.login()
    # since 00:05 (inclusive), until 00:58 (exclusive), UTC: n = 5 … 57, newest first
    query = ("/console/events?topic=user/many/times&since=2025-06-15T15:11:40"
             "&until=2025-06-15T16:04:40")
    status, _, first = c.get(query)
    assert status == 200 and _events_shown(first) == list(range(57, 7, -1))
    older = re.search(r'href="/console/events(\?[^"]+)" rel="next"', first)
    assert older and "since=" in older.group(1) and "topic=" in older.group(1)
    _, _, second = c.get("/console/events" + older.group(1).replace("&amp;", "&"))
    assert _events_shown(second) == [7, 6, 5] and 'rel="next"' not in second
    _, _, window = c.get("/console/events?since=2025-06-15T15:16:40&until=2025-06-15T15:17:40")
    assert sorted(_events_shown(window)) == [10, 1000]  # any topic, one minute
    assert c.get("/console/events?until=soon")[0] == 400


def test_runs_by_task_state_and_time(daemon: Daemon) -> None:
    for i in range(8):
        daemon.post_json("/api/tasks/Trigger%20me/trigger", {"text": f"n{i}"},
                         {"Authorization": f"Bearer {TOKEN}"})
    daemon.wait_runs("kind = 'task' AND state = 'succeeded'", 8)
    ids = [r["id"] for r in daemon.query("SELECT id FROM runs WHERE kind = 'task' ORDER BY id")]
    for n, run_id in enumerate(ids):  # task run n created at T0 + n hours
        daemon.execute("UPDATE runs SET created_at = ? WHERE id = ?", (T0 + 3600 * n, run_id))
    daemon.execute("UPDATE runs SET state = 'failed' WHERE id = ?", (ids[3],))
    c = Client(daemon.port)
    c.login()

    def shown(query: str) -> list[int]:
        status, _, page = c.get("/console/runs?" + query)
        assert status == 200, page
        return [int(x) for x in re.findall(r'href="/console/runs/(\d+)">#', page)]

    window = "since=2025-06-15T17:06:40&until=2025-06-15T21:06:40"  # T0 + 2h … T0 + 6h
    assert shown("task=Trigger+me&" + window) == ids[5:1:-1]
    assert shown("task=Trigger+me&kind=task&state=succeeded&" + window) == [ids[5], ids[4], ids[2]]
    assert shown("state=failed&" + window) == [ids[3]]
    assert shown("task=Trigger+me&state=failed") == [ids[3]]
    assert shown("kind=task&until=2025-06-15T17:06:40") == [ids[1], ids[0]]
    assert shown("task=Nobody") == []
    assert c.get("/console/runs?before=1:x")[0] == 400


def test_list_pages_refresh_on_request(daemon: Daemon) -> None:
    c = Client(daemon.port)
    c.login()
    for path in ("/console/tasks", "/console/runs?state=failed&task=Trigger+me",
                 "/console/events?topic=user/evil/go&since=2026-01-01", "/console/monitors",
                 "/console/queue"):
        status, _, page = c.get(path)
        assert status == 200
        link = re.search(r'<a href="([^"]*)" class="refresh">Refresh</a>', page)
        assert link and link.group(1).replace("&amp;", "&") == path, path


def test_queue_shows_every_worker_with_its_node_and_stale_heartbeats(daemon: Daemon) -> None:
    beat = time.time() - 600  # silent for 10 min: stale (node_timeout 30 s), not yet pruned
    daemon.execute("INSERT INTO workers (id, pid, host, started_at, heartbeat_at, healthy, node) "
                  "VALUES ('h2:7:1', 7, 'h2', ?, ?, 1, 'node-two')", (beat - 60, beat))
    c = Client(daemon.port)
    c.login()
    status, _, page = c.get("/console/queue")
    assert status == 200 and "node_timeout" in page
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>.*?</tr>", page, re.DOTALL)
    by_id = {worker: (node, row) for node, worker in rows
             for row in re.findall(rf"<tr><td>{re.escape(node)}</td><td>{re.escape(worker)}"
                                   r"</td>.*?</tr>", page, re.DOTALL)}
    assert by_id["h2:7:1"][0] == "node-two" and "stale" in by_id["h2:7:1"][1]
    [own] = [w for w in by_id if w != "h2:7:1"]
    assert "stale" not in by_id[own][1] and by_id[own][0]  # this daemon: alive, a node name


async def test_sessions_are_shared_by_daemons_on_one_postgres_database(
        tmp_path: Path, pg_url: str) -> None:
    """Two daemons' databases (two connections, as behind a load balancer): a session started on
    one is honoured and ended on the other."""
    from aiohttp.test_utils import make_mocked_request

    from runnerd.store import backends
    from runnerd.web.console import access

    first = await backends.open_database(tmp_path / "unused.db", pg_url).open()
    await first.migrate()
    second = await backends.open_database(tmp_path / "unused.db", pg_url).open()
    try:
        clock = Clock(T0)
        one, two = access.Sessions(first, clock), access.Sessions(second, clock)
        sid, session = await one.start()
        browser = make_mocked_request("GET", "/console/tasks",
                                      headers={"Cookie": f"{access.COOKIE}={sid}"})
        seen = await two.get(browser)
        assert seen is not None and seen.csrf == session.csrf
        clock.advance(access.SESSION_SECONDS)
        assert await two.get(browser) is None  # expired everywhere
        clock.now = T0
        await two.end(browser)  # logout on the other node
        assert await one.get(browser) is None
    finally:
        await first.close()
        await second.close()
