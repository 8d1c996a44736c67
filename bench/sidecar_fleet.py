"""Sidecar at fleet scale, ratios measured side by side in one run.

Starts its own ZooKeeper with two realms -- small (1 service x 2 instances) and large (1,000
services x 10 instances) -- and one `atlas-sidecar` process per realm, as deployed. Measures,
p50/p99:

  raw            kazoo `set` -> a DataWatch on another client fires
  disable        `set` enabled=false -> HAProxy has the server in maintenance (admin socket)
  new service    service + instance created in one transaction -> a request with its header
                 answers 200 (a spare backend and a map entry: no reload)
  report         `set` -> the sidecar's node under sidecars/ says it applied that index

and at 1,000 x 10: a burst of 1,000 disables (time until all are in maintenance, passes,
runtime commands, reloads), the sidecar's RSS and the ZooKeeper watches it holds.

With --baseline DIR (a checkout of an older Atlas, e.g. `git archive d765f8c | tar -x -C DIR`)
the same sidecar measurements run against that version's sidecar too, in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from atlas.contract import Layout, change_index, parse_sidecar_report
from atlas.sidecar.haproxy import parse_servers_state, socket_command
from atlas.stack import ManagedProcess, ZooKeeperServer, free_port, wait_for_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sidecar_propagation import backend

ROOT = Path(__file__).resolve().parent.parent


def inst(host: str, port: int, enabled: bool = True) -> bytes:
    return json.dumps(
        {
            "host": host,
            "port": port,
            "enabled": enabled,
            "weight": 100,
            "haproxy_server_options": "" if enabled else "disabled",
        }
    ).encode()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


def wait(cond, timeout: float = 60.0, step: float = 0.0002) -> None:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError
        time.sleep(step)


def zk_watches(port: int) -> int:
    """zk_watch_count from the server's `mntr`."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"mntr")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith("zk_watch_count"):
            return int(line.split()[1])
    return -1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def populate(zk: KazooClient, realm: str, services: int, instances: int) -> None:
    root = Layout(realm).services
    zk.ensure_path(root)
    pending = []
    for s in range(services):
        name = f"svc-{s:04d}"
        hc = {"path": "/health", "interval_s": 5, "timeout_s": 2} if s % 2 else None
        data = json.dumps({"name": name, "health_check": hc, "instances": instances}).encode()
        pending.append(zk.create_async(f"{root}/{name}", data))
    for p in pending:
        p.get()
    pending = []
    for s in range(services):
        for i in range(instances):
            host = f"10.{s // 250}.{s % 250}.{i + 1}"
            pending.append(zk.create_async(f"{root}/svc-{s:04d}/{host}:8080", inst(host, 8080)))
            if len(pending) > 2000:
                for p in pending:
                    p.get()
                pending = []
    for p in pending:
        p.get()


