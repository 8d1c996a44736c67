"""The whole system on real parts: API (gunicorn) → DynamoDB (moto) → ZooKeeper → atlas-sidecar
→ HAProxy → backends, driven by the smart client with `service://` URLs.

Guarantees under test: a disable made through the API stops traffic to that instance with no
HAProxy reload and no failed request for the caller; a new service made through the API is
reachable by name (the reload path) without failing calls to existing services.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from atlas.client import Session
from atlas.stack import ManagedProcess, ZooKeeperServer, free_port, wait_for_port
from atlas.stack.echo import make_handler
from tests.helpers import ApiClient, wait_until
from tests.integration.conftest import StartAtlas


@pytest.fixture
def echo_backends() -> Iterator[list[int]]:
    """Three echo backends on loopback, answering their names."""
    servers = []
    for i in range(3):
        s = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(f"b{i}"))
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
    yield [int(s.server_address[1]) for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


def sidecar_process(zk: str, realm: str, tmp_path: Path) -> tuple[ManagedProcess, int, int]:
    """An `atlas-sidecar` (not started) with a backend per service (`--spares 0`, the reload
    path), fast reloads, and HAProxy stopped with it: (process, port, status port)."""
    port, status_port = free_port(), free_port()
    sidecar = ManagedProcess(
        "sidecar",
        [sys.executable, "-m", "atlas.sidecar.cli", "--zk", zk, "--realm", realm,
         "--port", str(port), "--status-port", str(status_port),
         "--state-dir", str(tmp_path / "sc"), "--reload-min-interval", "0.2",
         "--reload-jitter", "0.1", "--spares", "0", "--stop-haproxy-on-exit"],
        tmp_path / "sidecar.log",
    )  # fmt: skip
    return sidecar, port, status_port


def test_api_to_haproxy_through_the_smart_client(
    zk_server: ZooKeeperServer,
    start_atlas: StartAtlas,
    realm: str,
    echo_backends: list[int],
    tmp_path: Path,
) -> None:
    atlas = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address)
    api = ApiClient(atlas.url)
    b0, b1, b2 = echo_backends
    api.post("/v1/services", json={"name": "identity"})
    for port in (b0, b1):
        assert api.put(f"/v1/services/identity/instances/127.0.0.1:{port}", json={}).ok

    sidecar, port, status_port = sidecar_process(zk_server.address, realm, tmp_path)
    sidecar.start()
    try:
        wait_for_port(port, timeout=30, proc=sidecar.proc)
        wait_for_port(status_port, timeout=30, proc=sidecar.proc)

        def status() -> dict:
            return requests.get(f"http://127.0.0.1:{status_port}/status", timeout=5).json()

        client = Session(sidecar_url=f"http://127.0.0.1:{port}")

        def backends_hit(n: int = 20) -> set[str]:
            return {client.get("service://identity/teams").json()["backend"] for _ in range(n)}

        wait_until(lambda: backends_hit() == {"b0", "b1"}, what="both instances serve")
        first = client.get("service://identity/teams?x=1")
        assert first.json()["path"] == "/teams?x=1"
        assert first.json()["service"] == "identity"
        assert first.json()["request_id"]  # the client sends a request id

        # Keep calling while the instance is disabled through the API.
        failures: list[str] = []
        stop = threading.Event()

        def caller() -> None:
            s = Session(sidecar_url=f"http://127.0.0.1:{port}")
            while not stop.is_set():
                try:
                    r = s.get("service://identity/")
                    if r.status_code != 200:
                        failures.append(str(r.status_code))
                except requests.RequestException as exc:
                    failures.append(repr(exc))

        t = threading.Thread(target=caller)
        t.start()
        reloads_before = status()["reloads"]
        assert api.patch(f"/v1/services/identity/instances/127.0.0.1:{b0}",
                         json={"enabled": False}).ok  # fmt: skip
        wait_until(lambda: backends_hit() == {"b1"}, what="traffic leaves the disabled instance")
        assert status()["reloads"] == reloads_before  # runtime API, no reload

        # A brand-new service: needs a reload, and existing traffic must not fail.
        api.post("/v1/services", json={"name": "teams"})
        api.put(f"/v1/services/teams/instances/127.0.0.1:{b2}", json={})
        wait_until(
            lambda: client.get("service://teams/").json()["backend"] == "b2",
            what="new service routable",
        )
        stop.set()
        t.join(timeout=30)
        assert failures == []
        assert status()["reloads"] > reloads_before
        assert status()["stale"] is False

        # Detaching a service's last instance is not a blip: it applies at once, not after the
        # sidecar's 60 s last-known-good grace.
        api.delete(f"/v1/services/teams/instances/127.0.0.1:{b2}")
        wait_until(
            lambda: client.get("service://teams/", retries=False).status_code == 503,
            timeout=20,
            what="empty backend answers 503",
        )
        wait_until(lambda: status()["stale"] is False, what="nothing held back")
    finally:
        sidecar.stop()
        log = (tmp_path / "sidecar.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
