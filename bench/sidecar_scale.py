"""Scale: 1,000 services x 10 instances — render, `haproxy -c`, reload, runtime update, memory."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

from kazoo.client import KazooClient

from atlas.sidecar.core import LoopSettings, Sidecar
from atlas.sidecar.haproxy import HAProxy
from atlas.sidecar.model import Snapshot
from atlas.sidecar.render import RenderOptions, render
from atlas.sidecar.watch import ZooKeeperSource
from atlas.stack import ZooKeeperServer, free_port

REALM = "scale"
ROOT = f"/atlas/{REALM}/services"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=10)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="ass-", dir="/tmp"))
    zk = ZooKeeperServer(tmp / "zk", heap_mb=512)
    zk.start()
    w = KazooClient(zk.address, timeout=30)
    w.start()
    w.ensure_path(ROOT)
    t0 = time.perf_counter()
    pending = []
    for s in range(args.services):
        name = f"svc-{s:04d}"
        hc = {"path": "/health", "interval_s": 5, "timeout_s": 2} if s % 2 else None
        pending.append(
            w.create_async(
                f"{ROOT}/{name}", json.dumps({"name": name, "health_check": hc}).encode()
            )
        )
    for p in pending:
        p.get()
    pending = []
    for s in range(args.services):
        for i in range(args.instances):
            host = f"10.{s // 250}.{s % 250}.{i + 1}"
            pending.append(
                w.create_async(
                    f"{ROOT}/svc-{s:04d}/{host}:8080",
                    json.dumps(
                        {"host": host, "port": 8080, "enabled": True, "weight": 100}
                    ).encode(),
                )
            )
    for p in pending:
        p.get()
    populate = time.perf_counter() - t0
    nodes = args.services * (args.instances + 1)

    rss0 = rss_mb()
    port = free_port()
    opts = RenderOptions(port=port, admin_socket=str(tmp / "admin.sock"), realm=REALM)
    proxy = HAProxy(
        tmp / "haproxy.cfg", tmp / "master.sock", tmp / "admin.sock", log_path=tmp / "haproxy.log"
    )
    sc = Sidecar(
        ZooKeeperSource(zk.address, REALM), proxy, opts, LoopSettings(initial_sync_timeout_s=120)
    )
    t0 = time.perf_counter()
    sc.boot()
    boot = time.perf_counter() - t0
    loop = threading.Thread(target=sc.run, daemon=True)
    loop.start()
    try:
        snapshot = Snapshot(tuple(sc.desired.values()))
        rss1 = rss_mb()
        snap_ms = timed(lambda: Snapshot(tuple(sc.desired.values())))
        render_ms = timed(lambda: render(snapshot, opts))
        text = render(snapshot, opts)
        check_ms = timed(lambda: proxy.check(proxy.config_path))
        reload_ms = timed(lambda: proxy.reload(timeout=120))
        # A runtime update at this size: disable one instance, measure until HAProxy has it.
        path = f"{ROOT}/svc-0500/10.2.0.1:8080"
        t0 = time.perf_counter()
        w.set(path, json.dumps({"host": "10.2.0.1", "port": 8080, "enabled": False}).encode())
        while True:
            out = proxy.admin("show servers state svc-0500")
            if any(
                ln.split()[3:4] == ["10.2.0.1:8080"] and ln.split()[6] != "0"
                for ln in out.splitlines()[2:]
                if len(ln.split()) > 6
            ):
                break
            time.sleep(0.001)
        runtime_ms = (time.perf_counter() - t0) * 1000
        print(
            f"{args.services} services x {args.instances} instances = {nodes} znodes "
            f"(populated in {populate:.1f} s); config {len(text) / 1e6:.2f} MB, "
            f"{text.count(chr(10))} lines"
        )
        print(f"sidecar boot (ZK sync + render + check + start HAProxy): {boot * 1000:8.0f} ms")
        print(f"snapshot of the view (for a full render):              {snap_ms:8.1f} ms")
        print(f"render (pure):                                         {render_ms:8.1f} ms")
        print(f"haproxy -c:                                            {check_ms:8.1f} ms")
        print(f"reload (master reload -> new worker answering):        {reload_ms:8.1f} ms")
        print(f"disable one instance, znode set -> HAProxy maint:      {runtime_ms:8.1f} ms")
        print(
            f"sidecar memory: RSS {rss1:.0f} MB in-process, +{rss1 - rss0:.0f} MB for the "
            "watch, the view and HAProxy control"
        )
    finally:
        sc.request_stop()
        loop.join(10)
        sc.shutdown()
        w.stop()
        zk.stop()


if __name__ == "__main__":
    main()
