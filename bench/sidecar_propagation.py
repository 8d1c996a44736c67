"""Propagation latency: znode `set` → HAProxy acts, against raw kazoo `set` → watch fired.

Starts its own ZooKeeper, HAProxy (through the sidecar, in-process) and two HTTP backends.
Measures, p50/p99:
  raw:          kazoo `set` → a DataWatch on another client fires
  disable:      `set` enabled=false → HAProxy has the server in maintenance (runtime API)
  new instance: `create` an instance of an existing service → HAProxy has it ready (runtime)
  new service:  `create` service + instance → a request with its header answers 200 (reload)
  API disable:  start of `PATCH /v1/services/{s}/instances/{id}` {"enabled": false} through a
                real Atlas (gunicorn, moto server, same ZooKeeper) → HAProxy has it in maintenance
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kazoo.client import KazooClient

from atlas.sidecar.core import LoopSettings, Sidecar
from atlas.sidecar.haproxy import HAProxy
from atlas.sidecar.render import RenderOptions
from atlas.sidecar.watch import ZooKeeperSource
from atlas.stack import ZooKeeperServer, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import ADMIN, start_atlas, start_moto

REALM = "bench"
ROOT = f"/atlas/{REALM}/services"


class _H(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def backend() -> int:
    s = ThreadingHTTPServer(("127.0.0.1", 0), _H)
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return int(s.server_address[1])


def inst(port: int, enabled: bool = True) -> bytes:
    return json.dumps(
        {
            "name": "p",
            "id": f"127.0.0.1:{port}",
            "address": "127.0.0.1",
            "port": port,
            "enabled": enabled,
            "host": "127.0.0.1",
            "weight": 100,
            "haproxy_server_options": "" if enabled else "disabled",
        }
    ).encode()


def wait(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError
        time.sleep(0.0002)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--services", type=int, default=10, help="new-service samples (reloads)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="asb-", dir="/tmp"))
    zk = ZooKeeperServer(tmp / "zk")
    zk.start()
    writer = KazooClient(zk.address)
    writer.start()
    watcher = KazooClient(zk.address)
    watcher.start()
    a, b = backend(), backend()
    writer.ensure_path(f"{ROOT}/p")
    writer.create(f"{ROOT}/p/127.0.0.1:{a}", inst(a))
    writer.create(f"{ROOT}/p/127.0.0.1:{b}", inst(b))
    port = free_port()
    opts = RenderOptions(
        port=port,
        admin_socket=str(tmp / "admin.sock"),
        realm=REALM,
        map_file=str(tmp / "services.map"),
        check_map_file=str(tmp / "checks.map"),
        server_state_file=str(tmp / "server-state"),
        spares=args.services + 8,
    )
    proxy = HAProxy(
        tmp / "haproxy.cfg", tmp / "master.sock", tmp / "admin.sock", log_path=tmp / "haproxy.log"
    )
    settings = LoopSettings()  # defaults: debounce 50 ms (max 500), reloads ≥ 1 s + ≤ 0.5 s jitter
    sc = Sidecar(ZooKeeperSource(zk.address, REALM), proxy, opts, settings)
    sc.boot()
    loop = threading.Thread(target=sc.run, daemon=True)
    loop.start()
    try:
        # raw kazoo: set → watch fired on another client
        raw: list[float] = []
        path = f"{ROOT}/p/127.0.0.1:{a}"
        for i in range(args.n):
            fired = threading.Event()
            watcher.get(path, watch=lambda e, fired=fired: fired.set())
            t0 = time.perf_counter()
            writer.set(path, inst(a, enabled=i % 2 == 0))
            fired.wait(10)
            raw.append(time.perf_counter() - t0)
        writer.set(path, inst(a))
        wait(
            lambda: (
                sc.status_dict().get("in_sync")
                and (running := sc.running) is not None
                and all(i.enabled for i in running.get("p").instances)  # type: ignore[union-attr]
            )
        )

        def state(server: str) -> str | None:
            for line in proxy.admin("show servers state p").splitlines()[2:]:
                f = line.split()
                if len(f) > 6 and f[3] == server:
                    return f[6]  # srv_admin_state: 0 ready, bit 0x1 forced maintenance
            return None

        disable: list[float] = []
        server = f"127.0.0.1:{a}"
        quiet = settings.debounce_s * 2  # isolated changes, not a burst (bursts are coalesced)
        for _ in range(args.n):
            time.sleep(quiet)
            t0 = time.perf_counter()
            writer.set(path, inst(a, enabled=False))
            wait(lambda: (state(server) or "0") not in ("0",))
            disable.append(time.perf_counter() - t0)
            writer.set(path, inst(a))
            wait(lambda: state(server) == "0")

        added: list[float] = []
        for _ in range(args.n):
            c = backend()
            time.sleep(quiet)
            t0 = time.perf_counter()
            writer.create(f"{ROOT}/p/127.0.0.1:{c}", inst(c))
            wait(lambda c=c: state(f"127.0.0.1:{c}") == "0")
            added.append(time.perf_counter() - t0)
            writer.delete(f"{ROOT}/p/127.0.0.1:{c}")
            wait(lambda c=c: state(f"127.0.0.1:{c}") is None)

        def answers(name: str) -> bool:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/", headers={"Atlas-Service": name}
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status == 200
            except urllib.error.HTTPError:
                return False

        # Through the API: register service "api-p" with both backends, then PATCH.
        moto = start_moto()
        atlas = start_atlas(moto, REALM, ATLAS_ZK_HOSTS=zk.address)
        import requests

        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {ADMIN}"
        http.post(f"{atlas.url}/v1/services", json={"name": "api-p"}, timeout=10)
        for port_ in (a, b):
            http.put(f"{atlas.url}/v1/services/api-p/instances/127.0.0.1:{port_}", json={},
                     timeout=10)  # fmt: skip
        wait(lambda: answers("api-p"))

        def api_state(server: str) -> str | None:
            # A service made at runtime lives in a spare backend until the next reload.
            backend = sc.status_dict()["pool"]["placed"].get("api-p", "api-p")
            for line in proxy.admin(f"show servers state {backend}").splitlines()[2:]:
                f = line.split()
                if len(f) > 6 and f[3] == server:
                    return f[6]
            return None

        api_disable: list[float] = []
        url = f"{atlas.url}/v1/services/api-p/instances/127.0.0.1:{a}"
        for _ in range(args.n):
            time.sleep(quiet)
            t0 = time.perf_counter()
            http.patch(url, json={"enabled": False}, timeout=10).raise_for_status()
            wait(lambda: (api_state(server) or "0") not in ("0",))
            api_disable.append(time.perf_counter() - t0)
            http.patch(url, json={"enabled": True}, timeout=10).raise_for_status()
            wait(lambda: api_state(server) == "0")

        new_service: list[float] = []
        reloads0 = sc.status.reloads
        for i in range(args.services):
            time.sleep(0.2)  # spares: no reload pacing to wait out
            t0 = time.perf_counter()
            writer.create(f"{ROOT}/n{i}", b'{"name": "n%d"}' % i)
            writer.create(f"{ROOT}/n{i}/127.0.0.1:{a}", inst(a))
            wait(lambda i=i: answers(f"n{i}"))
            new_service.append(time.perf_counter() - t0)

        p50raw = pct(raw, 50)
        print(
            f"samples: {args.n} (new service: {args.services}); reloads during the run: "
            f"{sc.status.reloads - reloads0}; runtime updates: {sc.status.runtime_updates}"
        )
        print(f"{'path':<34}{'p50 ms':>9}{'p99 ms':>9}{'p50 / raw':>11}")
        for name, xs in [
            ("raw kazoo set -> watch", raw),
            ("disable instance (runtime API)", disable),
            ("new instance (runtime API)", added),
            ("new service (spare, no reload)", new_service),
            ("API PATCH disable -> HAProxy", api_disable),
        ]:
            print(f"{name:<34}{pct(xs, 50):9.2f}{pct(xs, 99):9.2f}{pct(xs, 50) / p50raw:10.1f}x")
        print(
            f"Synapse's default 2 s reload pacing vs disable p50: "
            f"{2000 / pct(disable, 50):.0f}x faster; vs new service p50: "
            f"{2000 / pct(new_service, 50):.1f}x  (mean new service "
            f"{statistics.mean(new_service) * 1000:.0f} ms)"
        )
    finally:
        sc.request_stop()
        loop.join(10)
        sc.shutdown()
        writer.stop()
        watcher.stop()
        zk.stop()


if __name__ == "__main__":
    main()
