"""Hostile tasks through the real daemon: endless and nested loops, huge outputs, deeply nested
data, catastrophic regular expressions, quadratic filter inputs and oversized cache values each
hit a limit, fail their run with a message naming it, and leave the daemon serving: an innocent
task's runs in the same daemon still complete."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Daemon, serve, wait_until

TOKEN = "hostile-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAD = "x" * 100
#: task name -> (its code, what its failed run's error must say)
HOSTILE = {
    "Endless loop": ("{% for i in (1..1000000000) %}{% endfor %}",
                     "limit exceeded: loop_iterations (100000)"),
    "Nested loops": ("{% for i in (1..1000) %}{% for j in (1..1000) %}{% assign x = j %}"
                     "{% endfor %}{% endfor %}", "limit exceeded: loop_iterations (100000)"),
    "Huge output": (f"{{% for i in (1..20000) %}}{PAD}{{% endfor %}}",
                    "limit exceeded: output_bytes (1048576)"),
    "Doubling string": ('{% assign s = "x" %}{% for i in (1..40) %}{% assign s = s | append: s %}'
                        "{% endfor %}", "limit exceeded: output_bytes (1048576)"),
    "Doubling capture": ("{% capture s %}x{% endcapture %}{% for i in (1..40) %}"
                         "{% capture s %}{{ s }}{{ s }}{% endcapture %}{% endfor %}",
                         "limit exceeded: output_bytes (1048576)"),
    "Action flood": (f'{{% for i in (1..50000) %}}{{% action "echo", pad: "{PAD}" %}}'
                     "{% endfor %}", "limit exceeded: output_bytes (1048576)"),
    "Deep data": ("{% assign a = array %}{% for i in (1..event.data) %}"
                  "{% assign a = array | push: a %}{% endfor %}{% log a %}",
                  "line 1: log: a value nested more than 128 levels deep"),
    "Catastrophic match": ('{% assign m = event.data.text | match: "(a+)+$" %}',
                           "limit exceeded: render_seconds (1.0)"),
    "Catastrophic scan": ('{% assign m = event.data.text | scan: "(a|aa)+$" %}',
                          "limit exceeded: render_seconds (1.0)"),
    "Catastrophic loop": ('{% for i in (1..3) %}{% assign m = event.data.text | match: "(a*)*b" %}'
                          "{% endfor %}", "limit exceeded: render_seconds (1.0)"),
    "Long advance": ('{{ "now" | date: "%F", advance: event.data.spaces }}',
                     "an amount of time longer than 200 characters"),
    "Gigantic cache value": (f"{{% capture big %}}{{% for i in (1..3000) %}}{PAD}{{% endfor %}}"
                             '{% endcapture %}{% action "cache", "set", "big", big %}',
                             "cache: value is over the 256 KB limit"),
    "Gigantic setex": (f"{{% capture big %}}{{% for i in (1..3000) %}}{PAD}{{% endfor %}}"
                       '{% endcapture %}{% action "cache", "setex", "big", 60, big %}',
                       "cache: value is over the 256 KB limit"),
}
DATA = {
    "Deep data": 900,
    "Catastrophic match": {"text": "a" * 60 + "!"},
    "Catastrophic scan": {"text": "a" * 60 + "!"},
    "Catastrophic loop": {"text": "a" * 60},
    "Long advance": {"spaces": "1 day" + " " * 100_000 + "x"},
}


def topic(name: str) -> str:
    return "user/hostile/" + name.lower().replace(" ", "_")


def config() -> str:
    tasks = "".join(f"""
  - name: {name}
    subscriptions: {topic(name)}
    code: {json.dumps(code)}""" for name, (code, _) in HOSTILE.items())
    return f"""
admin_token: {TOKEN}
limits: {{render_seconds: 1s}}
webhooks:
  - {{name: upload, topic: user/hostile/upload}}
tasks:
  - name: Unpack
    subscriptions: user/hostile/upload
    code: '{{% assign text = event.data.blob | gunzip %}}{{% log text.size %}}'
  - name: Innocent
    subscriptions: user/innocent/go
    code: '{{% action "cache", "incr", "innocent" %}}'
  - name: Phone book
    subscriptions: user/innocent/phone
    code: |
      {{% assign phone = event.data.text | e164 %}}
      {{% action "cache", "set", "phone", phone %}}
{tasks}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from serve(Daemon(tmp_path_factory.mktemp("hostile"), config()))


