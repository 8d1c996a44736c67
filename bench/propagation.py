"""Propagation of an API write to a ZooKeeper watcher, against raw kazoo on the same ZooKeeper.

Atlas: from the start of PATCH /v1/services/{s}/instances/{id} {"enabled": ...} until a kazoo
DataWatch on the instance znode sees the new state. Raw: from kazoo `set` until the same kind of
watch fires. Both are measured in the same run, alternating, and printed as p50/p99 and ratio.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from kazoo.client import KazooClient

from atlas.config import Settings
from atlas.registry import Registry, build_models_for
from bench._stack import ADMIN, pct, start_atlas, start_moto, start_zk, summary

N = 200


class Waiter:
    """A DataWatch that records when the node's data satisfies a predicate."""

    def __init__(self, client: KazooClient, path: str) -> None:
        self.cond = threading.Condition()
        self.data: bytes | None = None
        self.seen_at = 0.0
        client.DataWatch(path, self._on)

    def _on(self, data: bytes | None, stat: object) -> None:
        now = time.perf_counter()
        with self.cond:
            self.data, self.seen_at = data, now
            self.cond.notify_all()

    def wait_for(self, pred: object, timeout: float = 10.0) -> float:
        """Block until pred(data) holds; return the time it was first seen."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (self.data is not None and pred(self.data)):  # type: ignore[operator]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("watch did not fire")
                self.cond.wait(left)
            return self.seen_at


def main() -> None:
    """Measure both paths and print the ratio."""
    moto = start_moto()
    zk = start_zk()
    atlas = start_atlas(moto, "prop", ATLAS_ZK_HOSTS=zk.address)
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {ADMIN}"
    s.post(f"{atlas.url}/v1/services", json={"name": "web"}, timeout=10)
    inst_url = f"{atlas.url}/v1/services/web/instances/10.0.0.1:80"
    s.put(inst_url, json={}, timeout=10)

    watcher = KazooClient(zk.address)
    watcher.start()
    writer = KazooClient(zk.address)
    writer.start()
    node = "/atlas/prop/services/web/10.0.0.1:80"
    raw = "/bench/raw-node"
    writer.ensure_path(raw)
    w_api = Waiter(watcher, node)
    w_raw = Waiter(watcher, raw)
    w_api.wait_for(lambda d: True)

    api_s: list[float] = []
    raw_s: list[float] = []
    for i in range(N + 20):
        enabled = i % 2 == 0
        t0 = time.perf_counter()
        s.patch(inst_url, json={"enabled": enabled}, timeout=10).raise_for_status()
        seen = w_api.wait_for(lambda d, e=enabled: json.loads(d)["enabled"] is e)
        if i >= 20:  # warm-up excluded
            api_s.append(seen - t0)
        payload = json.dumps({"enabled": enabled, "i": i}).encode()
        t0 = time.perf_counter()
        writer.set(raw, payload)
        seen = w_raw.wait_for(lambda d, p=payload: d == p)
        if i >= 20:
            raw_s.append(seen - t0)
        time.sleep(0.005)

    # What of the Atlas figure is the store: the same conditional UpdateItem through pynamodb,
    # on the same moto server, with no HTTP and no ZooKeeper.
    settings = Settings(realm="prop", dynamodb_endpoint=moto.url, admin_tokens=(ADMIN,))
    store_only = Registry(build_models_for(settings))
    store_s: list[float] = []
    for i in range(N):
        t0 = time.perf_counter()
        store_only.update_instance("web", "10.0.0.1", 80, {"weight": i % 256})
        store_s.append(time.perf_counter() - t0)

    print(f"raw kazoo set -> watch        {summary(raw_s)}")
    print(f"Atlas PATCH -> watch          {summary(api_s)}")
    print(f"ratio at p50                  {pct(api_s, 50) / pct(raw_s, 50):.2f}x  (goal <= 5x)")
    print(f"ratio at p99                  {pct(api_s, 99) / pct(raw_s, 99):.2f}x")
    print(f"DynamoDB UpdateItem alone     {summary(store_s)}")
    print(f"Atlas minus the store, p50    {(pct(api_s, 50) - pct(store_s, 50)) * 1000:7.2f} ms")
    watcher.stop()
    writer.stop()


if __name__ == "__main__":
    main()
