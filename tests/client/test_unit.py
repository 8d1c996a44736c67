"""Smart client pieces that need no server: URL parsing, retry policy, request ids, gather."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from typing import Any

import pytest
import requests
from urllib3.exceptions import MaxRetryError, ProtocolError

import atlas.client
from atlas.client import (
    AtlasRetry,
    InvalidServiceName,
    InvalidServiceURL,
    Session,
    gather,
    parse_service_url,
    request_id,
)
from atlas.client.request_id import clean_request_id, current_request_id


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_import_pulls_in_neither_flask_nor_pynamodb() -> None:
    code = (
        "import sys, atlas.client, atlas.client.flask;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('flask', 'pynamodb', 'werkzeug')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("service://identity/teams?x=1", ("identity", "/teams?x=1")),
        ("service://identity", ("identity", "/")),
        ("SERVICE://a1-b/x/y/", ("a1-b", "/x/y/")),
        ("service://" + "a" * 63 + "/", ("a" * 63, "/")),
        ("service://identity/teams#frag", ("identity", "/teams")),
    ],
)
def test_parse_service_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_service_url(url) == expected


@pytest.mark.parametrize(
    "name", ["Identity", "my_service", "1abc", "-abc", "a.b", "", "a" * 64, "idént"]
)
def test_invalid_service_name_fails_before_any_io(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_io(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr("urllib3.util.connection.create_connection", no_io)
    monkeypatch.setattr("socket.create_connection", no_io)
    with pytest.raises(InvalidServiceName) as info:
        atlas.client.get(f"service://{name}/teams")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, requests.RequestException)
    assert "service name" in str(info.value)
    with Session() as session, pytest.raises(ValueError):
        session.send(requests.Request("GET", f"service://{name}/").prepare())


@pytest.mark.parametrize("url", ["service://identity:8080/x", "service://u:p@identity/x"])
def test_port_and_credentials_are_rejected(url: str) -> None:
    with pytest.raises(InvalidServiceURL):
        atlas.client.get(url)


def test_prepare_encodes_params_and_path() -> None:
    with Session() as session:
        prepared = session.prepare_request(
            requests.Request("GET", "service://identity/a b?x=1", params={"y": ["2", "3"]})
        )
    assert prepared.url == "service://identity/a%20b?x=1&y=2&y=3"


def test_session_is_a_requests_session_with_adapters_mounted() -> None:
    with Session(sidecar_url="http://127.0.0.1:4999/") as session:
        assert isinstance(session, requests.Session)
        assert session.service_adapter.sidecar_url == "http://127.0.0.1:4999"
        assert session.get_adapter("service://x/") is session.service_adapter
        assert isinstance(
            session.get_adapter("https://example.org/"), requests.adapters.HTTPAdapter
        )
        clone = pickle.loads(pickle.dumps(session))
        assert clone.service_adapter.sidecar_url == "http://127.0.0.1:4999"
        clone.close()


def test_sidecar_url_and_header_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_SIDECAR_URL", "http://127.0.0.1:4555")
    monkeypatch.setenv("ATLAS_SERVICE_HEADER", "X-Service")
    with Session() as session:
        assert session.service_adapter.sidecar_url == "http://127.0.0.1:4555"
        assert session.service_adapter.service_header == "X-Service"
    monkeypatch.delenv("ATLAS_SIDECAR_URL")
    with Session() as session:
        assert session.service_adapter.sidecar_url == "http://127.0.0.1:4000"


def test_retry_defaults_cover_idempotent_methods_and_gateway_errors() -> None:
    retry = AtlasRetry()
    for method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS"):
        assert retry.is_retry(method, 503)
    for status in (502, 503, 504):
        assert retry.is_retry("GET", status)
    assert not retry.is_retry("GET", 500)
    assert not retry.is_retry("POST", 503)
    assert not retry.is_retry("PATCH", 502)
    assert retry.allowing("post").is_retry("POST", 503)


def test_budget_ends_retries_and_caps_backoff() -> None:
    fake = FakeTime()
    retry = AtlasRetry(
        total=100,
        budget=1.0,
        backoff_factor=0.2,
        backoff_jitter=0.0,
        clock=fake.clock,
        sleeper=fake.sleep,
    ).start()
    error = ProtocolError("Connection aborted.")
    attempts = 0
    with pytest.raises(MaxRetryError):
        while True:
            retry = retry.increment("GET", "/", error=error)
            attempts += 1
            retry.sleep()
    # Backoff 0, 0.4, then 0.8 capped to what is left of the 1 s budget.
    assert fake.sleeps == pytest.approx([0.4, 0.6])
    assert attempts == 3


def test_retry_after_http_date_uses_injected_wall_clock() -> None:
    retry = AtlasRetry(wall_clock=lambda: 1_700_000_000.0)
    assert retry.parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT") == pytest.approx(20.0)
    assert retry.parse_retry_after("5") == 5


def test_request_id_context() -> None:
    assert current_request_id() is None
    with request_id("abc-123") as rid:
        assert rid == "abc-123"
        assert current_request_id() == "abc-123"
        seen = gather(current_request_id, current_request_id)
        assert seen == ["abc-123", "abc-123"]
    assert current_request_id() is None
    with request_id("bad\r\nvalue") as rid:
        assert rid != "bad\r\nvalue" and len(rid) == 32
    assert clean_request_id("x" * 201) is None


def test_gather_keeps_order_exceptions_in_place_and_limits_concurrency() -> None:
    lock = threading.Lock()
    active = [0, 0]  # current, max

    def call(i: int) -> int:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            if i % 3 == 0:
                raise KeyError(i)
            return i
        finally:
            with lock:
                active[0] -= 1

    results = gather(*[lambda i=i: call(i) for i in range(20)], concurrency=3)
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, KeyError) and result.args == (i,)
        else:
            assert result == i
    assert active[1] <= 3
    assert gather() == []
    with pytest.raises(ValueError):
        gather(lambda: 1, concurrency=0)
