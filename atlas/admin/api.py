"""A small client of the Atlas HTTP API for operators: problem+json errors, pages, If-Match.

Plain HTTP through `atlas.client.Session` (request ids included); no Flask, no pynamodb.
Thread-safety: an `AdminApi` is used by one command at a time (requests' Session is not
guaranteed thread-safe).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from atlas.client import Session

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 10.0
PAGE_SIZE = 500


@dataclass(eq=False)
class ApiError(Exception):
    """Atlas answered with an error: the RFC 9457 problem it sent (or one made from the reply)."""

    status: int
    title: str
    detail: str
    errors: dict[str, list[str]] = field(default_factory=dict)
    type: str = ""
    body: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"

    @classmethod
    def from_response(cls, resp: requests.Response) -> ApiError:
        """Read a problem+json body; anything else (a proxy's HTML page) becomes a bare problem."""
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = " ".join(resp.text.split())[:200]
            return cls(resp.status_code, resp.reason or "HTTP error", text or "(no body)")
        errors: dict[str, list[str]] = {}
        raw_errors = body.get("errors")
        if isinstance(raw_errors, Mapping):
            for name, messages in raw_errors.items():
                if isinstance(messages, list):
                    errors[str(name)] = [str(m) for m in messages]
                else:
                    errors[str(name)] = [str(messages)]
        return cls(
            status=int(body.get("status") or resp.status_code),
            title=str(body.get("title") or resp.reason or "HTTP error"),
            detail=str(body.get("detail") or ""),
            errors=errors,
            type=str(body.get("type") or ""),
            body=body,
        )


class Unreachable(Exception):
    """No HTTP answer at all: connection refused, DNS, timeout."""


def segment(value: str) -> str:
    """One URL path segment, percent-encoded (a `/` in a name must not change the route)."""
    return quote(value, safe=":[]@")


class AdminApi:
    """Calls one Atlas deployment with one bearer token."""

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = Session()
        self.session.headers["Accept"] = "application/json, application/problem+json"
        self.session.headers["User-Agent"] = "atlas-admin"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        if_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one request; raise ApiError on 4xx/5xx and Unreachable without an answer."""
        h = dict(headers or {})
        if if_version is not None:
            h["If-Match"] = f'"{if_version}"'
        kwargs: dict[str, Any] = {"params": dict(params or {}), "headers": h}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            h["Content-Type"] = "application/json"
        try:
            resp = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise Unreachable(f"cannot reach Atlas at {self.url}: {_reason(exc)}") from None
        if resp.status_code >= 400:
            raise ApiError.from_response(resp)
        return resp

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request and return its JSON body (None for an empty one)."""
        resp = self.request(method, path, **kwargs)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError(
                resp.status_code, "Not JSON", "Atlas answered with a body that is not JSON"
            ) from None

    def pages(
        self, path: str, params: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list (following `next_cursor`), at most `limit` of them."""
        query = dict(params or {})
        seen = 0
        while True:
            want = PAGE_SIZE if limit is None else max(1, min(PAGE_SIZE, limit - seen))
            page = self.call("GET", path, params={**query, "limit": want})
            for item in page.get("items") or []:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (is it running, and is --url / ATLAS_URL right?)"
    return exc.__class__.__name__
