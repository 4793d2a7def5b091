"""Alert emails people can read (issue 19, item 7): the text/plain part keeps a table's cells
apart and shows values ("never", not "None"), checked on a real alert received by a real SMTP
server from a real daemon, and on the HTML → text conversion every HTML mail uses."""

from __future__ import annotations

import email
import email.policy
from typing import Any

import pytest

from runnerd.actions import message

from .conftest import Daemon, wait_until
from .helpers_servers import smtp_server

pytestmark = pytest.mark.timeout(60)


def test_table_cells_stay_apart_in_the_text_part() -> None:
    html = ("<p>Orders</p><table><tr><th>id</th><th>total</th></tr>"
            "<tr><td>17</td><td>9.50</td></tr><tr><td>18</td><td></td></tr></table><p>end</p>")
    assert message.html_to_text(html) == "Orders\n\nid | total\n17 | 9.50\n18 |\n\nend\n"


def text_part(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_alert_mail_text_part_is_readable(make_daemon: Any) -> None:
    with smtp_server() as (controller, recorder):
        d: Daemon = make_daemon(f"""
            email: {{transport: smtp, from: runnerd@example.com,
                     smtp: {{host: 127.0.0.1, port: {controller.port}}}}}
            monitoring: {{mail_recipients: [ops@example.com], alert_interval: 0}}
            monitors:
              - {{name: backup, period: 1h, grace: 1h}}
            """).start()
        assert d.request("POST", "/ping/backup/fail", "disk full")[0] == 200
        wait_until(lambda: len(recorder.messages) == 1, timeout=15)
        text = text_part(recorder.messages[0].data)
        lines = text.splitlines()
        assert lines[0].startswith("Monitor backup went from new to down at ")
        for line in ("state | down", "previous state | new", "last status | failed",
                     "last success at | never", "last started at | never",
                     "last error | disk full"):
            assert line in lines, (line, text)
        assert "None" not in text and "statedown" not in text
        assert d.stop() == 0
