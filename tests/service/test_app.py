"""SmartService in-process: problem+json, request ids, JSON logs, lazy clients, health checks,
environment dump without secrets, error reporting (never over the network), and that the package
ships without the API server's dependencies."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from flask import current_app
from flask_restful import Resource

from atlas.errors import NotFound, ValidationFailed
from atlas.service import PROBLEM_JSON, PerProcess, SmartService, current_service, logs, secret
from atlas.service.redact import MASK, Redactor, strip_url_password
from atlas.stack import free_port
from atlas.stack.echo import make_handler
from tests.helpers import wait_until
from tests.service.conftest import PostgresServer, RedisServer

CONFIG = {
    "GREETING": "hello",
    "LOG_LEVEL": "INFO",
    "REDIS_URL": "",
    "DATABASE_URL": "",
    "DB_PASSWORD": secret(),
    "HEALTHCHECK_SUCCESS_TTL_S": 0,
    "HEALTHCHECK_FAILED_TTL_S": 0,
}


class Hello(Resource):
    def get(self) -> dict[str, Any]:
        return {"greeting": current_app.config["GREETING"], "realm": current_service().realm}


class Missing(Resource):
    def get(self) -> None:
        raise NotFound("no such greeting")


class Broken(Resource):
    def get(self) -> None:
        raise ZeroDivisionError("a bug")


def make(**overrides: Any) -> SmartService:
    app = SmartService("greeter", CONFIG, offline=True, overrides=overrides)
    app.api.add_resource(Hello, "/hello")
    app.api.add_resource(Missing, "/missing")
    app.api.add_resource(Broken, "/broken")
    return app


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------- shipping


def test_ships_without_the_api_servers_dependencies_and_pays_nothing_unconfigured() -> None:
    code = (
        "import sys, atlas.service, atlas.service.scaffold, atlas.service.serve;"
        "app = atlas.service.SmartService('x', {'GREETING': 'hi'}, offline=True);"
        "app.test_client().get('/healthcheck');"
        "server = [m for m in sys.modules if m.split('.')[0] in ('pynamodb', 'boto3', 'botocore',"
        " 'marshmallow', 'yaml') or m.startswith(('atlas.api', 'atlas.registry', 'atlas.app'))];"
        "assert not server, server;"
        "unused = [m for m in sys.modules if m.split('.')[0] in ('redis', 'sqlalchemy',"
        " 'psycopg', 'sentry_sdk', 'bugsnag')];"
        "assert not unused, unused"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --------------------------------------------------------------------- names


def test_bad_service_name_is_refused_before_anything() -> None:
    from atlas.contract import check_service_name

    with pytest.raises(ValidationFailed) as err:
        SmartService("Bad_Name", CONFIG, offline=True)
    with pytest.raises(ValidationFailed) as api:
        check_service_name("Bad_Name")  # the rule and message the API uses
    assert err.value.to_problem() == api.value.to_problem()
    assert err.value.errors == {"name": ["Must match ^[a-z][a-z0-9-]{0,62}$."]}


# -------------------------------------------------------------- the Flask app


def test_config_realm_and_overrides() -> None:
    app = make(GREETING="bonjour")
    assert app.config["GREETING"] == "bonjour" and app.realm == "local"
    assert app.config["DB_PASSWORD"] == "" and type(app.config["DB_PASSWORD"]) is str
    assert app.secret_keys == {"DB_PASSWORD"}
    resp = app.test_client().get("/hello")
    assert resp.status_code == 200 and resp.json == {"greeting": "bonjour", "realm": "local"}


def test_every_error_is_problem_json_and_only_bugs_are_reported() -> None:
    app = make()
    reported: list[BaseException] = []
    app.reporter.report = reported.append  # type: ignore[method-assign]
    client = app.test_client()

    missing = client.get("/missing")
    assert missing.status_code == 404 and missing.mimetype == PROBLEM_JSON
    assert missing.json["detail"] == "no such greeting"
    unknown = client.get("/no-such-route")
    assert unknown.status_code == 404 and unknown.mimetype == PROBLEM_JSON
    method = client.post("/hello")
    assert method.status_code == 405 and method.mimetype == PROBLEM_JSON
    assert "GET" in method.headers["Allow"]
    broken = client.get("/broken")
    assert broken.status_code == 500 and broken.mimetype == PROBLEM_JSON
    assert "a bug" not in broken.text  # the bug's message is logged, not shown
    assert [type(e) for e in reported] == [ZeroDivisionError]


def test_a_failing_reporter_is_counted_and_the_response_still_sent() -> None:
    app = make()

    def fail(exc: BaseException) -> None:
        raise OSError("reporter down")

    app.reporter.report = fail  # type: ignore[method-assign]
    assert app.test_client().get("/broken").status_code == 500
    assert app.report_failures == 1


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler("echo"))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_request_id_is_echoed_passed_on_by_the_client_and_logged(
    echo_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make()

    @app.get("/call")
    def call() -> Any:
        return current_service().client.get(f"http://127.0.0.1:{echo_port}/x").json()

    resp = app.test_client().get("/call", headers={"X-Request-Id": "rid-123"})
    assert resp.headers["X-Request-Id"] == "rid-123"
    assert resp.json["request_id"] == "rid-123"  # what the downstream service received

    logs.flush_access_log()  # access lines are written in batches by a background thread
    lines = log_lines(capsys.readouterr().out)
    access = [r for r in lines if r["logger"] == "atlas.service.access"]
    assert access[-1] | {"time": None, "duration_ms": None} == {
        "level": "INFO", "logger": "atlas.service.access", "message": "GET /call 200",
        "service": "greeter", "realm": "local", "request_id": "rid-123", "method": "GET",
        "path": "/call", "status": 200, "remote_addr": "127.0.0.1",
        "bytes": resp.content_length, "time": None, "duration_ms": None,
    }  # fmt: skip
    assert all({"time", "level", "service", "realm", "request_id"} <= r.keys() for r in lines)


def test_access_lines_of_the_default_setup_are_batched_by_a_writer_thread(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = make()
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if isinstance(h, logs.StdoutHandler)]
    handler = logs.fast_handler(logging.getLogger(logs.ACCESS_LOGGER))
    assert handler is not None  # only our handler: the batched path
    client = app.test_client()
    for i in range(5):
        client.get(f"/hello?n={i}", headers={"X-Request-Id": f"batch-{i}"})
    logs.flush_access_log()
    access = [r for r in log_lines(capsys.readouterr().out) if r["logger"] == logs.ACCESS_LOGGER]
    assert [(r["message"], r["request_id"], r["status"]) for r in access] == [
        (f"GET /hello?n={i} 200", f"batch-{i}", 200) for i in range(5)
    ]
    assert all(r["service"] == "greeter" and r["realm"] == "local" and r["time"] for r in access)
    writer = logs.access_writer(handler)
    assert writer.errors == 0
    client.get("/hello")
    wait_until(lambda: not writer._pending, what="the writer thread drains by itself")

    def broken(line: str) -> None:
        raise OSError("stdout closed")

    handler.write_line = broken  # type: ignore[method-assign]
    client.get("/hello")
    writer.flush()
    assert writer.errors == 1 and not writer._pending  # counted, dropped, the service goes on


def test_clients_are_lazy_and_say_what_is_missing() -> None:
    app = make()
    assert app._redis.peek() is None and app._engine.peek() is None
    with pytest.raises(RuntimeError, match="REDIS_URL is not configured"):
        _ = app.redis
    with pytest.raises(RuntimeError, match="DATABASE_URL is not configured"):
        _ = app.db
    assert app.health.check.checkers == []


def test_per_process_values_are_rebuilt_after_a_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    forked: list[object] = []

    def build() -> object:
        built.append(object())
        return built[-1]

    value = PerProcess(build, after_fork=forked.append)
    first = value.get()
    assert value.get() is first and value.peek() is first
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked worker
    assert value.peek() is None
    second = value.get()
    assert second is not first and forked == [first]


def test_db_session_is_removed_on_teardown(tmp_path: Any) -> None:
    from sqlalchemy import text

    app = make(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}")
    seen: list[object] = []

    @app.get("/db")
    def db() -> Any:
        session = current_service().db
        seen.append(session())  # the Session object of this request
        return {"one": session.execute(text("SELECT 1")).scalar()}

    client = app.test_client()
    assert client.get("/db").json == {"one": 1}
    assert client.get("/db").json == {"one": 1}
    assert seen[0] is not seen[1]  # removed after the first request, a new one for the second
    assert app.db.registry.has() is False
    health = client.get("/healthcheck")
    assert health.status_code == 200
    assert [r["checker"] for r in health.json["results"]] == ["database"]
    app.db_engine.dispose()


def test_redis_check_fails_when_redis_stops(redis_server: RedisServer) -> None:
    app = make(REDIS_URL=redis_server.url)
    client = app.test_client()
    app.redis.set("k", "v")
    assert app.redis.get("k") == b"v"
    ok = client.get("/healthcheck")
    assert ok.status_code == 200 and ok.json["results"][0]["checker"] == "redis"
    redis_server.stop()
    bad = client.get("/healthcheck")
    assert bad.status_code == 500 and bad.json["status"] == "failure"
    assert bad.json["results"][0]["passed"] is False
    assert app.health.failures == 1
    app.redis.close()


def test_database_check_on_real_postgres_uses_the_password(postgres_server: PostgresServer) -> None:
    postgres_server.create_user("unit_db", "right-pw-55")
    good = make(DATABASE_URL=postgres_server.url("unit_db", "right-pw-55", "unit_db"))
    resp = good.test_client().get("/healthcheck")
    assert resp.status_code == 200, resp.text
    assert resp.json["results"][0]["output"] == "postgresql answers SELECT 1"
    good.db_engine.dispose()

    bad = make(DATABASE_URL=postgres_server.url("unit_db", "wrong-pw-66", "unit_db"))
    resp = bad.test_client().get("/healthcheck")
    assert resp.status_code == 500 and "password authentication failed" in resp.text
    assert "wrong-pw-66" not in resp.text
    bad.db_engine.dispose()


# ------------------------------------------------------------ environment dump


def test_redaction_rules() -> None:
    assert strip_url_password("postgresql://u:pw@h:5/db") == f"postgresql://u:{MASK}@h:5/db"
    assert strip_url_password("redis://h:6379/0") == "redis://h:6379/0"
    r = Redactor(secret_keys={"DB_PASSWORD"}, undeclared_keys={"FROM_ATLAS"})
    shown = r.mapping({"DB_PASSWORD": "pw-1", "FROM_ATLAS": "pw-2", "API_TOKEN": "pw-3",
                       "PLAIN": "fine", "EMPTY_SECRET_KEY": "", "URL": "x://u:pw-4@h/"})  # fmt: skip
    assert shown == {"DB_PASSWORD": MASK, "FROM_ATLAS": MASK, "API_TOKEN": MASK, "PLAIN": "fine",
                     "EMPTY_SECRET_KEY": "", "URL": f"x://u:{MASK}@h/"}  # fmt: skip
    assert r.scrub('{"argv": ["--password=pw-1", "pw-3\\"x"], "n": "pw-4"}') == (
        f'{{"argv": ["--password={MASK}", "{MASK}\\"x"], "n": "{MASK}"}}'
    )


def test_environment_dump_never_shows_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_TOKEN", "env-token-secret-1")
    monkeypatch.setenv("SOME_VAR", "shows-fine")
    app = make(DB_PASSWORD="override-secret-2", DATABASE_URL="sqlite:///:memory:")
    app.config["COPY"] = "prefix override-secret-2 suffix"  # a secret copied into a plain value
    body = app.test_client().get("/environment")
    assert body.status_code == 200
    text = body.text
    for s in ("env-token-secret-1", "override-secret-2"):
        assert s not in text
    doc = body.json
    assert doc["config"]["GREETING"] == "hello" and doc["config"]["DB_PASSWORD"] == MASK
    assert doc["config"]["COPY"] == f"prefix {MASK} suffix"
    assert doc["process"]["environ"]["SOME_VAR"] == "shows-fine"
    assert doc["process"]["environ"]["ATLAS_TOKEN"] == MASK
    assert doc["atlas"] == {"service": "greeter", "realm": "local", "url": app.atlas_url,
                            "config_source": "offline", "config_version": 0, "config_age_s": 0.0}  # fmt: skip
    assert {"os", "python"} <= doc.keys() and "flask" in {
        k.lower() for k in doc["python"]["packages"]
    }


# ------------------------------------------------------------- error reporting


def test_sentry_gets_unexpected_errors_through_its_transport_only() -> None:
    import sentry_sdk
    from sentry_sdk.transport import Transport

    class Capture(Transport):
        def __init__(self) -> None:
            super().__init__()
            self.envelopes: list[Any] = []

        def capture_envelope(self, envelope: Any) -> None:
            self.envelopes.append(envelope)

    transport = Capture()
    try:
        app = make(SENTRY_DSN="https://public@sentry.invalid/1",
                   SENTRY_OPTIONS={"transport": transport, "default_integrations": False})  # fmt: skip
        assert app.reporter.name == "sentry"
        app.test_client().get("/broken")
        app.test_client().get("/missing")  # a 404 is not a bug: not reported
        sentry_sdk.flush()
        events = [item.payload.json for env in transport.envelopes for item in env.items
                  if item.type == "event"]  # fmt: skip
        assert len(events) == 1
        assert events[0]["exception"]["values"][0]["type"] == "ZeroDivisionError"
        assert events[0]["environment"] == "local" and events[0]["tags"]["service"] == "greeter"
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


def test_bugsnag_gets_unexpected_errors_through_its_delivery_only() -> None:
    from bugsnag.delivery import Delivery

    class Capture(Delivery):
        def __init__(self) -> None:
            self.payloads: list[Any] = []

        def deliver(self, config: Any, payload: Any, options: Any = None) -> None:
            self.payloads.append(json.loads(payload))

    delivery = Capture()
    app = make(
        BUGSNAG_API_KEY="0" * 32, BUGSNAG_OPTIONS={"delivery": delivery, "asynchronous": False}
    )
    assert app.reporter.name == "bugsnag"
    app.test_client().get("/broken")
    [event] = delivery.payloads[0]["events"]
    assert event["exceptions"][0]["errorClass"] == "ZeroDivisionError"
    assert event["releaseStage"] == "local" and event["app"]["type"] == "greeter"


def test_reporting_is_off_by_default() -> None:
    assert make().reporter.name == "none"


def test_boot_from_atlas_needs_atlas() -> None:
    from atlas.client.config import ConfigLoadError

    port = free_port()
    with pytest.raises(ConfigLoadError, match="did not answer"):
        SmartService("greeter", CONFIG, load_options={"atlas_url": f"http://127.0.0.1:{port}",
                                                      "cache_key": ""})  # fmt: skip
