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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.retry import KazooRetry

from bench._stack import ADMIN, start_atlas, start_moto, start_zk

REALM = "wipe"
FAST_RETRY = KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_delay=0.25)


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
    """Polls /v1/info every 50 ms on a new connection each time (any gunicorn worker may
    answer); remembers when a worker first reported itself connected, one leading, and a
    reconcile that started after `t0`."""

    def __init__(self, base: str, t0: float, t0_wall: float) -> None:
        self.base, self.t0, self.t0_wall = base, t0, t0_wall
        self.connected: float | None = None
        self.leading: float | None = None
        self.reconcile: tuple[float, float] | None = None  # (started, took), from t0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN}", "Connection": "close"}
        while not self.stopped.is_set():
            try:
                body = requests.get(f"{self.base}/v1/info", headers=headers, timeout=5).json()
            except (requests.RequestException, ValueError):
                continue
            now = time.perf_counter() - self.t0
            m = body["mirror"]
            if m.get("connected"):
                if self.connected is None:
                    self.connected = now
                if m.get("leader") and self.leading is None:
                    self.leading = now
            last = m.get("last_reconcile") or {}
            if self.reconcile is None and last.get("at"):
                at = datetime.fromisoformat(last["at"].replace("Z", "+00:00")).timestamp()
                if at >= self.t0_wall:
                    self.reconcile = (at - self.t0_wall, float(last["duration_s"]))
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
        t0, t0_wall = time.perf_counter(), time.time()
        sampler = InfoSampler(atlas.url, t0, t0_wall)
        # A short session: a first connect attempt on a server that has just opened its port
        # sometimes gets no answer, and kazoo waits a whole session timeout before retrying.
        watcher = KazooClient(zk.address, timeout=1.0, connection_retry=FAST_RETRY)
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
        time.sleep(2.0)  # let /v1/info publish the reconcile that did it
        sampler.stop()
        watcher.stop()
        watcher.close()
        facts = "no worker connected"
        if sampler.connected is not None:
            facts = f"a worker connected at {sampler.connected:.2f} s"
        if sampler.leading is not None:
            facts += f"; a leader at {sampler.leading:.2f} s"
        print(
            f"round {r + 1}: {expected} nodes; from the empty server accepting connections: "
            f"first node {first if first is None else round(first, 2)} s, "
            f"all nodes {all_at if all_at is None else round(all_at, 2)} s"
        )
        print(f"         /v1/info: {facts}")
        if sampler.reconcile is not None:
            started, took = sampler.reconcile
            print(
                f"         the rebuilding reconcile started at {started:.2f} s, took {took:.2f} s"
            )


if __name__ == "__main__":
    main()
