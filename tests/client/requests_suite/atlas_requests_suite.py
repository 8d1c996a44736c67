"""pytest plugin for running requests' own test suite, with requests or with atlas.client.

Loaded with ``-p atlas_requests_suite`` by ``tests/client/test_requests_suite.py``
in a child pytest whose working directory is the unpacked requests sdist:

- ``--atlas-substitute``: ``sys.modules["requests"] = atlas.client`` before the
  suite is collected, so its ``import requests`` gets the smart client (what
  ``from atlas import client as requests`` gives an application);
- ``--atlas-results=PATH``: write {nodeid: outcome} as JSON at the end;
- loopback only: connecting to a non-loopback address fails at once (as it
  would on a machine without a route) and only loopback names resolve, so
  tests that need the internet fail the same way in both runs;
- pytest-httpbin's servers handle each request in a thread (they are
  single-threaded; the suite's ``delay/10`` requests would otherwise hold up
  the next tests for 10 s each). Both runs use the same servers.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import socketserver
import sys
from pathlib import Path
from typing import Any

import pytest

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("atlas requests suite")
    group.addoption(
        "--atlas-substitute", action="store_true", help="import atlas.client as requests"
    )
    group.addoption("--atlas-results", default=None, help="write {nodeid: outcome} JSON here")


def _is_loopback(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_ip(host: Any) -> bool:
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


def _guard_network() -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise OSError(errno.ENETUNREACH, f"loopback only in this test tier: {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not (_is_loopback(host) or _is_ip(host)):
            raise socket.gaierror(socket.EAI_NONAME, f"loopback only in this test tier: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo


def _thread_httpbin() -> None:
    import wsgiref.simple_server

    import pytest_httpbin.serve

    def make_server(host: str, port: int, app: Any, server_class: Any = None, **kwargs: Any) -> Any:
        base = server_class or wsgiref.simple_server.WSGIServer
        threaded = type(
            f"Threading{base.__name__}",
            (socketserver.ThreadingMixIn, base),
            {"daemon_threads": True, "block_on_close": False},
        )
        return wsgiref.simple_server.make_server(host, port, app, server_class=threaded, **kwargs)

    pytest_httpbin.serve.make_server = make_server  # type: ignore[assignment]


class Recorder:
    """Keeps each test's outcome and writes them all as JSON when the session ends."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.skipped else "xpassed"
            elif report.when == "setup":
                outcome = "skipped" if report.skipped else "error"
            else:
                outcome = report.outcome
            self.outcomes[report.nodeid] = outcome
        elif report.when == "teardown" and report.failed:
            self.outcomes[report.nodeid] = "error"

    def pytest_sessionfinish(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self.outcomes, indent=1, sort_keys=True))


def pytest_configure(config: pytest.Config) -> None:
    _guard_network()
    _thread_httpbin()
    if config.getoption("--atlas-substitute"):
        import atlas.client

        sys.modules["requests"] = atlas.client
    config.pluginmanager.register(Recorder(config.getoption("--atlas-results")), "atlas-recorder")
