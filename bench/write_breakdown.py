"""Where one instance write's time goes: N weight PATCHes through one Atlas (gunicorn, moto
server, ZooKeeper mirror), then the server's own Prometheus histograms read before and after:
the PATCH route's time against the time of each DynamoDB store action and each ZooKeeper op
per PATCH, and the floor of raw kazoo set -> watch on the same ZooKeeper, side by side.
BENCH_WRITES (default 200) changes N.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from kazoo.client import KazooClient
from prometheus_client.parser import text_string_to_metric_families

from bench._stack import ADMIN, pct, start_atlas, start_moto, start_zk

N = int(os.environ.get("BENCH_WRITES", "200"))
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def histograms(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every histogram's _sum and _count sample, by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name.endswith(("_sum", "_count")):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def kazoo_floor(hosts: str, n: int) -> list[float]:
    """Raw kazoo: set on one client -> DataWatch fired on another, n times."""
    writer, reader = KazooClient(hosts=hosts), KazooClient(hosts=hosts)
    writer.start(15)
    reader.start(15)
    writer.ensure_path("/bench-floor")
    fired = threading.Event()
    reader.DataWatch("/bench-floor", lambda data, stat: fired.set())
    out = []
    for i in range(n):
        fired.clear()
        t0 = time.perf_counter()
        writer.set("/bench-floor", str(i).encode())
        fired.wait(5)
        out.append(time.perf_counter() - t0)
    for c in (writer, reader):
        c.stop()
        c.close()
    return out


def main() -> None:
    """Run the writes and print the breakdown."""
    moto = start_moto()
    zk = start_zk()
    atlas = start_atlas(moto, "wbreak", workers=1, threads=4, ATLAS_ZK_HOSTS=zk.address)
    s = requests.Session()
    s.headers.update(AUTH)
    s.post(f"{atlas.url}/v1/services", json={"name": "feed"}, timeout=10).raise_for_status()
    for i in range(20):
        s.put(f"{atlas.url}/v1/services/feed/instances/10.0.0.{i}:80", json={}, timeout=10)
    before = histograms(atlas.url)
    took = []
    for i in range(N):
        t0 = time.perf_counter()
        s.patch(f"{atlas.url}/v1/services/feed/instances/10.0.0.1:80",
                json={"weight": i % 200}, timeout=10).raise_for_status()  # fmt: skip
        took.append(time.perf_counter() - t0)
    after = histograms(atlas.url)
    floor = kazoo_floor(zk.address, N)
    print(f"{N} weight PATCHes, one Atlas (gevent, 1 worker), moto server, ZooKeeper mirror")
    print(f"PATCH seen by the client     p50 {pct(took, 50) * 1000:7.2f} ms")
    print(f"raw kazoo set -> watch       p50 {pct(floor, 50) * 1000:7.2f} ms")
    print(f"ratio at p50                     {pct(took, 50) / pct(floor, 50):7.2f}x")
    print("per PATCH, from the server's histograms (mean):")
    for (name, labels), count in sorted(after.items()):
        if not name.endswith("_count"):
            continue
        n = count - before.get((name, labels), 0)
        if not n or "/metrics" in str(labels):
            continue
        base = name[: -len("_count")]
        total = after.get((base + "_sum", labels), 0) - before.get((base + "_sum", labels), 0)
        what = ", ".join(f"{k}={v}" for k, v in labels)
        print(f"  {base:42s} {what:70.70s} calls {n / N:5.2f}  {total / N * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
