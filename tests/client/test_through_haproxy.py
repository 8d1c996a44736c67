"""service:// through a real HAProxy routing by header, with real backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3

import atlas.client
from atlas.client import AtlasRetry, InvalidServiceName, Session, gather
from atlas.stack import free_port

from .conftest import MakeBackend, MakeSidecar, WSGIServer

pytestmark = pytest.mark.integration


class Recorder:
    """Injected sleep: records the waits instead of waiting."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def history(response: requests.Response) -> tuple[Any, ...]:
    """urllib3's record of the failed attempts behind a response."""
    return tuple(response.raw.retries.history) if response.raw.retries else ()


def test_routes_by_service_name(make_backend: MakeBackend, make_sidecar: MakeSidecar) -> None:
    identity, billing = make_backend("identity"), make_backend("billing")
    proxy = make_sidecar({"identity": [identity], "billing": [billing]})
    with Session(sidecar_url=proxy.url) as session:
        teams = session.get("service://identity/teams?x=1", params={"y": "2"})
        invoices = session.get("service://billing/invoices")
        unknown = session.get("service://nobody/", retries=False)
    assert teams.status_code == 200
    assert teams.json()["instance"] == "identity"
    assert teams.json()["path"] == "/teams?x=1&y=2"
    assert teams.json()["headers"]["atlas-service"] == "identity"
    assert teams.url == "service://identity/teams?x=1&y=2"
    assert invoices.json()["instance"] == "billing"
    assert unknown.status_code == 503  # as the sidecar answers an unknown service
    assert unknown.headers["X-Atlas-Error"] == "unknown-service"
    assert len(identity.hits) == 1 and len(billing.hits) == 1


