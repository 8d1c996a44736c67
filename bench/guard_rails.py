"""What the guard rails cost a write: API latency of each kind of instance write, side by side.

One Atlas under gunicorn (moto server, ZooKeeper mirror), measured in one run, round-robin:

- a weight PATCH (one UpdateItem, the cheapest write): the baseline;
- disable + enable on a service without min_enabled (the disable reads the instance, then a
  conditional put; the enable is one UpdateItem);
- disable + enable on a service with min_enabled 1 of 3 instances, and of 100 instances (the
  disable also reads the service, counts its instances with one query, and commits in a
  transaction with the service's serving_seq);
- a host-disable + host-enable of a host with one instance of each of those services.

Ratios are to the weight PATCH at p50.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench._stack import ADMIN, pct, start_atlas, start_moto, start_zk, summary

N = 100


def main() -> None:
    """Measure each kind of write and print the ratios."""
    moto = start_moto()
    zk = start_zk()
    atlas = start_atlas(moto, "guards", workers=1, ATLAS_ZK_HOSTS=zk.address)
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {ADMIN}"
    base = f"{atlas.url}/v1/services"

    def ok(resp: requests.Response) -> None:
        resp.raise_for_status()

    for name, floor, n in (("free", 0, 3), ("small", 1, 3), ("large", 1, 100)):
        ok(s.post(base, json={"name": name, "min_enabled": floor}, timeout=10))
        for i in range(n):
            ok(s.put(f"{base}/{name}/instances/10.1.{i // 250}.{i % 250 + 1}:80", json={}))

    def inst(name: str) -> str:
        return f"{base}/{name}/instances/10.1.0.1:80"

    def toggle(name: str) -> Callable[[int], None]:
        def run(i: int) -> None:
            ok(s.patch(inst(name), json={"enabled": False}, timeout=10))
            ok(s.patch(inst(name), json={"enabled": True}, timeout=10))

        return run

    def weight(i: int) -> None:
        ok(s.patch(inst("free"), json={"weight": i % 200 + 1}, timeout=10))
        ok(s.patch(inst("free"), json={"weight": 100}, timeout=10))

    def host(i: int) -> None:
        ok(s.post(f"{atlas.url}/v1/hosts/10.1.0.1/disable", timeout=10))
        ok(s.post(f"{atlas.url}/v1/hosts/10.1.0.1/enable", timeout=10))

    kinds: dict[str, Callable[[int], None]] = {
        "weight PATCH x2 (baseline)": weight,
        "disable+enable, no floor": toggle("free"),
        "disable+enable, floor, 3": toggle("small"),
        "disable+enable, floor, 100": toggle("large"),
        "host disable+enable (3 svcs)": host,
    }
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(N + 10):
        for label, run in kinds.items():
            t0 = time.perf_counter()
            run(i)
            if i >= 10:  # warm-up excluded
                samples[label].append(time.perf_counter() - t0)
    baseline = pct(samples["weight PATCH x2 (baseline)"], 50)
    for label, values in samples.items():
        print(f"{label:30} {summary(values)}  {pct(values, 50) / baseline:5.2f}x")


if __name__ == "__main__":
    main()
