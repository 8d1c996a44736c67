"""Smart client pieces that need no server: URL parsing, retry policy, request ids, gather."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import types
from typing import Any
from unittest import mock

import pytest
import requests
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError
from urllib3.util.timeout import Timeout

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
from atlas.client.retry import DeadlineTimeout, timeout_total


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


# What atlas.client itself defines in place of requests' object of the same name.
ATLAS_OWN = {"Session", "session", "request", "get", "options", "head", "post", "put", "patch"}
ATLAS_OWN |= {"delete", "sessions", "adapters", "api"}


def test_every_public_name_of_requests_is_there() -> None:
    # Derived from the installed requests: whatever it exports, atlas.client answers.
    public = [n for n in vars(requests) if not n.startswith("_")]
    metadata = [n for n in ("__version__", "__title__", "__build__") if n in vars(requests)]
    assert {"exceptions", "codes", "HTTPError", "JSONDecodeError", "utils"} <= set(public)
    for name in public + metadata:
        assert hasattr(atlas.client, name), name
        if name not in ATLAS_OWN:
            assert getattr(atlas.client, name) is getattr(requests, name), name
    assert atlas.client.__version__ == requests.__version__
    assert set(requests.__all__) <= set(atlas.client.__all__)
    assert set(atlas.client.__all__) >= ATLAS_OWN


def test_error_path_names_are_requests_own() -> None:
    from atlas import client as requests_like

    assert requests_like.HTTPError is requests.exceptions.HTTPError
    assert requests_like.exceptions.ConnectionError is requests.ConnectionError
    assert requests_like.codes.not_found == 404
    assert isinstance(requests_like.session(), Session)
    assert requests_like.sessions.session is requests_like.session
    assert isinstance(requests_like.api.get, types.FunctionType)
    assert requests_like.api.get is atlas.client.get


def test_shadowing_modules_answer_and_forward_requests_names() -> None:
    import requests.adapters
    import requests.sessions

    assert atlas.client.sessions.SessionRedirectMixin is requests.sessions.SessionRedirectMixin
    assert atlas.client.sessions.Session is Session
    assert atlas.client.adapters.DEFAULT_POOLSIZE == requests.adapters.DEFAULT_POOLSIZE
    assert "BaseAdapter" in dir(atlas.client.adapters)
    with pytest.raises(AttributeError):
        _ = atlas.client.sessions.no_such_name
    # A patch through atlas' module reaches the code of requests' that reads the name.
    original = requests.sessions.get_netrc_auth
    with mock.patch("atlas.client.sessions.get_netrc_auth", lambda url: ("u", "p")):
        assert requests.sessions.get_netrc_auth("http://x/") == ("u", "p")
        prepared = Session().prepare_request(requests.Request("GET", "http://127.0.0.1:1/"))
        assert prepared.headers["Authorization"].startswith("Basic ")
    assert requests.sessions.get_netrc_auth is original
    # A name atlas imported from requests unchanged is forwarded too, both copies set.
    real_merge = requests.sessions.merge_setting
    with mock.patch("atlas.client.sessions.merge_setting") as fake:
        assert requests.sessions.merge_setting is fake
        assert vars(atlas.client.sessions)["merge_setting"] is fake
    assert requests.sessions.merge_setting is real_merge
    assert vars(atlas.client.sessions)["merge_setting"] is real_merge
    # atlas' own names stay atlas' own.
    with mock.patch("atlas.client.sessions.Session") as fake_session:
        assert atlas.client.sessions.Session is fake_session
        assert requests.sessions.Session is not fake_session


def test_every_call_has_a_default_timeout() -> None:
    with Session() as session:
        for prefix in ("http://", "https://", "service://"):
            adapter = session.get_adapter(prefix + "x/")
            assert adapter.timeout == atlas.client.DEFAULT_TIMEOUT, prefix  # type: ignore[attr-defined]
    with Session(timeout=(1, 2)) as session:
        assert session.get_adapter("http://x/").timeout == (1, 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("timeout", "total"),
    [
        (0.3, 0.6),
        ((1, 2), 3.0),
        ((None, 2), None),
        ((None, None), None),
        (Timeout(connect=1, read=4), 5.0),
        (Timeout(total=2.5, read=10), 2.5),
        (Timeout(connect=None, read=None), None),
    ],
)
def test_timeout_total_is_connect_plus_read(timeout: Any, total: float | None) -> None:
    assert timeout_total(timeout) == total


def test_deadline_timeout_cuts_each_attempt_to_what_is_left() -> None:
    fake = FakeTime()
    timeout = DeadlineTimeout(2.0, 5.0, deadline=fake.now + 3.0, clock=fake.clock)
    attempt = timeout.clone()
    assert (attempt.connect_timeout, attempt.read_timeout) == (2.0, 3.0)
    fake.sleep(2.5)
    attempt = timeout.clone()
    assert isinstance(attempt, DeadlineTimeout)
    assert attempt.connect_timeout == pytest.approx(0.5)
    assert attempt.read_timeout == pytest.approx(0.5)
    fake.sleep(10)
    assert timeout.clone().connect_timeout > 0  # never 0: a 0 socket timeout is non-blocking
    unbounded = DeadlineTimeout(None, None, deadline=fake.now + 1.0, clock=fake.clock)
    assert unbounded.clone().read_timeout == pytest.approx(1.0)


def test_read_timeouts_are_not_retried_unless_asked() -> None:
    error = ReadTimeoutError(None, "/", "Read timed out.")  # type: ignore[arg-type]
    with pytest.raises(ReadTimeoutError):
        AtlasRetry().start().increment("GET", "/", error=error)
    again = AtlasRetry(retry_read_timeouts=True).start().increment("GET", "/", error=error)
    assert again.total == 2
    assert again.new().retry_read_timeouts is True
    # A connection closed mid-response (a reloading HAProxy) is still retried.
    closed = ProtocolError("Connection aborted.", ConnectionResetError())
    assert AtlasRetry().start().increment("GET", "/", error=closed).total == 2


def test_start_cuts_the_budget_to_the_limit() -> None:
    fake = FakeTime()
    retry = AtlasRetry(budget=10.0, clock=fake.clock)
    assert retry.start().remaining() == pytest.approx(10.0)
    assert retry.start(0.6).remaining() == pytest.approx(0.6)
    assert retry.start(60).remaining() == pytest.approx(10.0)
    assert AtlasRetry(budget=None, clock=fake.clock).start(2).remaining() == pytest.approx(2)
    assert AtlasRetry(budget=None).start().remaining() is None


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


def test_map_reuses_the_sessions_threads_and_carries_the_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = Session(concurrency=4)
    seen: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def fake_request(method: str, url: str, **kwargs: Any) -> str:
        with lock:
            seen.append((threading.get_ident(), current_request_id()))
        return url

    monkeypatch.setattr(session, "request", fake_request)
    calls = [("GET", f"service://x/{i}") for i in range(8)]
    with request_id("batch-1"):
        assert session.map(calls) == [url for _method, url in calls]
        assert session.map(calls) == [url for _method, url in calls]
    threads = {ident for ident, _rid in seen}
    assert len(seen) == 16 and len(threads) <= 4 and threading.get_ident() not in threads
    assert {rid for _ident, rid in seen} == {"batch-1"}
    assert session._workers(4) is session._workers(2)
    bigger = session._workers(8)
    assert session._workers(8) is bigger
    session.close()
    assert getattr(session, "_executor", None) is None


def test_gather_inside_a_worker_of_the_same_executor_does_not_wait_on_itself() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:

        def inner() -> list[int | Exception]:
            return gather(lambda: 1, lambda: 2, lambda: 3, executor=pool)

        results = gather(inner, inner, executor=pool)
    assert results == [[1, 2, 3], [1, 2, 3]]
