"""Dependencies failing: HTTP targets that refuse, hang or reset end in the documented retry and
then `failed`; one slow target cannot starve the other runs."""

from __future__ import annotations

import time

from runnerd import models
from runnerd.queue import runs

from ..conftest import Daemon
from ..helpers_servers import refused_port
from ..test_pipeline import pipeline  # noqa: F401 - the in-process pipeline fixture
from .helpers import Target, wait_for

CASES = {
    "refused": ("{refused}/x", "(Connection refused)"),
    "hang": ("{target}/hang", "timed out after 0.5 s"),
    "reset": ("{target}/reset", "failed: "),
}


async def test_refused_hanging_and_resetting_targets_retry_four_times_then_fail(
        pipeline, clock) -> None:  # noqa: F811
    with Target() as target, refused_port() as port:
        where = {"refused": f"http://127.0.0.1:{port}", "target": target.url}
        code = " ".join(
            f'{{% action "http", method: "post", url: "{url.format(**where)}", timeout: 0.5, '
            f'body: "{name}" %}}'
            for name, (url, _) in CASES.items())
        p = await pipeline(f"""
            tasks:
              - name: Calls
                subscriptions: user/calls/go
                code: '{code}'
        """)
        await p.send("user/calls/go")
        await p.drain()
        for attempt in range(1, runs.MAX_ATTEMPTS + 1):
            actions = [r for r in await p.runs(kind="action")]
            assert len(actions) == 3
            for run in actions:
                name = run.options["body"]
                expected = CASES[name][1]
                assert run.attempts == attempt, (name, run)
                assert expected in (run.error or ""), (name, run.error)
                final = attempt == runs.MAX_ATTEMPTS
                assert run.state is (models.RunState.FAILED if final
                                     else models.RunState.SCHEDULED), (name, run.state)
            clock.advance(runs.BACKOFF[min(attempt, len(runs.BACKOFF)) - 1] * 1.2)
            await p.drain()
        assert target.hits.get("hang") == runs.MAX_ATTEMPTS
        assert target.hits.get("reset") == runs.MAX_ATTEMPTS
        errors = await p.events("mechanic/errors/action")
        assert len(errors) == 3, "one error event per action, when it failed for good"


STARVE = """
concurrency: 2
tasks:
  - name: Slow
    subscriptions: user/slow/call
    code: |
      {% action "http", method: "get", url: "URL/slow?s=2" %}
  - name: Quick
    subscriptions: user/quick/call
    code: |
      {% action "echo", quick: true %}
      {% action "cache", "set", "quick", true %}
"""


def test_a_slow_target_cannot_starve_other_runs(make_daemon) -> None:
    with Target() as target:
        d: Daemon = make_daemon(STARVE.replace("URL", target.url)).start()
        for _ in range(6):
            assert d.cli("send", "user/slow/call").returncode == 0
        wait_for(lambda: target.in_flight >= 1, message="a slow request in flight")
        began = time.monotonic()
        assert d.cli("send", "user/quick/call").returncode == 0
        d.wait_runs("action_type IN ('echo', 'cache') AND state = 'succeeded'", 2, timeout=8)
        waited = time.monotonic() - began
        slow_done = d.query("SELECT COUNT(*) FROM runs WHERE action_type = 'http' "
                            "AND state = 'succeeded'")[0][0]
        print(f"quick runs done in {waited:.2f}s with {slow_done}/6 slow http runs done")
        # 6 slow runs on 2 slots would hold the queue for 6 s; the quick ones passed them.
        assert slow_done < 6, "the quick runs waited for the whole slow backlog"
        assert target.max_in_flight == 1, "one target gets half of the 2 slots"
        d.wait_runs("action_type = 'http' AND state = 'succeeded'", 6, timeout=30)
        attempts = d.query("SELECT DISTINCT attempts FROM runs WHERE action_type = 'http'")
        assert [r[0] for r in attempts] == [1], "a handed-back run's claim is not an attempt"
        assert d.stop() == 0
