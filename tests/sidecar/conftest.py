"""Sidecar fixtures: small real HTTP backends, a znode writer, and a running sidecar + HAProxy."""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from atlas.sidecar.core import LoopSettings, Sidecar
from atlas.sidecar.haproxy import (
    HAProxy,
    ServerState,
    parse_servers_state,
    parse_show_proc,
    socket_command,
)
from atlas.sidecar.model import Snapshot
from atlas.sidecar.render import RenderOptions, render
from atlas.sidecar.watch import ZooKeeperSource
from atlas.stack import ManagedProcess, free_port, wait_for_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll cond() until truthy (no timed assertions: generous timeout, then fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # HAProxy closing idle pooled connections resets them: expected


class Backend:
    """A tiny HTTP server answering its own name; /health answers 200 unless made unhealthy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.healthy = True
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.startswith("/health"):
                    code = 200 if backend.healthy else 500
                else:
                    backend.hits += 1
                    code = 200
                body = backend.name.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def backends() -> Iterator[Callable[[str], Backend]]:
    """Factory of backends, all stopped at teardown."""
    made: list[Backend] = []

    def make(name: str) -> Backend:
        b = Backend(name)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


class Registry:
    """Writes znodes exactly as DESIGN.md says the Atlas mirror does."""

    def __init__(self, hosts: str, realm: str) -> None:
        self.zk = KazooClient(hosts=hosts)
        self.zk.start(timeout=15)
        self.realm = realm
        self.root = f"/atlas/{realm}/services"
        self.zk.ensure_path(self.root)

    def service(
        self, name: str, health_check: dict[str, Any] | None = None, guard: bool = False
    ) -> None:
        """Create or replace a service node (and, like the mirror, bump its guard if asked)."""
        data = json.dumps(
            {"name": name, "port": 80, "health_check": health_check, "version": 1}
        ).encode()
        path = f"{self.root}/{name}"
        tx = self.zk.transaction()
        if self.zk.exists(path):
            tx.set_data(path, data)
        else:
            tx.create(path, data)
        if guard:
            self._bump_guard(tx, name)
        _commit(tx)

    def _bump_guard(self, tx: Any, name: str) -> None:
        guard = f"/atlas/{self.realm}/guards/{name}"
        self.zk.ensure_path(f"/atlas/{self.realm}/guards")
        if self.zk.exists(guard):
            tx.set_data(guard, b"")
        else:
            tx.create(guard, b"")

    def delete_service(self, name: str) -> None:
        """Delete a service as the mirror does: its nodes, and a bump of its guard, in one
        transaction (the guard stays: a service deleted on purpose)."""
        path = f"{self.root}/{name}"
        tx = self.zk.transaction()
        for child in self.zk.get_children(path):
            tx.delete(f"{path}/{child}")
        tx.delete(path)
        self._bump_guard(tx, name)
        _commit(tx)

    @staticmethod
    def instance_data(
        service: str,
        port: int,
        enabled: bool = True,
        weight: int = 100,
        host: str = "127.0.0.1",
        **extra: Any,
    ) -> bytes:
        """An instance payload with the Curator, Synapse and Atlas fields (and `extra` ones)."""
        return json.dumps(
            {
                "name": service,
                "id": f"{host}:{port}",
                "address": host,
                "port": port,
                "sslPort": None,
                "payload": None,
                "registrationTimeUTC": 1700000000000,
                "serviceType": "STATIC",
                "uriSpec": None,
                "enabled": enabled,
                "host": host,
                "weight": weight,
                "labels": {},
                "haproxy_server_options": "" if enabled else "disabled",
                "zone": "z1",
                "version": 1,
                "updated_at": "2024-01-01T00:00:00Z",
                **extra,
            }
        ).encode()

    def instance(
        self, service: str, port: int, enabled: bool = True, weight: int = 100, **extra: Any
    ) -> None:
        """Create or replace an instance node (`extra`: Atlas fields such as `drain`)."""
        path = f"{self.root}/{service}/127.0.0.1:{port}"
        data = self.instance_data(service, port, enabled, weight, **extra)
        if self.zk.exists(path):
            self.zk.set(path, data)
        else:
            self.zk.create(path, data)

    def remove_instance(self, service: str, port: int) -> None:
        """Delete an instance node."""
        self.zk.delete(f"{self.root}/{service}/127.0.0.1:{port}")

    def wipe(self) -> None:
        """Delete the whole realm subtree."""
        self.zk.delete(f"/atlas/{self.realm}", recursive=True)

    def close(self) -> None:
        """Disconnect."""
        self.zk.stop()
        self.zk.close()


def _commit(tx: Any) -> None:
    results = tx.commit()
    failed = [r for r in results if isinstance(r, Exception)]
    assert not failed, failed


@pytest.fixture
def registry(zk_hosts: str, realm: str) -> Iterator[Registry]:
    """A znode writer in this test's chroot and realm."""
    reg = Registry(zk_hosts, realm)
    yield reg
    reg.close()


class Running:
    """A Sidecar with its real HAProxy, run in a background thread."""

    def __init__(
        self,
        zk_hosts: str,
        realm: str,
        state: Path,
        render_fn: Callable[[Snapshot, RenderOptions], str] = render,
        empty_grace_s: float = 60.0,
        spares: int = 4,
        host_id: str | None = None,
        binary: str = HAPROXY,
        check_timeout_s: float = 30.0,
        port: int | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.port = port or free_port()
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.realm = realm
        self.options = RenderOptions(
            port=self.port,
            admin_socket=str(state / "admin.sock"),
            realm=realm,
            map_file=str(state / "services.map"),
            check_map_file=str(state / "checks.map"),
            server_state_file=str(state / "server-state"),
            spares=spares,
        )
        self.proxy = HAProxy(
            state / "haproxy.cfg",
            state / "master.sock",
            state / "admin.sock",
            binary=binary,
            log_path=state / "haproxy.log",
            pid_file=state / "haproxy.pid",
            check_timeout_s=check_timeout_s,
        )
        loop_settings = LoopSettings(
            debounce_s=0.02,
            debounce_max_s=0.2,
            reload_min_interval_s=0.2,
            reload_jitter_s=0.05,
            empty_grace_s=empty_grace_s,
            initial_sync_timeout_s=10.0,
            tick_s=0.2,
            status_file=state / "status.json",
            applied_file=state / "applied.json",
            file_sync_delay_s=0.1,
            check_timeout_s=check_timeout_s,
            publish_interval_s=0.1,
            backoff_initial_s=0.1,
            backoff_max_s=1.0,
            **(settings or {}),
        )
        self.source = ZooKeeperSource(zk_hosts, realm, rebuild_after_s=5.0, host_id=host_id)
        self.sidecar = Sidecar(
            self.source,
            self.proxy,
            self.options,
            loop_settings,
            render_fn=render_fn,
            host_id=host_id,
        )
        self.error: BaseException | None = None
        self.sidecar.boot()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sidecar.run()
        except BaseException as exc:
            self.error = exc
            logging.getLogger(__name__).exception("sidecar loop died")

    def stop(self, stop_haproxy: bool = True) -> None:
        """Stop the loop and the watcher, and HAProxy unless told to leave it running."""
        if not self.thread.is_alive() and self.error is None and getattr(self, "_stopped", False):
            return
        self._stopped = True
        self.sidecar.request_stop()
        self.thread.join(timeout=10)
        self.sidecar.shutdown(stop_haproxy=stop_haproxy)
        assert self.error is None, self.error

    @property
    def status(self) -> dict[str, Any]:
        """The sidecar's status dict."""
        return self.sidecar.status_dict()

    def show_proc(self) -> tuple[int | None, int, list[int]]:
        """(master reloads, failed reloads, worker pids) from HAProxy's master socket."""
        return parse_show_proc(self.proxy.master("show proc"))

    def request(
        self, service: str | None, conn: http.client.HTTPConnection | None = None
    ) -> tuple[int, str]:
        """One GET through HAProxy (a new connection unless one is given)."""
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Atlas-Service": service} if service is not None else {}
            c.request("GET", "/", headers=headers)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            if conn is None:
                c.close()

    def bodies(self, service: str, n: int) -> list[str]:
        """Bodies of n requests (errors as 'ERR <status>')."""
        out = []
        for _ in range(n):
            status, body = self.request(service)
            out.append(body if status == 200 else f"ERR {status}")
        return out

    def config(self) -> str:
        """The config file as written now."""
        return (self.state / "haproxy.cfg").read_text()

    def settled(self) -> bool:
        """True when HAProxy runs exactly what the sidecar last saw."""
        st = self.status
        return bool(st["in_sync"]) and not st["stale"]


class Load:
    """Clients hammering services through HAProxy until stopped; failures recorded."""

    def __init__(self, port: int, services: list[str], keepalive: bool) -> None:
        self.port = port
        self.services = services
        self.keepalive = keepalive
        self.ok = 0
        self.last_body = b""
        self.failures: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _once(self, conn: http.client.HTTPConnection, service: str) -> int:
        conn.request("GET", "/", headers={"Atlas-Service": service})
        r = conn.getresponse()
        self.last_body = r.read()
        return r.status

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        i = 0
        while not self._stop.is_set():
            service = self.services[i % len(self.services)]
            i += 1
            try:
                if conn is None or not self.keepalive:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    status = self._once(conn, service)
                except (http.client.HTTPException, OSError):
                    # An idle keep-alive connection closed by an old worker: one retry, fresh.
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    status = self._once(conn, service)
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{service}: HTTP {status} {self.last_body!r}")
            except (http.client.HTTPException, OSError) as exc:
                self.failures.append(f"{service}: {exc!r}")
                conn = None
            finally:
                if conn is not None and not self.keepalive:
                    conn.close()
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        """Stop and join."""
        self._stop.set()
        self.thread.join(timeout=20)


class SidecarProcess:
    """`python -m atlas.sidecar.cli` on a state directory, as an operator runs it."""

    def __init__(
        self, zk_hosts: str, realm: str, state: Path, port: int, log: Path, *extra: str
    ) -> None:
        self.state, self.port, self.realm = state, port, realm
        self.status_port = free_port()
        argv = [
            sys.executable, "-m", "atlas.sidecar.cli", "--zk", zk_hosts, "--realm", realm,
            "--port", str(port), "--status-port", str(self.status_port),
            "--state-dir", str(state), "--reload-min-interval", "0.2", "--reload-jitter", "0.05",
            "--debounce-ms", "20", "--file-sync-delay", "0.1", "--publish-interval", "0.1",
            "--lock-timeout", "20", *extra,
        ]  # fmt: skip
        self.proc = ManagedProcess("sidecar", argv, log)
        self.log = log

    def start(self) -> SidecarProcess:
        """Start it and wait for its status endpoint."""
        self.proc.start()
        wait_for_port(self.status_port, timeout=40, proc=self.proc.proc)
        return self

    def status(self) -> dict[str, Any]:
        """GET /status."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=5) as r:
            return dict(json.loads(r.read()))

    def metrics(self) -> str:
        """GET /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def terminate(self) -> None:
        """SIGTERM (an orderly exit: HAProxy is left serving)."""
        self.proc.stop()

    def crash(self) -> None:
        """kill -9 the sidecar (not HAProxy: it runs in its own session)."""
        self.proc.kill()

    def explicit_stop(self) -> str:
        """`atlas-sidecar --stop` on its state directory."""
        res = subprocess.run(
            [sys.executable, "-m", "atlas.sidecar.cli", "--state-dir", str(self.state), "--stop"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def log_text(self) -> str:
        """Its log."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def sidecar_process(zk_hosts: str, realm: str) -> Iterator[Callable[..., SidecarProcess]]:
    """Factory of sidecar processes; every HAProxy they left is stopped at teardown."""
    made: list[SidecarProcess] = []
    base = Path(tempfile.mkdtemp(prefix="asp-", dir="/tmp"))

    def make(*extra: str, state: Path | None = None, port: int | None = None) -> SidecarProcess:
        p = SidecarProcess(
            zk_hosts, realm, state or base / "s", port or free_port(),
            base / f"sidecar-{len(made)}.log", *extra,
        )  # fmt: skip
        made.append(p)
        return p

    yield make
    for p in made:
        p.proc.stop()
    for state in {p.state for p in made}:
        subprocess.run(
            [sys.executable, "-m", "atlas.sidecar.cli", "--state-dir", str(state), "--stop"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    shutil.rmtree(base, ignore_errors=True)


def server_states(admin_socket: Path, backend: str | None = None) -> dict[str, ServerState]:
    """The live servers of HAProxy by `backend/server`."""
    text = socket_command(admin_socket, "show servers state" + (f" {backend}" if backend else ""))
    return {f"{s.backend}/{s.server}": s for s in parse_servers_state(text)}


@pytest.fixture
def start_sidecar(zk_hosts: str, realm: str) -> Iterator[Callable[..., Running]]:
    """Factory: start a sidecar on this test's chroot/realm; stopped at teardown."""
    started: list[Running] = []
    # UNIX socket paths are limited to 108 bytes: keep the state dir short.
    base = Path(tempfile.mkdtemp(prefix="asc-", dir="/tmp"))

    def start(**kwargs: Any) -> Running:
        hosts = kwargs.pop("zk_hosts", zk_hosts)
        state = kwargs.pop("state", base / str(len(started)))
        r = Running(hosts, realm, state, **kwargs)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
    shutil.rmtree(base, ignore_errors=True)