def send(d: Daemon, topic_: str, data: object = None) -> str:
    status, _, body = d.post_json("/api/events", {"topic": topic_, "data": data}, AUTH)
    assert status == 201, body
    return str(json.loads(body)["id"])


def task_run(d: Daemon, event_id: str, timeout: float = 30) -> tuple[str, str | None]:
    def done() -> tuple[str, str | None] | None:
        rows = d.query("SELECT state, error FROM runs WHERE kind = 'task' AND event_id = ? AND "
                       "state IN ('succeeded', 'failed')", (event_id,))
        return (rows[0]["state"], rows[0]["error"]) if rows else None

    return wait_until(done, timeout=timeout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_task_fails_naming_its_limit_and_the_daemon_goes_on(daemon: Daemon,
                                                                      name: str) -> None:
    before = daemon.query("SELECT COUNT(*) FROM runs WHERE task_name = 'Innocent' AND "
                          "action_type = 'cache' AND state = 'succeeded'")[0][0]
    hostile = send(daemon, topic(name), DATA.get(name))
    innocent = [send(daemon, "user/innocent/go") for _ in range(3)]
    state, error = task_run(daemon, hostile)
    assert state == "failed", (name, error)
    assert error is not None and HOSTILE[name][1] in error and "\n" not in error, error
    assert daemon.query("SELECT COUNT(*) FROM runs WHERE kind = 'action' AND event_id = ?",
                        (hostile,))[0][0] == 0, "a failed task run performs none of its actions"
    for event_id in innocent:
        assert task_run(daemon, event_id) == ("succeeded", None)
    daemon.wait_runs("task_name = 'Innocent' AND action_type = 'cache' AND state = 'succeeded'",
                     before + 3, timeout=30)
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.logs()
    assert daemon.request("GET", "/health")[0] == 200
    assert "Traceback" not in daemon.logs(), daemon.logs()[-3000:]


def peak_rss(d: Daemon) -> int:
    """The daemon's peak resident memory so far, in bytes."""
    assert d.proc is not None
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1]) * 1024  # type: ignore[index]


def test_a_gzip_bomb_in_a_webhook_stops_at_output_bytes(daemon: Daemon) -> None:
    """64 MiB of zeros in 87 KB of webhook: the task fails naming the limit, inflating no more
    than the cap, and the daemon goes on answering."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    packed = b"".join(packer.compress(bytes(1 << 20)) for _ in range(64)) + packer.flush()
    before = peak_rss(daemon)
    status, _, body = daemon.post_json("/webhooks/upload",
                                       {"blob": base64.b64encode(packed).decode()})
    assert status == 204, body
    event_id = daemon.query("SELECT id FROM events WHERE topic = 'user/hostile/upload'")[0][0]
    state, error = task_run(daemon, event_id)
    assert (state, error) == (
        "failed", "line 1: filter 'gunzip': limit exceeded: output_bytes (1048576)")
    assert daemon.request("GET", "/health")[0] == 200
    assert peak_rss(daemon) - before < 32 << 20  # unguarded, it held 64 MiB twice over


def test_a_quadratic_filter_input_is_read_quickly(daemon: Daemon) -> None:
    """`e164` of a megabyte of spaces: nil (not a phone number), not minutes of backtracking."""
    event_id = send(daemon, "user/innocent/phone", {"text": "1" + " " * 500_000 + "1"})
    assert task_run(daemon, event_id) == ("succeeded", None)
    assert daemon.query("SELECT value FROM cache WHERE key = 'phone'")[0][0] == "null"


def test_block_nesting_and_partials_are_refused_at_load(tmp_path: Path) -> None:
    deep = "{% if true %}" * 40 + "{% endif %}" * 40
    path = tmp_path / "c.yaml"
    path.write_text(f"""database: {tmp_path / 'x.db'}
tasks:
  - {{name: Deep, subscriptions: user/a/b, code: {json.dumps(deep)}}}
  - {{name: Partial, subscriptions: user/a/b, code: '{{% include "Deep" %}}'}}
  - {{name: Rendered, subscriptions: user/a/b, code: '{{% render "Deep" %}}'}}
""")
    out = subprocess.run([sys.executable, "-m", "runnerd", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "runnerd: config: task 'Deep': line 1: limit exceeded: nesting (30)",
        "runnerd: config: task 'Partial': line 1: unexpected tag 'include'",
        "runnerd: config: task 'Rendered': line 1: unexpected tag 'render'",
    ], out.stderr
