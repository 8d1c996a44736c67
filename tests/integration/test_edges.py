"""What the API accepts, every part honours: addresses and health checks end to end.

Real servers throughout: Atlas under gunicorn → DynamoDB (moto server) → ZooKeeper → a real
`atlas-sidecar` process and its HAProxy → backends listening on 127.0.0.1 and on ::1.

- Every address form the API accepts (IPv4; IPv6 compressed, expanded, zero-padded, with an
  embedded IPv4 tail; IPv4-mapped, dotted and hex; hostnames, any case, trailing dot) becomes an
  HAProxy server that answers, whether the sidecar boots with it, adds it at runtime or reloads
  for a new service. An instance whose hostname does not resolve stops nothing else.
- Addresses no instance can have (unspecified, broadcast, multicast, link-local, 0/8, 240/4)
  are refused with a 422 naming the field, in the instance id, in the body and in /v1/hosts.
- A health-check path is refused (422 naming `health_check.path`, nothing written) unless it
  can go on the wire as written; what is accepted is sent byte for byte by HAProxy, and a
  backend failing it goes DOWN.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from atlas.stack import ManagedProcess, ZooKeeperServer, free_port, wait_for_port
from tests.helpers import ApiClient, wait_until
from tests.integration.conftest import StartAtlas

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------ backends


class Backend:
    """An HTTP backend on 127.0.0.1 and/or ::1 (one port) that answers its name and records
    every request line; paths in `failing` answer 500 (a failing health check)."""

    def __init__(self, name: str, families: tuple[str, ...], failing: frozenset[str] = frozenset()):
        self.name = name
        self.failing = failing
        self.requests: list[tuple[str, str, str]] = []  # (method, target, version) as received
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        for _ in range(20):  # a port free on both families
            port = free_port()
            try:
                self._servers = [self._serve(f, port) for f in families]
            except OSError as exc:
                for s in self._servers:
                    s.server_close()
                self._servers = []
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            self.port = port
            break
        else:
            raise RuntimeError("no port free on every family")

    def _serve(self, family: str, port: int) -> ThreadingHTTPServer:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with backend._lock:
                    backend.requests.append((self.command, self.path, self.request_version))
                status = 500 if self.path in backend.failing else 200
                body = json.dumps({"backend": backend.name, "path": self.path}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if family == "v6" else socket.AF_INET
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # HAProxy closing idle connections is not an error

        server = Server(("::1" if family == "v6" else "127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def targets(self, method: str = "GET") -> list[str]:
        """Request targets received with this method."""
        with self._lock:
            return [t for m, t, _ in self.requests if m == method]

    def stop(self) -> None:
        """Stop serving."""
        for s in self._servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """Make backends; all are stopped at teardown."""
    made: list[Backend] = []

    def make(name: str, *families: str, failing: frozenset[str] = frozenset()) -> Backend:
        b = Backend(name, families or ("v4",), failing)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


# ------------------------------------------------------------------------------- sidecar


def _admin(sock_path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@dataclass
class Sidecar:
    """A running `atlas-sidecar` process: its HAProxy port, status and runtime API."""

    proc: ManagedProcess
    port: int
    status_port: int
    state_dir: Path

    def status(self) -> dict[str, Any]:
        """GET /status."""
        data: dict[str, Any] = requests.get(
            f"http://127.0.0.1:{self.status_port}/status", timeout=5
        ).json()
        return data

    def get(self, service: str, path: str = "/traffic") -> requests.Response:
        """One request through HAProxy, on a fresh connection."""
        return requests.get(
            f"http://127.0.0.1:{self.port}{path}",
            headers={"Atlas-Service": service, "Connection": "close"},
            timeout=10,
        )

    def answering(self, service: str, rounds: int) -> set[str]:
        """Names of the backends that answered `rounds` requests (roundrobin visits them all)."""
        names = set()
        for _ in range(rounds):
            r = self.get(service)
            if r.status_code == 200:
                names.add(r.json()["backend"])
        return names

    def servers(self, service: str) -> dict[str, dict[str, str]]:
        """HAProxy's servers of a backend: name → {addr, port, op_state} (`show servers state`)."""
        text = _admin(self.state_dir / "admin.sock", f"show servers state {service}")
        lines = text.splitlines()  # a format version, a `# field ...` header, one row per server
        header = lines[1].lstrip("# ").split() if len(lines) > 1 else []
        out = {}
        for line in lines[2:]:
            row = dict(zip(header, line.split(), strict=False))
            if "srv_name" in row:
                out[row["srv_name"]] = {
                    "addr": row["srv_addr"],
                    "port": row["srv_port"],
                    "op_state": row["srv_op_state"],
                }
        return out


