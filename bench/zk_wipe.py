"""A wiped ZooKeeper coming back: time from the empty server accepting connections to the
first mirrored node and to all of them, with Atlas (gunicorn, 2 workers, default settings:
10 s ZooKeeper timeout, 60 s reconcile period) left running throughout.

Each round: kill -9 ZooKeeper, delete its data directory, start it again, then watch the
tree with a fresh client. Also samples /v1/info (one worker's view per request) so the
report shows when Atlas's mirror was connected again, led, and reconciled.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from bench._stack import ADMIN, start_atlas, start_moto, start_zk

REALM = "wipe"


def count_nodes(zk: KazooClient) -> int:
    """Nodes under services/ and config/ of the realm (service, instance and stamp nodes)."""
    total = 0
    for root in (f"/atlas/{REALM}/services", f"/atlas/{REALM}/config"):
        try:
            names = zk.get_children(root)
        except NoNodeError:
            continue
        total += len(names)
        if root.endswith("services"):
            kids = [zk.get_children_async(f"{root}/{n}") for n in names]
            for k in kids:
                with contextlib.suppress(NoNodeError):
                    total += len(k.get(timeout=10))
    return total


class InfoSampler:
    """Polls /v1/info every 50 ms; remembers when each mirror fact first held."""

    def __init__(self, base: str, t0: float) -> None:
        self.base, self.t0 = base, t0
        self.first: dict[str, float] = {}
        self.stopped = threading.Event()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {ADMIN}"
        self.reconciles: int | None = None
        self.recreated: int | None = None
        self.reconcile_s: float | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                m = self.session.get(f"{self.base}/v1/info", timeout=5).json()["mirror"]
            except (requests.RequestException, ValueError, KeyError):
                continue
            now = time.perf_counter() - self.t0
            if m.get("connected"):
                self.first.setdefault("connected", now)
            if m.get("leader") and m.get("connected"):
                self.first.setdefault("leader", now)
            if self.reconciles is None:
                self.reconciles = m.get("reconciles", 0)
            elif m.get("reconciles", 0) > self.reconciles and "reconciled" not in self.first:
                self.first["reconciled"] = now
                self.reconcile_s = (m.get("last_reconcile") or {}).get("duration_s")
            if self.recreated is None:
                self.recreated = m.get("client_recreated", 0)
            elif m.get("client_recreated", 0) > self.recreated:
                self.first.setdefault("client recreated", now)
            self.stopped.wait(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def main() -> None:
    """Fill the mirror, then wipe ZooKeeper a few times and time the rebuilds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--instances", type=int, default=11, help="per service")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    moto = start_moto()
    zk = start_zk()
    atlas = start_atlas(moto, REALM, workers=2, threads=4, ATLAS_ZK_HOSTS=zk.address)
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {ADMIN}"
    for n in range(args.services):
        s.post(f"{atlas.url}/v1/services", json={"name": f"svc-{n}"}, timeout=30)
        for i in range(args.instances):
            s.put(f"{atlas.url}/v1/services/svc-{n}/instances/10.{n}.0.{i}:80", json={},
                  timeout=30).raise_for_status()  # fmt: skip
    expected = args.services * (args.instances + 2)

    for r in range(args.rounds):
        watcher = KazooClient(zk.address)
        watcher.start(timeout=30)
        deadline = time.monotonic() + 120
        while count_nodes(watcher) != expected:
            if time.monotonic() > deadline:
                raise SystemExit("the mirror never filled")
            time.sleep(0.1)
        watcher.stop()
        watcher.close()
        time.sleep(1.0)  # settled: sessions idle, as in production

        zk.kill()
        zk.wipe()
        zk.start(timeout=60)  # returns when the port accepts connections
        t0 = time.perf_counter()
        sampler = InfoSampler(atlas.url, t0)
        watcher = KazooClient(zk.address)
        watcher.start(timeout=30)
        first = all_at = None
        while all_at is None and time.perf_counter() - t0 < 180:
            n = count_nodes(watcher)
            now = time.perf_counter() - t0
            if n and first is None:
                first = now
            if n == expected:
                all_at = now
            time.sleep(0.02)
        sampler.stop()
        watcher.stop()
        watcher.close()
        facts = ", ".join(
            f"{k} {v:.2f} s" for k, v in sorted(sampler.first.items(), key=lambda kv: kv[1])
        )
        print(
            f"round {r + 1}: {expected} nodes; from the empty server accepting connections: "
            f"first node {first if first is None else round(first, 2)} s, "
            f"all nodes {all_at if all_at is None else round(all_at, 2)} s"
        )
        print(f"         /v1/info: {facts or 'nothing changed'}")
        if sampler.reconcile_s is not None:
            print(
                f"         the rebuilding reconcile took {sampler.reconcile_s:.2f} s (scan included)"
            )


if __name__ == "__main__":
    main()
