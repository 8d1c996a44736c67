"""`atlas new-service greeter` for real: its venv, its own tests, gunicorn, self-registration in
Atlas (realm local), a secret read from Atlas, the sidecar's HAProxy routing to it, /healthcheck
following Redis, and SIGTERM draining it out of HAProxy with no failed request.

Real servers: moto (DynamoDB + KMS), ZooKeeper, Atlas under gunicorn, the sidecar with HAProxy,
Redis and PostgreSQL. The venv is made once for the module (the slow part).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from kazoo.client import KazooClient

from atlas.client import Session
from atlas.service.redact import MASK
from atlas.stack import AtlasServer, ManagedProcess, MotoServer, ZooKeeperServer, free_port
from atlas.stack.procs import wait_for_port
from tests.helpers import ADMIN_TOKEN, ApiClient, wait_until
from tests.integration.conftest import atlas_env, migrate
from tests.service.conftest import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

ATLAS_BIN = Path(sys.executable).parent / "atlas"
DB_PASSWORD = f"db-pw-{uuid.uuid4().hex[:12]}"
UNDECLARED_SECRET = f"partner-{uuid.uuid4().hex[:12]}"


@dataclass
class Stack:
    atlas: AtlasServer
    api: ApiClient
    sidecar_port: int
    status_port: int


@pytest.fixture(scope="module")
def stack(
    moto_server: MotoServer, zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Atlas in realm `local` (auth on), its mirror in a ZooKeeper chroot, and a sidecar."""
    base = tmp_path_factory.mktemp("stack")
    chroot = f"/svc-{uuid.uuid4().hex[:8]}"
    zk = KazooClient(hosts=zk_server.address)
    zk.start(timeout=15)
    zk.ensure_path(chroot)
    zk.stop()
    zk.close()
    hosts = zk_server.address + chroot
    env = atlas_env(moto_server, "local", ATLAS_ZK_HOSTS=hosts,
                    ATLAS_TABLE_PREFIX=f"atlas-local-{uuid.uuid4().hex[:6]}-")  # fmt: skip
    migrate(env)
    atlas = AtlasServer(base / "atlas", env, workers=2)
    atlas.start()
    port, status_port = free_port(), free_port()
    sidecar = ManagedProcess(
        "sidecar",
        [sys.executable, "-m", "atlas.sidecar.cli", "--zk", hosts, "--realm", "local",
         "--port", str(port), "--status-port", str(status_port),
         "--state-dir", str(Path(f"/tmp/asv-{uuid.uuid4().hex[:8]}")),
         "--reload-min-interval", "0.2", "--reload-jitter", "0.1", "--stop-haproxy-on-exit"],
        base / "sidecar.log",
    )  # fmt: skip
    sidecar.start()
    try:
        wait_for_port(port, timeout=30, proc=sidecar.proc)
        yield Stack(atlas, ApiClient(atlas.url), port, status_port)
    finally:
        sidecar.stop()
        atlas.stop()


@dataclass
class Project:
    path: Path
    output: str
    seconds: float