class Sidecar:
    """One sidecar process (this checkout, or a baseline checkout) and its HAProxy."""

    def __init__(self, tmp: Path, zk: str, realm: str, label: str, src: Path | None) -> None:
        self.label, self.realm = label, realm
        self.state = tmp / f"sc-{label}"
        self.port, self.status_port = free_port(), free_port()
        argv = [
            sys.executable, "-m", "atlas.sidecar.cli", "--zk", zk, "--realm", realm,
            "--port", str(self.port), "--status-port", str(self.status_port),
            "--state-dir", str(self.state), "--initial-sync-timeout", "300",
        ]  # fmt: skip
        env = dict(os.environ)
        if src is None:
            argv += ["--spares", "64", "--stop-haproxy-on-exit", "--host-id", f"bench-{label}"]
        else:
            env["PYTHONPATH"] = str(src)
        self.proc = ManagedProcess(label, argv, tmp / f"{label}.log", env=env, cwd=src or ROOT)
        self.admin = self.state / "admin.sock"
        self.created: list[str] = []
        self._probe: socket.socket | None = None
        self._http: http.client.HTTPConnection | None = None

    def start(self) -> None:
        self.proc.start()
        wait_for_port(self.status_port, timeout=600, proc=self.proc.proc)
        wait(lambda: self.status().get("in_sync"), timeout=600, step=0.1)

    def status(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.status_port}/status", timeout=10
            ) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return {}

    def maint(self, backend: str, server: str) -> bool:
        """Polled over one kept prompt-mode connection (cheap for both sides)."""
        if self._probe is None:
            self._probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._probe.connect(str(self.admin))
            self._probe.sendall(b"prompt\n")
            self._read_prompt()
        self._probe.sendall(f"show servers state {backend}\n".encode())
        text = self._read_prompt()
        return any(s.server == server and s.maint for s in parse_servers_state(text))

    def _read_prompt(self) -> str:
        assert self._probe is not None
        data = b""
        while not data.endswith(b"\n> "):
            chunk = self._probe.recv(65536)
            if not chunk:
                raise ConnectionError("admin socket closed")
            data += chunk
        return data.decode()

    def routed(self, service: str) -> bool:
        """One GET with the service header over a kept connection."""
        for _ in range(2):
            if self._http is None:
                self._http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                self._http.request("GET", "/", headers={"Atlas-Service": service})
                r = self._http.getresponse()
                r.read()
                return r.status == 200
            except (http.client.HTTPException, OSError):
                self._http.close()
                self._http = None
        return False

    def stop(self) -> None:
        self.proc.stop()


def measure_disable(zk: KazooClient, sc: Sidecar, path: str, host: str, n: int) -> list[float]:
    backend_name, server = path.split("/")[-2], path.split("/")[-1]
    out = []
    for _ in range(n):
        time.sleep(0.15)  # isolated changes (a burst is coalesced)
        t0 = time.perf_counter()
        zk.set(path, inst(host, 8080, False))
        wait(lambda: sc.maint(backend_name, server))
        out.append(time.perf_counter() - t0)
        zk.set(path, inst(host, 8080, True))
        wait(lambda: not sc.maint(backend_name, server))
    return out