@pytest.fixture
def start_sidecar(
    zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Sidecar]]:
    """Start a sidecar for a realm (short state path: it holds UNIX sockets)."""
    started: list[Sidecar] = []

    def start(realm: str) -> Sidecar:
        state = tmp_path_factory.mktemp("sc")
        port, status_port = free_port(), free_port()
        proc = ManagedProcess(
            "sidecar",
            [sys.executable, "-m", "atlas.sidecar.cli", "--zk", zk_server.address,
             "--realm", realm, "--port", str(port), "--status-port", str(status_port),
             "--state-dir", str(state), "--reload-min-interval", "0.2",
             "--reload-jitter", "0.1",
             # Every service in a backend of its own name (no spare backends), and HAProxy
             # stopped with the sidecar.
             "--spares", "0", "--stop-haproxy-on-exit"],
            state / "sidecar.log",
        )  # fmt: skip
        proc.start()
        sc = Sidecar(proc, port, status_port, state)
        started.append(sc)
        wait_for_port(port, timeout=30, proc=proc.proc)
        wait_for_port(status_port, timeout=30, proc=proc.proc)
        return sc

    yield start
    for sc in started:
        sc.proc.stop()
        log = (sc.state_dir / "sidecar.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def mirrored_api(zk_server: ZooKeeperServer, start_atlas: StartAtlas, realm: str) -> ApiClient:
    """An admin client of an Atlas (gunicorn) mirroring its realm into ZooKeeper."""
    return ApiClient(start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address).url)


# ------------------------------------------------------------------- 10.2 address forms

# (instance id as written, body sent with it, the id Atlas stores, which backend it reaches)
FORMS: list[tuple[str, dict[str, Any], str, str]] = [
    ("127.0.0.1:{p}", {}, "127.0.0.1:{p}", "v4"),
    ("[::ffff:127.0.0.1]:{p}", {}, "127.0.0.1:{p}", "v4"),
    ("[::FFFF:7F00:1]:{p}", {"host": "::ffff:7f00:1", "port": "{p}"}, "127.0.0.1:{p}", "v4"),
    ("[0:0:0:0:0:ffff:127.0.0.1]:{p}", {}, "127.0.0.1:{p}", "v4"),
    ("[::1]:{p}", {"host": "::1"}, "[::1]:{p}", "v6"),
    ("[0:0:0:0:0:0:0:1]:{p}", {"host": "[::1]"}, "[::1]:{p}", "v6"),
    ("[0000:0000:0000:0000:0000:0000:0000:0001]:{p}", {}, "[::1]:{p}", "v6"),
    ("[::0.0.0.1]:{p}", {}, "[::1]:{p}", "v6"),
    ("localhost:{p}", {"host": "localhost"}, "localhost:{p}", "dual"),
    ("LocalHost.:{p}", {}, "localhost:{p}", "dual"),
]


def _put_forms(
    api: ApiClient, service: str, ports: list[int], forms: range | None = None
) -> list[str]:
    """PUT every form (form i on backend port i; `forms` picks some); return the stored ids."""
    stored = []
    for i in forms or range(len(FORMS)):
        written, body, canonical, _ = FORMS[i]
        data = {k: int(ports[i]) if v == "{p}" else v for k, v in body.items()}
        resp = api.put(f"/v1/services/{service}/instances/{written.format(p=ports[i])}", json=data)
        assert resp.status_code == 201, (written, resp.text)
        assert resp.json()["id"] == canonical.format(p=ports[i])
        stored.append(resp.json()["id"])
    return stored


IP_FORMS = range(8)  # FORMS[8:] are hostnames


