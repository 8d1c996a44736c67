"""A hot service's writers against the same writers spread over four services, in one run.

Four writer threads, each with its own keep-alive session, PATCH the weight of their own
instance through the real API (gunicorn, 2 workers x 4 threads, moto server, ZooKeeper):

  one service:   the four instances belong to one service (a rolling deploy)
  four services: each instance belongs to a service of its own

Rounds alternate (one, four, one, four, ...) so machine noise falls on both alike. Prints
writes/s, p50/p99/max per layout, the rate ratio (goal: four services <= 2x one service) and
p99/p50 of the hot service (goal < 10x). At the end ZooKeeper must equal DynamoDB.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from kazoo.client import KazooClient

from bench._stack import ADMIN, pct, start_atlas, start_moto, start_zk

REALM = "hot"
WRITERS = 4


def session() -> requests.Session:
    """A keep-alive session with the admin token."""
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {ADMIN}"
    return s


def run_round(base: str, targets: list[str], writes: int) -> tuple[float, list[float], int]:
    """Each writer PATCHes its own instance `writes` times; (elapsed s, latencies, errors)."""
    latencies: list[list[float]] = [[] for _ in targets]
    errors = [0] * len(targets)
    start = threading.Barrier(len(targets) + 1)

    def writer(n: int) -> None:
        s = session()
        url = f"{base}/v1/services/{targets[n]}"
        start.wait()
        for i in range(writes):
            t0 = time.perf_counter()
            r = s.patch(url, json={"weight": (i * 7 + n) % 256}, timeout=60)
            latencies[n].append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors[n] += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(len(targets))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, [x for lat in latencies for x in lat], sum(errors)


def mirrored_weights(zk: KazooClient, targets: list[str]) -> dict[str, int]:
    """The weight each target's znode holds now."""
    out = {}
    for target in targets:
        service, _, iid = target.partition("/instances/")
        data, _ = zk.get(f"/atlas/{REALM}/services/{service}/{iid}")
        out[target] = json.loads(data)["weight"]
    return out


def main() -> None:
    """Set up both layouts, alternate rounds, print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each layout")
    ap.add_argument("--writes", type=int, default=40, help="writes per writer per round")
    args = ap.parse_args()

    moto = start_moto()
    zk = start_zk()
    atlas = start_atlas(moto, REALM, workers=2, threads=4, ATLAS_ZK_HOSTS=zk.address)
    s = session()
    base = atlas.url
    hot = [f"hot/instances/10.0.0.{n + 1}:80" for n in range(WRITERS)]
    cold = [f"cold-{n}/instances/10.0.1.{n + 1}:80" for n in range(WRITERS)]
    for name in ["hot", *(f"cold-{n}" for n in range(WRITERS))]:
        s.post(f"{base}/v1/services", json={"name": name}, timeout=30).raise_for_status()
    for target in hot + cold:
        s.put(f"{base}/v1/services/{target}", json={}, timeout=30).raise_for_status()

    run_round(base, hot, 5)  # warm-up: connections, caches, both workers
    run_round(base, cold, 5)
    before = s.get(f"{base}/v1/info", timeout=30).json()["mirror"]
    results: dict[str, tuple[float, list[float], int]] = {"one service": (0.0, [], 0),
                                                         "four services": (0.0, [], 0)}  # fmt: skip
    for _ in range(args.rounds):
        for label, targets in (("one service", hot), ("four services", cold)):
            elapsed, lat, errors = run_round(base, targets, args.writes)
            total = results[label]
            results[label] = (total[0] + elapsed, total[1] + lat, total[2] + errors)
    after = s.get(f"{base}/v1/info", timeout=30).json()["mirror"]

    rates = {}
    for label, (elapsed, lat, errors) in results.items():
        rates[label] = len(lat) / elapsed
        ms = [x * 1000 for x in lat]
        print(
            f"{label:14s} {rates[label]:7.1f} writes/s  p50 {pct(ms, 50):7.1f} ms  "
            f"p99 {pct(ms, 99):7.1f} ms  max {max(ms):7.1f} ms  p99/p50 "
            f"{pct(ms, 99) / pct(ms, 50):5.1f}x  errors {errors}  n={len(ms)}"
        )
    print(
        f"rate ratio four/one   {rates['four services'] / rates['one service']:5.2f}x  (goal <= 2x)"
    )
    hot_ms = results["one service"][1]
    print(f"hot p99/p50           {pct(hot_ms, 99) / pct(hot_ms, 50):5.2f}x  (goal < 10x)")
    counters = ("cas_retries", "sync_failures", "group_commits", "grouped_changes", "stale_retries")
    print(
        "mirror counters (both layouts, one worker's view): "
        + ", ".join(f"{k} +{after[k] - before[k]}" for k in counters if k in after and k in before)
    )

    # Every write was acknowledged; the mirror must hold exactly the last weight of each.
    zkc = KazooClient(zk.address)
    zkc.start()
    stored = {t: s.get(f"{base}/v1/services/{t}", timeout=30).json()["weight"] for t in hot + cold}
    at_once = mirrored_weights(zkc, hot + cold) == stored
    t0 = time.monotonic()
    while mirrored_weights(zkc, hot + cold) != stored and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    late = mirrored_weights(zkc, hot + cold) == stored
    print(
        f"ZooKeeper equals DynamoDB when the last write is acknowledged: {at_once}"
        + ("" if at_once else f"; after {time.monotonic() - t0:.1f} s: {late}")
    )
    zkc.stop()


if __name__ == "__main__":
    main()