def measure_raw(writer: KazooClient, watcher: KazooClient, path: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        time.sleep(0.05)
        fired = threading.Event()
        watcher.get(path, watch=lambda e, fired=fired: fired.set())
        t0 = time.perf_counter()
        writer.set(path, inst("10.0.0.9", 8080, enabled=i % 2 == 0))
        fired.wait(10)
        out.append(time.perf_counter() - t0)
    return out


def measure_new_service(zk: KazooClient, sc: Sidecar, n: int, port: int) -> list[float]:
    root = Layout(sc.realm).services
    out = []
    for _ in range(n):
        time.sleep(0.15)
        name = f"new-{sc.label}-{len(sc.created)}"
        sc.created.append(name)
        tx = zk.transaction()
        tx.create(f"{root}/{name}", json.dumps({"name": name, "instances": 1}).encode())
        tx.create(f"{root}/{name}/127.0.0.1:{port}", inst("127.0.0.1", port))
        t0 = time.perf_counter()
        tx.commit()
        wait(lambda name=name: sc.routed(name), step=0.0005)
        out.append(time.perf_counter() - t0)
    return out


def measure_report(zk: KazooClient, sc: Sidecar, path: str, host: str, n: int) -> list[float]:
    node = Layout(sc.realm).sidecar(f"bench-{sc.label}")
    svc_path = path.rsplit("/", 1)[0]
    out = []
    for i in range(n):
        time.sleep(1.1)  # one report write per publish interval: isolated changes
        t0 = time.perf_counter()
        stat = zk.set(path, inst(host, 8080, i % 2 == 1))
        index = change_index([stat, zk.exists(svc_path)])

        def applied(index: int = index) -> bool:
            data, _ = zk.get(node)
            report = parse_sidecar_report(data, node)
            return report is not None and report.has_applied(svc_path.rsplit("/", 1)[1], index)

        wait(applied, step=0.001)
        out.append(time.perf_counter() - t0)
    return out


def burst(zk: KazooClient, sc: Sidecar, services: int, enabled: bool) -> dict[str, float]:
    root = Layout(sc.realm).services
    before = sc.status()
    targets = [(f"svc-{s:04d}", f"10.{s // 250}.{s % 250}.2:8080") for s in range(services)]
    t0 = time.perf_counter()
    pending = [
        zk.set_async(f"{root}/{b}/{srv}", inst(srv.split(":")[0], 8080, enabled))
        for b, srv in targets
    ]
    for p in pending:
        p.get()
    written = time.perf_counter() - t0
    want = {f"{b}/{srv}" for b, srv in targets}

    def done() -> bool:
        states = parse_servers_state(socket_command(sc.admin, "show servers state"))
        hit = {f"{s.backend}/{s.server}" for s in states if s.maint != enabled}
        return want <= hit

    wait(done, timeout=300, step=0.02)
    applied = time.perf_counter() - t0
    time.sleep(0.5)
    after = sc.status()
    return {
        "written_s": written,
        "applied_s": applied,
        "passes": after.get("passes", after.get("view_generation", 0))
        - before.get("passes", before.get("view_generation", 0)),
        "runtime": after["runtime_updates"] - before["runtime_updates"],
        "reloads": after["reloads"] - before["reloads"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=40, help="samples per latency")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--new-services", type=int, default=20)
    ap.add_argument("--baseline", type=Path, default=None, help="older checkout to compare")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="asf-", dir="/tmp"))
    zks = ZooKeeperServer(tmp / "zk", heap_mb=1024)
    zks.start()
    writer = KazooClient(zks.address, timeout=30)
    writer.start(timeout=60)
    watcher = KazooClient(zks.address, timeout=30)
    watcher.start(timeout=60)
    web = backend()
    sidecars: list[Sidecar] = []
    try:
        t0 = time.perf_counter()
        populate(writer, "small", 1, 2)
        populate(writer, "large", args.services, args.instances)
        small_root, large_root = Layout("small").services, Layout("large").services
        print(
            f"populated {1 * 3 + args.services * (args.instances + 1)} znodes in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        writer.ensure_path("/bench/raw")
        raw_path = "/bench/raw"
        raw: list[float] = []
        runs: list[tuple[str, Path | None]] = [("new", None)]
        if args.baseline is not None:
            runs.append(("base", args.baseline))
        results: dict[str, dict[str, Any]] = {}
        for label, src in runs:
            w0 = zk_watches(zks.port)
            small = Sidecar(tmp, zks.address, "small", f"{label}-small", src)
            small.start()
            w1 = zk_watches(zks.port)
            large = Sidecar(tmp, zks.address, "large", f"{label}-large", src)
            t1 = time.perf_counter()
            large.start()
            boot = time.perf_counter() - t1
            w2 = zk_watches(zks.port)
            sidecars += [small, large]
            rss_idle = rss_mb(large.proc.pid or 0)
            r: dict[str, Any] = {
                "watches_small": w1 - w0,
                "watches_large": w2 - w1,
                "boot_large_s": boot,
                "rss_small": rss_mb(small.proc.pid or 0),
                "rss_large": rss_idle,
            }
            small_path = f"{small_root}/svc-0000/10.0.0.2:8080"
            mid = args.services // 2
            large_host = f"10.{mid // 250}.{mid % 250}.1"
            large_path = f"{large_root}/svc-{mid:04d}/{large_host}:8080"
            dis_small: list[float] = []
            dis_large: list[float] = []
            for _ in range(4):  # interleaved quarters: drift hits every series alike
                raw += measure_raw(writer, watcher, raw_path, args.n // 4)
                dis_small += measure_disable(writer, small, small_path, "10.0.0.2", args.n // 4)
                dis_large += measure_disable(writer, large, large_path, large_host, args.n // 4)
            r["disable_small"], r["disable_large"] = dis_small, dis_large
            r["new_small"], r["new_large"] = [], []
            for _ in range(2):
                raw += measure_raw(writer, watcher, raw_path, args.n // 4)
                r["new_small"] += measure_new_service(writer, small, args.new_services // 2, web)
                r["new_large"] += measure_new_service(writer, large, args.new_services // 2, web)
            r["burst_off"] = burst(writer, large, args.services, enabled=False)
            r["burst_on"] = burst(writer, large, args.services, enabled=True)
            r["rss_after"] = rss_mb(large.proc.pid or 0)
            r["status_large"] = large.status()
            if src is None:
                r["report"] = measure_report(writer, small, small_path, "10.0.0.2", 10)
            results[label] = r
            for sc in (small, large):
                sc.stop()
            shutil.rmtree(small.state, ignore_errors=True)
            shutil.rmtree(large.state, ignore_errors=True)

        p50raw = pct(raw, 50)

        print(f"\n{'':38}{'p50 ms':>9}{'p99 ms':>9}{'/ raw':>8}")
        print(f"{'raw kazoo set -> watch':<38}{p50raw:9.2f}{pct(raw, 99):9.2f}{1:8.1f}x")
        for label, r in results.items():
            print(f"-- sidecar: {label}")
            for name, key in [
                ("disable -> maint, 1 x 2", "disable_small"),
                (f"disable -> maint, {args.services} x {args.instances}", "disable_large"),
                ("new service -> routed, 1 x 2", "new_small"),
                (f"new service -> routed, {args.services} x {args.instances}", "new_large"),
                ("set -> report node says applied", "report"),
            ]:
                if key in r:
                    xs = r[key]
                    print(
                        f"{name:<38}{pct(xs, 50):9.2f}{pct(xs, 99):9.2f}{pct(xs, 50) / p50raw:7.1f}x"
                    )
            ratio = pct(r["disable_large"], 50) / pct(r["disable_small"], 50)
            print(f"disable at {args.services} x {args.instances} / at 1 x 2 (p50): {ratio:.2f}x")
            for key in ("burst_off", "burst_on"):
                b = r[key]
                print(
                    f"burst of {args.services} {'disables' if key == 'burst_off' else 'enables'}:"
                    f" written in {b['written_s'] * 1000:.0f} ms, all applied after"
                    f" {b['applied_s'] * 1000:.0f} ms; {b['passes']} passes,"
                    f" {b['runtime']} runtime changes, {b['reloads']} reloads"
                )
            st = r["status_large"]
            print(
                f"sidecar RSS: {r['rss_small']:.0f} MB at 1 x 2, {r['rss_large']:.0f} MB at"
                f" {args.services} x {args.instances} ({r['rss_after']:.0f} MB after the bursts);"
                f" boot at {args.services} x {args.instances}: {r['boot_large_s']:.1f} s"
            )
            print(
                f"ZooKeeper watches held: {r['watches_small']} at 1 x 2,"
                f" {r['watches_large']} at {args.services} x {args.instances};"
                f" reloads during the run: {st.get('reloads')},"
                f" pool: {st.get('pool', {}).get('free', '-')} spares free,"
                f" {st.get('pool', {}).get('refills', '-')} refills"
            )
        if "base" in results:
            n, b = results["new"], results["base"]
            print("-- new / base (p50)")
            for key in ("disable_small", "disable_large", "new_small", "new_large"):
                print(f"{key:<38}{pct(n[key], 50) / pct(b[key], 50):9.2f}x")
            print(f"{'rss at large':<38}{n['rss_large'] / b['rss_large']:9.2f}x")
            print(
                f"{'burst of disables applied':<38}"
                f"{n['burst_off']['applied_s'] / b['burst_off']['applied_s']:9.2f}x"
            )
        print(f"(mean raw {statistics.mean(raw) * 1000:.2f} ms)")
    finally:
        for sc in sidecars:
            sc.stop()
        writer.stop()
        watcher.stop()
        zks.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