def test_every_accepted_address_form_is_routed(
    mirrored_api: ApiClient,
    start_sidecar: Callable[[str], Sidecar],
    backends: Callable[..., Backend],
    realm: str,
) -> None:
    api = mirrored_api
    reach = {"v4": ("v4",), "v6": ("v6",), "dual": ("v4", "v6")}
    pool = [backends(f"b{i}", *reach[form[3]]) for i, form in enumerate(FORMS)]
    ports = [b.port for b in pool]
    expected = {b.name for b in pool}

    def check(service: str, ids: list[str]) -> None:
        listed = api.get(f"/v1/services/{service}/instances").json()["items"]
        assert sorted(i["id"] for i in listed) == sorted(ids)
        seen: set[str] = set()
        try:
            wait_until(
                lambda: seen.update(sidecar.answering(service, 3 * len(pool))) or seen == expected,
                timeout=60,
            )
        except AssertionError:
            missing = sorted(f[0] for f, b in zip(FORMS, pool, strict=True) if b.name not in seen)
            raise AssertionError(
                f"{service}: of {len(ids)} stored instances, {len(seen)} answered;"
                f" never: {missing}; HAProxy servers: {sidecar.servers(service)}"
            ) from None
        servers = sidecar.servers(service)
        assert len(servers) == len(ids) and all(s["addr"] != "-" for s in servers.values())
        print(
            f"{service}: of {len(ids)} stored instances, {len(servers)} HAProxy servers,"
            f" {len(seen)} answered"
        )

    # Three ways into HAProxy: the config the sidecar boots with, `add server` on a running
    # backend (a hostname needs a reload there), and the config a structural change reloads.
    for name in ("boot", "runtime", "reload"):
        assert api.post("/v1/services", json={"name": name}).status_code == 201
    boot = _put_forms(api, "boot", ports)
    sidecar = start_sidecar(realm)
    wait_until(lambda: sidecar.status()["in_sync"], timeout=30, what="sidecar applied the view")
    check("boot", boot)
    # IP addresses go in through HAProxy's runtime API, with no reload; hostnames need one.
    before = sidecar.status()
    runtime = _put_forms(api, "runtime", ports, IP_FORMS)
    wait_until(
        lambda: len(sidecar.servers("runtime")) == len(IP_FORMS) and sidecar.status()["in_sync"],
        timeout=30,
        what="runtime adds applied",
    )
    after = sidecar.status()
    assert after["reloads"] == before["reloads"]
    assert after["runtime_updates"] >= before["runtime_updates"] + len(IP_FORMS)
    runtime += _put_forms(api, "runtime", ports, range(len(IP_FORMS), len(FORMS)))
    check("runtime", runtime)
    reload = _put_forms(api, "reload", ports)
    wait_until(
        lambda: len(sidecar.servers("reload")) == len(FORMS) and sidecar.status()["in_sync"],
        timeout=30,
        what="instances applied",
    )
    reloads = sidecar.status()["reloads"]
    health = {"path": "/health", "interval_s": 1, "timeout_s": 1}
    assert api.patch("/v1/services/reload", json={"health_check": health}).ok
    wait_until(lambda: sidecar.status()["reloads"] > reloads, timeout=30, what="a reload")
    check("reload", reload)
    assert sidecar.status()["check_failures"] == 0


def test_an_unresolvable_hostname_stops_nothing_else(
    mirrored_api: ApiClient,
    start_sidecar: Callable[[str], Sidecar],
    backends: Callable[..., Backend],
    realm: str,
) -> None:
    """`.invalid` never resolves (RFC 6761): that instance cannot answer, every other one must,
    and the sidecar must still apply later changes (each one rewrites and checks the config)."""
    api = mirrored_api
    up, later = backends("up"), backends("later")
    api.post("/v1/services", json={"name": "mixed"})
    assert api.put("/v1/services/mixed/instances/no-such-host.invalid:8080", json={}).ok
    assert api.put(f"/v1/services/mixed/instances/127.0.0.1:{up.port}", json={}).ok
    sidecar = start_sidecar(realm)
    wait_until(lambda: sidecar.answering("mixed", 4) == {"up"}, timeout=30, what="mixed routes")
    api.post("/v1/services", json={"name": "later"})
    api.put(f"/v1/services/later/instances/127.0.0.1:{later.port}", json={})
    wait_until(lambda: sidecar.answering("later", 2) == {"later"}, timeout=30, what="reload")
    assert api.put("/v1/services/later/instances/other.invalid:8080", json={}).ok
    wait_until(
        lambda: "other.invalid:8080" in sidecar.servers("later") and sidecar.status()["in_sync"],
        timeout=30,
        what="hostname added",
    )
    assert sidecar.answering("later", 4) == {"later"}
    assert sidecar.status()["check_failures"] == 0
    assert sorted(sidecar.servers("mixed")) == sorted(
        ["no-such-host.invalid:8080", f"127.0.0.1:{up.port}"]
    )


# ---------------------------------------------------------------- 10.9 refused addresses

UNROUTABLE = [
    "0.0.0.0", "[::]", "[0:0:0:0:0:0:0:0]", "255.255.255.255", "224.0.0.1", "239.1.2.3",
    "[ff02::1]", "[FF05::2]", "[::ffff:0.0.0.0]", "[::ffff:255.255.255.255]",
    "[::ffff:224.0.0.1]", "[::ffff:e000:1]", "[fe80::1]", "0.1.2.3", "240.0.0.1",
]  # fmt: skip