def test_module_functions_use_the_sidecar_from_the_environment(
    make_backend: MakeBackend, make_sidecar: MakeSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = make_backend("identity")
    proxy = make_sidecar({"identity": [backend]})
    monkeypatch.setenv("ATLAS_SIDECAR_URL", proxy.url)
    for call in (atlas.client.get, atlas.client.delete, atlas.client.options):
        assert call("service://identity/x").json()["method"] == call.__name__.upper()
    assert atlas.client.post("service://identity/x", json={"a": 1}).json()["body"] == '{"a": 1}'
    assert atlas.client.put("service://identity/x", data="d").json()["body"] == "d"
    assert atlas.client.patch("service://identity/x", data="p").json()["method"] == "PATCH"
    assert atlas.client.head("service://identity/x").status_code == 200


def test_service_calls_ignore_proxy_environment(
    make_backend: MakeBackend, make_sidecar: MakeSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = make_backend("identity")
    proxy = make_sidecar({"identity": [backend]})
    nowhere = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, nowhere)
    with Session(sidecar_url=proxy.url) as session:
        assert session.get("service://identity/").status_code == 200
        assert session.get("service://identity/", proxies={"http": nowhere}).status_code == 200
        with pytest.raises(requests.exceptions.ProxyError):
            session.get(backend.url, timeout=2)  # plain URLs still honour the proxy settings


def test_service_header_is_configurable(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    backend = make_backend("identity")
    proxy = make_sidecar({"identity": [backend]}, header="X-Route-To")
    with Session(sidecar_url=proxy.url, service_header="X-Route-To") as session:
        assert session.get("service://identity/").json()["headers"]["x-route-to"] == "identity"


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("failure", ["status", "reset"])
def test_idempotent_calls_retried_onto_the_healthy_instance(
    method: str, failure: str, make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    bad = make_backend("bad", failure, status=503)
    good = make_backend("good")
    proxy = make_sidecar({"flaky": [bad, good]})
    with Session(sidecar_url=proxy.url) as session:
        responses = [session.request(method, f"service://flaky/{i}") for i in range(6)]
    assert [r.status_code for r in responses] == [200] * 6
    assert len(good.hits) == 6
    assert bad.hits, "round robin never reached the failing instance"
    retried = [h for r in responses for h in history(r)]
    assert len(retried) == len(bad.hits)
    for attempt in retried:
        if failure == "status":
            assert attempt.status == 503
        else:
            # HAProxy either answers 502 or drops the client connection.
            assert attempt.status == 502 or attempt.error is not None, attempt


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_post_and_patch_not_retried_on_503(
    method: str, make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    bad = make_backend("bad", "status", status=503)
    proxy = make_sidecar({"down": [bad]})
    with Session(sidecar_url=proxy.url) as session:
        response = session.request(method, "service://down/orders", json={"n": 1})
    assert response.status_code == 503
    assert len(bad.hits) == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_post_and_patch_not_retried_on_reset(
    method: str, make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    bad = make_backend("bad", "reset")
    proxy = make_sidecar({"down": [bad]})
    with Session(sidecar_url=proxy.url) as session:
        try:
            response = session.request(method, "service://down/orders", json={"n": 1})
        except requests.ConnectionError:
            pass  # HAProxy dropped the client connection
        else:
            assert response.status_code == 502
    assert len(bad.hits) == 1


@pytest.mark.parametrize(
    "opt_in", [{"headers": {"Idempotency-Key": "order-42"}}, {"idempotent": True}]
)
def test_post_retried_when_the_caller_opts_in(
    opt_in: dict[str, Any], make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    backend = make_backend("busy", "status", status=503, fail_first=1)
    proxy = make_sidecar({"busy": [backend]})
    with Session(sidecar_url=proxy.url) as session:
        response = session.post("service://busy/orders", json={"n": 1}, **opt_in)
    assert response.status_code == 200
    assert len(backend.hits) == 2
    assert backend.hits[0].body == backend.hits[1].body == b'{"n": 1}'


def test_retries_can_be_turned_off_per_call_and_per_session(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    backend = make_backend("bad", "status", status=503)
    proxy = make_sidecar({"down": [backend]})
    with Session(sidecar_url=proxy.url) as session:
        assert session.get("service://down/", retries=False).status_code == 503
        assert len(backend.hits) == 1
        assert session.get("service://down/", idempotent=False).status_code == 503
        assert len(backend.hits) == 2
        session.get("service://down/", retries=1)
        assert len(backend.hits) == 4
    with Session(sidecar_url=proxy.url, retries=0) as session:
        session.get("service://down/")
        assert len(backend.hits) == 5


def test_exhausted_retries_return_the_last_503_after_backoff(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    backend = make_backend("bad", "status", status=503)
    proxy = make_sidecar({"down": [backend]})
    sleep = Recorder()
    retry = AtlasRetry(total=3, backoff_factor=0.5, backoff_jitter=0.0, sleeper=sleep)
    with Session(sidecar_url=proxy.url, retries=retry) as session:
        response = session.get("service://down/")
    assert response.status_code == 503
    assert len(backend.hits) == 4
    assert sleep.sleeps == [1.0, 2.0]  # the first retry is immediate


def test_sidecar_down_get_retried_with_backoff_post_not(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []
    real_connect = urllib3.util.connection.create_connection

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        attempts.append("connect")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(urllib3.connection.connection, "create_connection", counting_connect)
    sleep = Recorder()
    retry = AtlasRetry(total=3, backoff_factor=0.1, backoff_jitter=0.0, sleeper=sleep)
    with Session(sidecar_url=f"http://127.0.0.1:{free_port()}", retries=retry) as session:
        with pytest.raises(requests.ConnectionError):
            session.get("service://identity/")
        assert len(attempts) == 4
        assert sleep.sleeps == pytest.approx([0.2, 0.4])
        with pytest.raises(requests.ConnectionError):
            session.post("service://identity/", json={})
        assert len(attempts) == 5
        assert len(sleep.sleeps) == 2


def test_retry_after_is_honoured(make_backend: MakeBackend, make_sidecar: MakeSidecar) -> None:
    backend = make_backend("busy", "status", status=503, retry_after="7", fail_first=1)
    proxy = make_sidecar({"busy": [backend]})
    sleep = Recorder()
    with Session(sidecar_url=proxy.url, retries=AtlasRetry(budget=30, sleeper=sleep)) as session:
        response = session.get("service://busy/")
    assert response.status_code == 200
    assert sleep.sleeps == [7]
    assert len(backend.hits) == 2


def test_retry_after_beyond_the_budget_gives_up_at_once(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    backend = make_backend("busy", "status", status=503, retry_after="120")
    proxy = make_sidecar({"busy": [backend]})
    sleep = Recorder()
    with Session(sidecar_url=proxy.url, retries=AtlasRetry(budget=10, sleeper=sleep)) as session:
        response = session.get("service://busy/")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "120"
    assert sleep.sleeps == []
    assert len(backend.hits) == 1


def test_time_budget_bounds_the_retries(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    backend = make_backend("bad", "status", status=503)
    proxy = make_sidecar({"down": [backend]})
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    retry = AtlasRetry(
        total=50,
        budget=3.0,
        backoff_factor=0.5,
        backoff_jitter=0.0,
        clock=lambda: now[0],
        sleeper=sleep,
    )
    with Session(sidecar_url=proxy.url, retries=retry) as session:
        assert session.get("service://down/").status_code == 503
    # Waits 0, 1, then 2 (capped at what is left); then the budget is spent.
    assert len(backend.hits) == 4
    assert now[0] == pytest.approx(3.0)


def test_default_timeouts_apply_to_service_calls(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    slow = make_backend("slow", delay=2.0)
    proxy = make_sidecar({"slow": [slow]})
    with Session(sidecar_url=proxy.url, timeout=(1.0, 0.2), retries=0) as session:
        with pytest.raises(requests.ReadTimeout):
            session.get("service://slow/")
        assert session.get("service://slow/", timeout=5).status_code == 200


def test_reloads_lose_no_keep_alive_get(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    backends = [make_backend("a"), make_backend("b")]
    proxy = make_sidecar({"steady": backends})
    stop = threading.Event()
    outcomes: list[Any] = []
    plain_failures = [0]

    def atlas_loop(session: Session) -> None:
        while not stop.is_set():
            try:
                response = session.get("service://steady/")
                outcomes.append((response.status_code, len(history(response))))
            except requests.RequestException as exc:
                outcomes.append(exc)

    def plain_loop() -> None:
        # The same keep-alive traffic without retries, to show what is being fixed.
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    session.get(proxy.url, headers={"Atlas-Service": "steady"}).close()
                except requests.RequestException:
                    plain_failures[0] += 1

    shared = Session(sidecar_url=proxy.url)
    threads = [
        threading.Thread(target=atlas_loop, args=(shared,)),
        threading.Thread(target=atlas_loop, args=(shared,)),
        threading.Thread(target=plain_loop),
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20):
            stop.wait(0.12)
            proxy.reload()
        stop.wait(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        shared.close()
    failures = [o for o in outcomes if not (isinstance(o, tuple) and o[0] == 200)]
    retried = sum(o[1] for o in outcomes if isinstance(o, tuple))
    print(
        f"\n{len(outcomes)} GETs over 20 reloads: {len(failures)} failures, {retried} retried;"
        f" without retries: {plain_failures[0]} failures"
    )
    assert proxy.reloads() >= 20
    assert len(outcomes) > 20
    assert failures == [], f"{len(failures)} of {len(outcomes)} GETs failed: {failures[:5]}"


def test_parallel_calls_in_order_with_exceptions_in_place(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    ok = make_backend("ok")
    proxy = make_sidecar({"ok": [ok]})
    nothing_there = f"http://127.0.0.1:{free_port()}/"
    with Session(sidecar_url=proxy.url) as session:
        results = session.map(
            [
                ("GET", "service://ok/0"),
                ("POST", nothing_there, {"json": {"n": 1}}),
                ("GET", "service://Not_Valid/2"),
                requests.Request("PUT", "service://ok/3", data="three"),
                ("GET", "service://ok/4", {"params": {"q": "four"}}),
            ]
        )
    assert isinstance(results[0], requests.Response) and results[0].json()["path"] == "/0"
    assert isinstance(results[1], requests.ConnectionError)
    assert isinstance(results[2], InvalidServiceName)
    assert isinstance(results[3], requests.Response) and results[3].json()["body"] == "three"
    assert isinstance(results[4], requests.Response) and results[4].json()["path"] == "/4?q=four"


def test_parallel_calls_really_overlap_up_to_the_limit(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    # Each request waits at a barrier for 8 parties: all 8 succeed only if all
    # 8 are in flight at once.
    barrier = threading.Barrier(8)
    backend = make_backend("fan", barrier=barrier)
    proxy = make_sidecar({"fan": [backend]})
    with Session(sidecar_url=proxy.url) as session:
        results = session.map([("GET", f"service://fan/{i}") for i in range(8)], concurrency=8)
        assert [r.json()["path"] for r in results] == [f"/{i}" for i in range(8)]  # type: ignore[union-attr]
        gathered = gather(
            *[lambda i=i: session.get(f"service://fan/g{i}") for i in range(8)], concurrency=8
        )
        assert all(isinstance(r, requests.Response) and r.ok for r in gathered)


def _front_app() -> Any:
    import flask

    from atlas.client.flask import init_app

    app = flask.Flask("front")
    init_app(app)

    @app.route("/hop")
    def hop() -> Any:
        echoed = atlas.client.get("service://echo/").json()
        return {"echo_saw": echoed["headers"].get("x-request-id")}

    @app.route("/fanout")
    def fanout() -> Any:
        with Session() as session:
            results = session.map([("GET", f"service://echo/{i}") for i in range(4)])
        return {"echo_saw": [r.json()["headers"].get("x-request-id") for r in results]}  # type: ignore[union-attr]

    return app


@pytest.fixture
def front() -> Iterator[WSGIServer]:
    """A Flask service using init_app that calls service://echo through the client."""
    server = WSGIServer(_front_app())
    yield server
    server.stop()


def test_request_id_propagated_across_two_hops(
    front: WSGIServer,
    make_backend: MakeBackend,
    make_sidecar: MakeSidecar,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    echo = make_backend("echo")
    proxy = make_sidecar({"echo": [echo], "front": [front.address]})
    monkeypatch.setenv("ATLAS_SIDECAR_URL", proxy.url)
    with Session() as session:
        given = session.get("service://front/hop", headers={"X-Request-Id": "req-abc-123"})
        assert given.json() == {"echo_saw": "req-abc-123"}
        assert given.headers["X-Request-Id"] == "req-abc-123"

        # No id given: the client makes one, and the same one reaches the second hop.
        fresh = session.get("service://front/hop")
        sent = fresh.request.headers["X-Request-Id"]
        assert fresh.json() == {"echo_saw": sent}

        fanned = session.get("service://front/fanout", headers={"X-Request-Id": "fan-1"})
        assert fanned.json() == {"echo_saw": ["fan-1"] * 4}

        # Outside Flask, an explicit context binds the id for every call in it.
        with atlas.client.request_id("batch-7"):
            direct = session.map([("GET", "service://echo/"), ("GET", "service://echo/")])
        assert [r.json()["headers"]["x-request-id"] for r in direct] == ["batch-7"] * 2  # type: ignore[union-attr]
    # A request without a usable id gets a fresh one at the first hop.
    with Session() as session:
        bad = session.get("service://front/hop", headers={"X-Request-Id": "a b"})
    assert bad.json()["echo_saw"] == bad.headers["X-Request-Id"] != "a b"


def test_every_call_gets_its_own_request_id_by_default(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    echo = make_backend("echo")
    proxy = make_sidecar({"echo": [echo]})
    with Session(sidecar_url=proxy.url, request_id_header="X-Trace") as session:
        first = session.get("service://echo/").json()["headers"]["x-trace"]
        second = session.get("service://echo/").json()["headers"]["x-trace"]
    assert first != second and len(first) == 32
