"""Fixtures for the smart client: real HAProxy routing by header, real HTTP backends.

The HAProxy here runs a static config rendered like the sidecar's (one ACL
on the service header per service). When atlas.sidecar exists, `make_sidecar`
should register the backends in ZooKeeper and start the real sidecar instead;
the tests only use `.url`, `.reload()` and the backends' hit lists.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from atlas.client import DEFAULT_SERVICE_HEADER
from atlas.client.testing import HAPROXY, Backend, Behaviour, StaticHAProxy

Instance = Backend | tuple[str, int]
MakeBackend = Callable[..., Backend]
MakeSidecar = Callable[..., StaticHAProxy]


def _addresses(instances: Sequence[Instance]) -> list[tuple[str, int]]:
    return [i.address if isinstance(i, Backend) else i for i in instances]


@pytest.fixture(scope="session", autouse=True)
def _haproxy_installed() -> None:
    if not Path(HAPROXY).exists():
        pytest.fail("Debian's haproxy package is required (apt-get install haproxy)")


@pytest.fixture
def make_backend() -> Iterator[MakeBackend]:
    """Start scripted backends on 127.0.0.1 for one test: make_backend(name, mode, **behaviour)."""
    made: list[Backend] = []

    def make(name: str = "ok", mode: str = "ok", **behaviour: Any) -> Backend:
        backend = Backend(name, Behaviour(mode, **behaviour)).start()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.stop()


@pytest.fixture
def make_sidecar(tmp_path: Path) -> Iterator[MakeSidecar]:
    """Start an HAProxy routing {service: [backends]} by header for one test."""
    made: list[StaticHAProxy] = []

    def make(
        services: Mapping[str, Sequence[Instance]], header: str = DEFAULT_SERVICE_HEADER
    ) -> StaticHAProxy:
        proxy = StaticHAProxy(
            tmp_path / f"haproxy-{len(made)}",
            {name: _addresses(instances) for name, instances in services.items()},
            header=header,
        ).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


class WSGIServer:
    """A Flask (or any WSGI) app served by werkzeug's threaded server on 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port)."""
        return "127.0.0.1", int(self.server.server_port)

    @property
    def url(self) -> str:
        """http://127.0.0.1:port."""
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _httpbin_app() -> Any:
    """A few httpbin-like endpoints for requests' own usage patterns."""
    import flask

    app = flask.Flask("httpbin")

    def echo() -> Any:
        return {
            "method": flask.request.method,
            "path": flask.request.path,
            "args": flask.request.args.to_dict(flat=False),
            "headers": {k.lower(): v for k, v in flask.request.headers.items()},
            "json": flask.request.get_json(silent=True),
            "form": flask.request.form.to_dict(),
            "files": {k: f.read().decode() for k, f in flask.request.files.items()},
            "cookies": flask.request.cookies.to_dict(),
        }

    for path in ("/get", "/post", "/put", "/patch", "/delete", "/anything"):
        app.add_url_rule(
            path, path, echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        )

    @app.route("/status/<int:code>")
    def status(code: int) -> Any:
        return flask.Response(f"status {code}", status=code)

    @app.route("/cookies/set")
    def set_cookies() -> Any:
        response = flask.redirect("/cookies")
        for key, value in flask.request.args.items():
            response.set_cookie(key, value)
        return response

    @app.route("/cookies")
    def cookies() -> Any:
        return {"cookies": flask.request.cookies.to_dict()}

    @app.route("/basic-auth/<user>/<password>")
    def basic_auth(user: str, password: str) -> Any:
        auth = flask.request.authorization
        if auth is None or auth.username != user or auth.password != password:
            return flask.Response("no", 401, {"WWW-Authenticate": 'Basic realm="x"'})
        return {"authenticated": True, "user": user}

    @app.route("/stream/<int:n>")
    def stream(n: int) -> Any:
        def lines() -> Iterator[str]:
            for i in range(n):
                yield flask.json.dumps({"id": i}) + "\n"

        return flask.Response(lines(), mimetype="application/x-ndjson")

    @app.route("/bytes/<int:n>")
    def some_bytes(n: int) -> Any:
        return flask.Response(bytes(range(256)) * (n // 256) + bytes(range(n % 256)))

    @app.route("/redirect/<int:n>")
    def redirect(n: int) -> Any:
        return flask.redirect(f"/redirect/{n - 1}" if n > 1 else "/get")

    return app


@pytest.fixture(scope="session")
def httpbin() -> Iterator[WSGIServer]:
    """A tiny httpbin (Flask) on 127.0.0.1 for the compatibility tests."""
    server = WSGIServer(_httpbin_app())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def httpbin_sidecar(
    httpbin: WSGIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StaticHAProxy]:
    """HAProxy routing the service ``httpbin`` to the httpbin server."""
    proxy = StaticHAProxy(
        tmp_path_factory.mktemp("httpbin-haproxy"), {"httpbin": [httpbin.address]}
    ).start()
    yield proxy
    proxy.stop()