@pytest.mark.parametrize("host", UNROUTABLE)
def test_addresses_no_instance_can_have_are_refused(api: ApiClient, host: str) -> None:
    service = f"unroutable-{uuid.uuid4().hex[:8]}"
    assert api.post("/v1/services", json={"name": service}).status_code == 201
    bare = host.strip("[]")
    answers = {
        "PUT path": api.put(f"/v1/services/{service}/instances/{host}:8080", json={}),
        "PUT body": api.put(
            f"/v1/services/{service}/instances/127.0.0.1:8080", json={"host": bare}
        ),
        "GET host": api.get(f"/v1/hosts/{host}"),
        "GET bare host": api.get(f"/v1/hosts/{bare}"),
        "disable host": api.post(f"/v1/hosts/{host}/disable", json={}),
        "enable host": api.post(f"/v1/hosts/{host}/enable"),
    }
    for what, resp in answers.items():
        assert resp.status_code == 422, (what, resp.text)
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert list(resp.json()["errors"]) == ["host"], (what, resp.json())
    assert api.get(f"/v1/services/{service}/instances").json()["items"] == []


# ------------------------------------------------------------------ 10.3 health checks

REFUSED_PATHS = ["/health#frag", '/say"hi"', "/back\\slash", "/with space", "/tab\there", "/é"]
# Every character the contract allows that HAProxy's config language treats specially
# (quote, dollar, semicolon, escapes), plus a query.
SENT_PATHS = [
    "/health'z",
    "/$HOME/$PATH",
    "/a;b=c/%2F%20?q=1&r=$x",
    "/ready?probe=1&who='sidecar'",
    "/p:@!*(),+=~-._/",
]


@pytest.mark.parametrize("path", REFUSED_PATHS)
def test_unsendable_health_check_paths_are_refused(api: ApiClient, path: str) -> None:
    name = f"hc-refused-{uuid.uuid4().hex[:8]}"
    resp = api.post("/v1/services", json={"name": name, "health_check": {"path": path}})
    assert resp.status_code == 422, resp.text
    assert list(resp.json()["errors"]) == ["health_check.path"]
    assert api.get(f"/v1/services/{name}").status_code == 404  # nothing written
    created = api.post("/v1/services", json={"name": name, "health_check": {"path": "/ok"}})
    assert created.status_code == 201
    resp = api.patch(f"/v1/services/{name}", json={"health_check": {"path": path}})
    assert resp.status_code == 422 and list(resp.json()["errors"]) == ["health_check.path"]
    after = api.get(f"/v1/services/{name}").json()
    assert after["health_check"]["path"] == "/ok" and after["version"] == 1


def test_health_checks_go_on_the_wire_as_written(
    mirrored_api: ApiClient,
    start_sidecar: Callable[[str], Sidecar],
    backends: Callable[..., Backend],
    realm: str,
) -> None:
    api = mirrored_api
    healthy = backends("healthy")
    sick = backends("sick", failing=frozenset(SENT_PATHS))
    services = {}
    for i, path in enumerate(SENT_PATHS):
        name = f"hc{i}"
        resp = api.post(
            "/v1/services",
            json={"name": name, "health_check": {"path": path, "interval_s": 1, "timeout_s": 1}},
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["health_check"]["path"] == path
        for b in (healthy, sick):
            assert api.put(f"/v1/services/{name}/instances/127.0.0.1:{b.port}", json={}).ok
        services[name] = path
    sidecar = start_sidecar(realm)

    for name, path in services.items():
        # HAProxy sends exactly the stored request target to both instances...
        wait_until(
            lambda p=path: p in healthy.targets() and p in sick.targets(),
            timeout=30,
            what=f"health check {path!r} on the wire",
        )
        # ...and the instance failing it goes DOWN: no traffic, state stopped.
        wait_until(
            lambda n=name: (
                sidecar.answering(n, 6) == {"healthy"}
                and sidecar.servers(n)[f"127.0.0.1:{sick.port}"]["op_state"] == "0"
            ),
            timeout=30,
            what=f"{name}: the sick instance is down",
        )
        assert sidecar.servers(name)[f"127.0.0.1:{healthy.port}"]["op_state"] == "2"
    # An instance added at runtime (no reload) is health-checked too.
    reloads = sidecar.status()["reloads"]
    late = backends("late-sick", failing=frozenset(SENT_PATHS))
    assert api.put(f"/v1/services/hc0/instances/127.0.0.1:{late.port}", json={}).ok
    wait_until(
        lambda: (
            SENT_PATHS[0] in late.targets()
            and sidecar.servers("hc0")[f"127.0.0.1:{late.port}"]["op_state"] == "0"
        ),
        timeout=30,
        what="the runtime-added sick instance is down",
    )
    assert sidecar.status()["reloads"] == reloads
    checks = {t for t in healthy.targets() if t != "/traffic"}
    assert checks == set(SENT_PATHS), checks  # nothing else, nothing altered
    assert set(late.targets()) == {SENT_PATHS[0]}
    print(f"{len(SENT_PATHS)} health-check paths sent as written, {len(SENT_PATHS) + 1} sick DOWN")
