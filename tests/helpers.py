"""Small helpers shared by tests: an HTTP client for a live Atlas, and waiting for conditions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

T = TypeVar("T")

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


class ApiClient:
    """requests against one Atlas base URL, with the admin token unless told otherwise."""

    def __init__(self, base_url: str, token: str | None = ADMIN_TOKEN) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        # A keep-alive connection the server closes as it is reused (gunicorn ends idle ones)
        # fails the request before it is read; a GET sent again then is harmless. Nothing
        # else is retried, so a write is never sent twice and a dead server still fails.
        retry = Retry(total=1, connect=1, read=1, status=0, redirect=0,
                      allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False)  # fmt: skip
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request (10 s timeout unless given)."""
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kw: Any) -> requests.Response:
        """GET path."""
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        """POST path."""
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        """PUT path."""
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> requests.Response:
        """PATCH path."""
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        """DELETE path."""
        return self.request("DELETE", path, **kw)


def wait_until(
    check: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll check() until it returns a truthy value; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the condition may raise while the system converges
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")
