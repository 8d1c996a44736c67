"""The view at 1,000 services x 10 instances: memory, load time and event cost, against kazoo's
TreeCache on the same tree (what atlas.view.ZkView was measured against before choosing it).

Builds the tree with Atlas's own payloads straight into ZooKeeper, then for each candidate:
Python memory held after the load (tracemalloc), time from start to a usable view, and for
BENCH_CHANGES single-instance changes the time from `set` to the change being visible (the
ZkView number includes reaching an index: a barrier past the change).
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kazoo.client import KazooClient
from kazoo.recipe.cache import TreeCache, TreeEvent

from atlas.contract import Layout
from atlas.mirror.payloads import config_payload, instance_payload, service_payload
from atlas.registry.records import HealthCheck, Instance, Service
from atlas.view import Snapshot, ZkView, instances_key
from bench._stack import pct, start_zk

SERVICES = int(os.environ.get("BENCH_SERVICES", "1000"))
INSTANCES = int(os.environ.get("BENCH_INSTANCES", "10"))
CHANGES = int(os.environ.get("BENCH_CHANGES", "200"))
T = "2026-01-01T00:00:00.000Z"
LAYOUT = Layout("scale")


def instance(svc: str, i: int, weight: int = 100) -> Instance:
    return Instance(svc, f"10.{i // 250}.{i % 250}.1", 8080, True, weight, "a", {"rack": "r1"},
                    None, 1, T, T)  # fmt: skip


def build(address: str) -> None:
    """The tree, one transaction per service (as the mirror commits it)."""
    k = KazooClient(address)
    k.start()
    for path in (LAYOUT.services, LAYOUT.config):
        k.ensure_path(path)
    pending = []
    for s in range(SERVICES):
        name = f"svc-{s:04d}"
        svc = Service(name, "a service", "team", 8080, HealthCheck("/health"), ("t",), 1, T, T)
        tx = k.transaction()
        tx.create(LAYOUT.service(name), service_payload(svc, INSTANCES))
        for i in range(INSTANCES):
            inst = instance(name, i)
            tx.create(LAYOUT.instance(name, inst.id), instance_payload(inst))
        tx.create(LAYOUT.config_stamp(name), config_payload(0))
        pending.append(tx.commit_async())
        if len(pending) >= 100:
            for p in pending:
                p.get(timeout=60)
            pending = []
    for p in pending:
        p.get(timeout=60)
    k.stop()
    k.close()


def changes(address: str, seen: threading.Event, check: object) -> list[float]:
    """CHANGES weight changes of random instances; seconds from set to visible."""
    k = KazooClient(address)
    k.start()
    out = []
    for n in range(CHANGES):
        name = f"svc-{(n * 7919) % SERVICES:04d}"
        inst = instance(name, n % INSTANCES, weight=1 + n % 200)
        t0 = time.perf_counter()
        k.set(LAYOUT.instance(name, inst.id), instance_payload(inst))
        while not check(name, inst.id, inst.weight):  # type: ignore[operator]
            seen.wait(0.5)
            seen.clear()
        out.append(time.perf_counter() - t0)
    k.stop()
    k.close()
    return out


def measure_view(address: str) -> dict[str, float]:
    client = KazooClient(address)
    client.start()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    t0 = time.perf_counter()
    view = ZkView("scale", lambda: client)
    view.start()
    while view.snapshot is None or len(view.snapshot.services) < SERVICES:
        time.sleep(0.01)
    loaded = time.perf_counter() - t0
    gc.collect()
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    seen = threading.Event()

    def visible(name: str, iid: str, weight: int) -> bool:
        def shows(snap: Snapshot) -> bool:
            e = snap.entry(name)
            inst = e.by_id.get(iid) if e is not None else None
            # ...and the view's index has reached the change (as a blocking query waits)
            return inst is not None and inst.weight == weight and snap.index >= e.index  # type: ignore[union-attr]

        return view.wait(instances_key(name), shows, 5.0) is not None and shows(view.snapshot)  # type: ignore[arg-type]

    lat = changes(address, seen, visible)
    counters = dict(view.counters)
    view.stop()
    client.stop()
    client.close()
    return {"loaded_s": loaded, "mib": held / 2**20, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "mean": statistics.mean(lat), "fetches": counters["fetches"]}  # fmt: skip


def measure_treecache(address: str) -> dict[str, float]:
    client = KazooClient(address)
    client.start()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    ready = threading.Event()
    seen = threading.Event()
    t0 = time.perf_counter()
    cache = TreeCache(client, LAYOUT.services)

    @cache.listen
    def _events(event: TreeEvent) -> None:
        if event.event_type == TreeEvent.INITIALIZED:
            ready.set()
        seen.set()

    cache.start()
    ready.wait(300)
    loaded = time.perf_counter() - t0
    gc.collect()
    held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()

    def visible(name: str, iid: str, weight: int) -> bool:
        import json

        node = cache.get_data(LAYOUT.instance(name, iid))
        return node is not None and json.loads(node.data)["weight"] == weight

    lat = changes(address, seen, visible)
    cache.close()
    client.stop()
    client.close()
    return {"loaded_s": loaded, "mib": held / 2**20, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "mean": statistics.mean(lat), "fetches": float("nan")}  # fmt: skip


def main() -> None:
    """Build the tree and print both candidates side by side."""
    zk = start_zk()
    build(zk.address)
    nodes = SERVICES * (INSTANCES + 2)
    print(f"{SERVICES} services x {INSTANCES} instances ({nodes} znodes), {CHANGES} changes")
    for name, fn in (("atlas.view.ZkView", measure_view), ("kazoo TreeCache", measure_treecache)):
        r = fn(zk.address)
        print(f"{name:18s} load {r['loaded_s']:6.2f} s  memory {r['mib']:6.1f} MiB "
              f"({r['mib'] * 2**20 / nodes:5.0f} B/znode)  change visible p50 "
              f"{r['p50'] * 1000:6.2f} ms  p99 {r['p99'] * 1000:6.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
