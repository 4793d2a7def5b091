"""A cookie-keeping HTTP client for the console tests: no redirects followed, forms posted."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from typing import Any

TOKEN = "t0ken-console-admin"


class Client:
    """One browser's cookies; every answer is (status, headers, body text)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(self, method: str, path: str,
                form: dict[str, str] | None = None) -> tuple[int, Any, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        self.set_cookies = resp.headers.get_all("Set-Cookie") or []
        for line in self.set_cookies:
            name, _, rest = line.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in line or 'expires=Thu, 01 Jan 1970' in line or value in ('""', ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        conn.close()
        return resp.status, resp.headers, text

    def get(self, path: str) -> tuple[int, Any, str]:
        return self.request("GET", path)

    def login(self, token: str = TOKEN) -> tuple[int, Any, str]:
        status, _, page = self.get("/console/login")
        assert status == 200, page
        return self.request("POST", "/console/login", {"token": token, "csrf": csrf_of(page)})

    def post(self, path: str, form: dict[str, str] | None = None,
             *, csrf_from: str = "/console/tasks") -> tuple[int, Any, str]:
        """POST a form with the CSRF token read from a page (as a browser would)."""
        _, _, page = self.get(csrf_from)
        return self.request("POST", path, {"csrf": csrf_of(page), **(form or {})})


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)
