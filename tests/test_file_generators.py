"""The email action's file generators (Mechanic's core/actions/file-generators): plaintext,
base64, url (downloaded from a real HTTP server on loopback, through the http action's guard) and
zip, end to end through a real daemon whose messages go to the outbox."""

from __future__ import annotations

import email
import email.policy
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from .conftest import Daemon

LOGO = bytes(range(256)) * 8


class _Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path == "/logo.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(LOGO)))
            self.end_headers()
            self.wfile.write(LOGO)
        else:
            self.send_error(404)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def files() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def config(base: str) -> str:
    return f"""
email: {{transport: outbox, from: runnerd@example.com}}
tasks:
  - name: Mailer
    subscriptions: user/mail/send
    code: |
      {{% action "email" %}}
        {{
          "to": "ops@example.com", "subject": "files", "body": "<p>attached</p>",
          "attachments": {{
            "note.txt": "plain text",
            "data.bin": {{"base64": "AAEC"}},
            "logo.bin": {{"url": "{base}{{{{ event.data }}}}"}},
            "bundle.zip": {{"zip": {{"files": {{
              "inner.txt": "inside",
              "logo.bin": {{"url": "{base}/logo.bin"}}
            }}}}}}
          }}
        }}
      {{% endaction %}}
"""


def attachments(d: Daemon) -> dict[str, bytes]:
    (row,) = d.query("SELECT message FROM outbox")
    msg = email.message_from_string(row[0], policy=email.policy.default)
    return {part.get_filename(): part.get_payload(decode=True)
            for part in msg.iter_attachments()}


def test_file_generators_make_the_attachments(make_daemon: Any, files: str) -> None:
    d: Daemon = make_daemon(config(files)).start()
    assert d.cli("send", "user/mail/send", "--data", '"/logo.bin"').returncode == 0
    d.wait_runs("kind = 'action' AND state = 'succeeded'", 1)
    got = attachments(d)
    assert got["note.txt"] == b"plain text" and got["data.bin"] == b"\x00\x01\x02"
    assert got["logo.bin"] == LOGO
    with zipfile.ZipFile(io.BytesIO(got["bundle.zip"])) as archive:
        assert archive.read("inner.txt") == b"inside" and archive.read("logo.bin") == LOGO


def test_a_download_that_fails_fails_the_action_with_one_line(make_daemon: Any,
                                                             files: str) -> None:
    d: Daemon = make_daemon(config(files)).start()
    assert d.cli("send", "user/mail/send", "--data", '"/missing.bin"').returncode == 0
    d.wait_runs("kind = 'action' AND state = 'failed'", 1)
    (error,) = d.query("SELECT error FROM runs WHERE kind = 'action'")
    assert error[0] == f"http: GET {files}/missing.bin answered 404", error[0]
    assert d.query("SELECT COUNT(*) FROM outbox")[0][0] == 0


def test_a_download_from_the_daemons_own_listener_is_refused(make_daemon: Any) -> None:
    d: Daemon = make_daemon(config("http://127.0.0.1:PORT")).start()
    d.stop()
    d.write_config(config(f"http://127.0.0.1:{d.port}"))
    d.start()
    assert d.cli("send", "user/mail/send", "--data", '"/status"').returncode == 0
    d.wait_runs("kind = 'action' AND state = 'failed'", 1)
    (error,) = d.query("SELECT error FROM runs WHERE kind = 'action'")
    assert "refused" in error[0] and "the daemon's own listener" in error[0], error[0]
