"""Test and benchmark helpers: scripted HTTP backends and an HAProxy that routes as the sidecar.

``StaticHAProxy`` writes the config the sidecar itself renders
(``atlas.sidecar.render``) for a fixed set of services and runs Debian's
HAProxy in master-worker mode, so tests and ``bench/client.py`` exercise the
sidecar's routing without ZooKeeper.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from atlas.client.adapters import DEFAULT_SERVICE_HEADER
from atlas.sidecar.haproxy import master_command
from atlas.sidecar.model import Instance, Service, Snapshot
from atlas.sidecar.render import RenderOptions, render
from atlas.stack.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port

HAPROXY = "/usr/sbin/haproxy"


@dataclass
class Hit:
    """One request a Backend received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Behaviour:
    """What a Backend does with a request.

    ``mode`` is ``"ok"`` (200 + JSON echo), ``"status"`` (answer ``status``,
    with ``Retry-After`` if set) or ``"reset"`` (read the request, then reset
    the connection). ``fail_first`` > 0 limits the failure to the first N
    requests, after which the backend answers ``"ok"``. With a ``barrier``, every
    request waits on it first (500 if it breaks): proof that calls overlapped.
    """

    mode: str = "ok"
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    fail_first: int = 0
    barrier: threading.Barrier | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True
    backend: Backend

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore peers that hang up (HAProxy closing idle server connections, resets)."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus
    # delayed ACKs add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet (tests and benchmarks read results, not access logs)."""

    def _handle(self) -> None:
        backend = self.server.backend
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        # Lower-cased names: HAProxy 2.x forwards header names in lower case anyway.
        headers = {k.lower(): v for k, v in self.headers.items()}
        hit = Hit(self.command, self.path, headers, body)
        mode = backend.record(hit)
        if backend.behaviour.delay:
            time.sleep(backend.behaviour.delay)
        if backend.behaviour.barrier is not None:
            try:
                backend.behaviour.barrier.wait(timeout=20)
            except threading.BrokenBarrierError:
                self._reply(500, b'{"error": "barrier broken"}')
                return
        if mode == "reset":
            # SO_LINGER 0 + close sends an RST instead of a FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if mode == "status":
            payload = json.dumps({"instance": backend.name, "status": backend.behaviour.status})
            self._reply(backend.behaviour.status, payload.encode(), backend.behaviour.retry_after)
            return
        echo = {
            "instance": backend.name,
            "method": self.command,
            "path": self.path,
            "headers": hit.headers,
            "body": body.decode("utf-8", "replace"),
        }
        self._reply(200, json.dumps(echo).encode())

    def _reply(self, status: int, payload: bytes, retry_after: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


@dataclass
class Backend:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the kernel) with a Behaviour."""

    name: str
    behaviour: Behaviour = field(default_factory=Behaviour)
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = _Server((LOOPBACK, 0), _Handler)
        self._server.backend = self
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the backend listens on."""
        return LOOPBACK, int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """http://127.0.0.1:port."""
        return f"http://{LOOPBACK}:{self.address[1]}"

    def record(self, hit: Hit) -> str:
        """Store a hit and return the mode to apply to it."""
        with self._lock:
            self.hits.append(hit)
            count = len(self.hits)
        if self.behaviour.fail_first and count > self.behaviour.fail_first:
            return "ok"
        return self.behaviour.mode

    def start(self) -> Backend:
        """Serve in a daemon thread; return self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()


def render_config(
    port: int,
    services: Mapping[str, Sequence[tuple[str, int]]],
    header: str = DEFAULT_SERVICE_HEADER,
    admin_socket: str = "/dev/null",
) -> str:
    """The sidecar's own config (atlas.sidecar.render) for a fixed set of services."""
    snapshot = Snapshot(
        tuple(
            Service(name).with_instances(tuple(Instance(host, p) for host, p in instances))
            for name, instances in services.items()
        )
    )
    options = RenderOptions(
        port=port, bind_address=LOOPBACK, header=header, admin_socket=admin_socket, realm="test"
    )
    return render(snapshot, options)


class StaticHAProxy:
    """HAProxy 2.6 in master-worker mode with a static header-routing config."""

    def __init__(
        self,
        base_dir: Path,
        services: Mapping[str, Sequence[tuple[str, int]]],
        *,
        header: str = DEFAULT_SERVICE_HEADER,
        port: int | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.header = header
        self.services = dict(services)
        self.config_path = self.base_dir / "haproxy.cfg"
        self.master_socket = self.base_dir / "master.sock"
        self.process = ManagedProcess(
            "haproxy",
            [
                HAPROXY,
                "-W",
                "-db",
                "-S",
                f"{self.master_socket},mode,600",
                "-f",
                str(self.config_path),
            ],
            self.base_dir / "haproxy.log",
        )

    @property
    def url(self) -> str:
        """The sidecar URL to give the client (ATLAS_SIDECAR_URL)."""
        return f"http://{LOOPBACK}:{self.port}"

    def write_config(self) -> None:
        """Render and validate the config (raises RuntimeError if HAProxy rejects it)."""
        self.config_path.write_text(
            render_config(self.port, self.services, self.header, str(self.base_dir / "admin.sock"))
        )
        check = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c failed: {check.stdout}{check.stderr}")

    def start(self, timeout: float = 10.0) -> StaticHAProxy:
        """Start HAProxy and wait for the frontend port; return self."""
        self.write_config()
        self.process.start()
        try:
            wait_for_port(self.port, timeout=timeout, proc=self.process.proc)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{exc}\n{self.process.log_tail()}") from exc
        return self

    def master(self, command: str, timeout: float = 5.0) -> str:
        """Send one command to the master CLI and return its answer (the sidecar's client:
        retried while the master re-executes itself around a reload)."""
        return master_command(self.master_socket, command, timeout)

    def reload(self, services: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> None:
        """Hitless reload through the master socket, optionally with new services."""
        if services is not None:
            self.services = dict(services)
        self.write_config()
        before = self.reloads()
        self.master("reload")
        # The master re-executes itself; wait until it counts the reload, so a
        # command sent in the next breath is not lost to the old process.
        deadline = time.monotonic() + 10
        while self.reloads() <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy did not reload:\n{self.process.log_tail()}")
            time.sleep(0.005)

    def reloads(self, timeout: float = 10.0) -> int:
        """How many reloads the master has done (from ``show proc``)."""
        deadline = time.monotonic() + timeout
        while True:
            # While the master re-executes, its CLI may accept and drop a connection.
            for line in self.master("show proc").splitlines():
                fields = line.split()
                if len(fields) > 2 and fields[1] == "master":
                    return int(fields[2])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer to 'show proc':\n{self.process.log_tail()}")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop the master and its workers."""
        self.process.stop()