@pytest.fixture(scope="module")
def greeter(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """`atlas new-service greeter` in a fresh directory, registering in the stack's Atlas."""
    where = tmp_path_factory.mktemp("newsvc")
    env = {**os.environ, "ATLAS_URL": stack.atlas.url, "ATLAS_TOKEN": ADMIN_TOKEN}
    t0 = time.perf_counter()
    proc = subprocess.run([str(ATLAS_BIN), "new-service", "greeter"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Project(where / "greeter", proc.stdout + proc.stderr, seconds)


def test_new_service_registers_and_its_own_tests_pass_in_its_own_venv(
    greeter: Project, stack: Stack, tmp_path: Path
) -> None:
    print(f"atlas new-service greeter took {greeter.seconds:.1f}s")
    assert "registered service 'greeter' in Atlas" in greeter.output
    svc = stack.api.get("/v1/services/greeter")
    assert svc.status_code == 200 and svc.json()["health_check"]["path"] == "/healthcheck"

    test = subprocess.run(["make", "test"], cwd=greeter.path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr
    assert "3 passed" in test.stdout
    assert "pip install" not in test.stdout  # the venv was complete: nothing installed again
    venv_python = greeter.path / ".venv" / "bin" / "python"
    has_pynamodb = subprocess.run([str(venv_python), "-c", "import pynamodb"], capture_output=True)
    assert has_pynamodb.returncode != 0  # the client side only

    again = subprocess.run(
        [str(ATLAS_BIN), "new-service", "greeter", "--dir", str(tmp_path / "g2"), "--no-venv"],
        env={**os.environ, "ATLAS_URL": stack.atlas.url, "ATLAS_TOKEN": ADMIN_TOKEN},
        capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 0 and "was already registered" in again.stdout


class Service:
    """One greeter process under gunicorn (its master's pid from gunicorn's pid file)."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.pidfile = log.with_suffix(".pid")
        env = {**env, "GUNICORN_CMD_ARGS": f"--pid {self.pidfile}"}
        self.port = int(env["PORT"])
        self.process = ManagedProcess(name, argv, log, env=env, cwd=cwd)
        self.log = log

    def start(self) -> None:
        self.process.start()
        wait_for_port(self.port, timeout=60, proc=self.process.proc)

    @property
    def master(self) -> int:
        return int(self.pidfile.read_text())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def messages(self) -> list[str]:
        return [r["message"] for r in self.lines()]

    def stop(self) -> None:
        if self.process.running() and self.pidfile.exists():
            os.kill(self.master, signal.SIGINT)  # detach at once, no drain
        self.process.stop(timeout=30)


def test_greeter_runs_registered_configured_routed_and_drains(
    greeter: Project, stack: Stack, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    api = stack.api
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    postgres_server.create_user("greeter", DB_PASSWORD)
    db_url = postgres_server.url("greeter", DB_PASSWORD, "greeter")
    cfg = "/v1/services/greeter/config"
    for key, body in {
        "GREETING": {"value": "hello from atlas"},
        "REDIS_URL": {"value": redis.url},
        "DATABASE_URL": {"value": db_url, "secret": True},
        "PARTNER_SIGNING": {"value": UNDECLARED_SECRET, "secret": True},
        "HEALTHCHECK_SUCCESS_TTL_S": {"value": 0},
        "HEALTHCHECK_FAILED_TTL_S": {"value": 0},
    }.items():
        assert api.put(f"{cfg}/{key}", json=body).ok
    token = api.post("/v1/services/greeter/tokens").json()["token"]

    env = {**os.environ, "ATLAS_URL": stack.atlas.url, "ATLAS_TOKEN": token,
           "ATLAS_REGISTER_TOKEN": ADMIN_TOKEN, "ATLAS_DRAIN_S": "3"}  # fmt: skip
    env.pop("ATLAS_OFFLINE", None)
    pa, pb = free_port(), free_port()
    a = Service("greeter-a", ["make", "run", f"PORT={pa}"], greeter.path, {**env, "PORT": str(pa)},
                tmp_path / "a.log")  # fmt: skip
    b = Service("greeter-b", [str(greeter.path / ".venv/bin/atlas-service"),
                              "greeter.app:create_app()", "--bind", f"127.0.0.1:{pb}"],
                greeter.path, {**env, "PORT": str(pb)}, tmp_path / "b.log")  # fmt: skip
    try:
        a.start()
        b.start()

        def instances() -> dict[str, bool]:
            items = api.get("/v1/services/greeter/instances").json()["items"]
            return {f"{i['host']}:{i['port']}": i["enabled"] for i in items}

        both = {f"127.0.0.1:{pa}": True, f"127.0.0.1:{pb}": True}
        wait_until(lambda: instances() == both, timeout=60, what="both attached themselves")

        # Another process reaches it by name through the sidecar, with atlas.client.get.
        code = "import json, atlas.client as c; r = c.get('service://greeter/hello'); print(json.dumps([r.status_code, r.json()]))"
        sidecar_env = {**os.environ, "ATLAS_SIDECAR_URL": f"http://127.0.0.1:{stack.sidecar_port}"}

        def through_sidecar() -> Any:
            out = subprocess.run([sys.executable, "-c", code], env=sidecar_env,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            return json.loads(out.stdout) if out.returncode == 0 else None

        answer = wait_until(lambda: (r := through_sidecar()) and r[0] == 200 and r, timeout=60,
                            what="service://greeter/hello through the sidecar")  # fmt: skip
        assert answer[1] == {"service": "greeter", "greeting": "hello from atlas", "realm": "local"}

        # The secret DATABASE_URL from Atlas works (PostgreSQL checks the password) ...
        health = requests.get(a.url("/healthcheck"), timeout=10)
        assert health.status_code == 200, health.text
        assert {r["checker"]: r["passed"] for r in health.json()["results"]} == {
            "redis": True, "database": True}  # fmt: skip
        # ... and never shows, nor the undeclared secret, nor the service token.
        dump = requests.get(a.url("/environment"), timeout=10)
        assert dump.status_code == 200
        for secret in (DB_PASSWORD, UNDECLARED_SECRET, token, ADMIN_TOKEN):
            assert secret not in dump.text
        config = dump.json()["config"]
        assert config["PARTNER_SIGNING"] == MASK and config["GREETING"] == "hello from atlas"
        assert config["DATABASE_URL"] == db_url.replace(DB_PASSWORD, MASK)
        assert dump.json()["atlas"]["config_source"] == "atlas"

        # SIGTERM drains A out of HAProxy while a client keeps calling: no failed request.
        client = Session(sidecar_url=f"http://127.0.0.1:{stack.sidecar_port}")
        failures: list[str] = []
        done = threading.Event()
        calls = [0]

        def caller() -> None:
            while not done.is_set():
                try:
                    r = client.get("service://greeter/hello")
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:100]}")
                except requests.RequestException as exc:
                    failures.append(repr(exc))
                calls[0] += 1

        thread = threading.Thread(target=caller)
        thread.start()
        wait_until(lambda: calls[0] > 50, what="traffic flowing")
        served_before = sum(1 for m in a.messages() if m == "GET /hello 200")
        os.kill(a.master, signal.SIGTERM)
        wait_until(lambda: instances() == {f"127.0.0.1:{pb}": True}, timeout=60,
                   what="A detached itself")  # fmt: skip
        assert a.process.proc is not None
        a.process.proc.wait(timeout=60)
        at_stop = calls[0]
        wait_until(lambda: calls[0] > at_stop + 50, what="traffic after A stopped")
        done.set()
        thread.join(timeout=30)
        assert failures == []
        assert served_before > 0  # A did take traffic before it drained

        msgs = a.messages()
        steps = ("attached", "disabled", "draining for 3.0s", "detached", "Shutting down")
        order = [next((i for i, m in enumerate(msgs) if m.startswith(p)), -1) for p in steps]
        assert -1 not in order and order == sorted(order), [m for m in msgs if "GET" not in m]
        access = [r for r in b.lines() if r["logger"] == "atlas.service.access"]
        assert access and all(r["service"] == "greeter" and r["realm"] == "local"
                              and r["request_id"] for r in access)  # fmt: skip

        # /healthcheck follows the configured Redis.
        redis.stop()
        failing = wait_until(
            lambda: (r := requests.get(b.url("/healthcheck"), timeout=10)).status_code == 500
            and r.json(),
            timeout=30, what="/healthcheck failing once Redis is stopped",
        )  # fmt: skip
        results = {r["checker"]: r["passed"] for r in failing["results"]}
        assert results == {"redis": False, "database": True}
    finally:
        a.stop()
        b.stop()
        redis.stop()
    # The only tracebacks: B's failing Redis check, logged by the health-check library.
    assert "Traceback" not in a.log.read_text(errors="replace"), a.log.read_text()[-3000:]
