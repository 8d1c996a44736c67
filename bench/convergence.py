"""Time from a PATCH until `GET /v1/services/{name}/convergence` shows every sidecar converged,
against the time for the same change to reach a raw kazoo watch on the instance node.

Starts ZooKeeper, moto server, Atlas (gunicorn) and three real `atlas-sidecar` processes with
their HAProxy, on free loopback ports. Each round, measured side by side from the start of the
PATCH (`{"enabled": false}`, then `true`, alternately):

  raw:         a DataWatch on the instance node (another kazoo client) fires with the change
  converged:   /convergence answers `converged: true` with `index` >= the write's X-Atlas-Index
               and 3 sidecars (polled back to back)

Rounds are spaced by more than the sidecars' `--publish-interval` (each sidecar writes its
report at most that often), so each round is the first change after a quiet spell; a burst of
changes would see that pacing on top. Also prints what one /convergence request costs.

    .venv/bin/python bench/convergence.py [--rounds 20] [--publish-interval 1.0]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from kazoo.client import KazooClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atlas.stack import ManagedProcess, free_port, wait_for_port
from bench._stack import ADMIN, WORKDIR, pct, start_atlas, start_moto, start_zk
from bench.sidecar_propagation import backend

REALM = "bench"
SIDECARS = 3


def start_sidecars(zk: str, publish_interval: float, base: Path) -> list[ManagedProcess]:
    procs = []
    for i in range(SIDECARS):
        port, status = free_port(), free_port()
        argv = [
            sys.executable, "-m", "atlas.sidecar.cli", "--zk", zk, "--realm", REALM,
            "--port", str(port), "--status-port", str(status), "--state-dir", str(base / f"s{i}"),
            "--host-id", f"bench-{i}", "--spares", "2", "--stop-haproxy-on-exit",
            "--publish-interval", str(publish_interval),
        ]  # fmt: skip
        p = ManagedProcess(f"sidecar-{i}", argv, WORKDIR / f"sidecar-{i}.log")
        p.start()
        wait_for_port(status, timeout=60, proc=p.proc)
        procs.append(p)
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--publish-interval", type=float, default=1.0, help="the sidecars' (s)")
    args = ap.parse_args()

    zk_server = start_zk()
    moto = start_moto()
    atlas = start_atlas(moto, REALM, workers=1, ATLAS_ZK_HOSTS=zk_server.address)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {ADMIN}"
    base = atlas.url + "/v1/services"
    http.post(base, json={"name": "web"}, timeout=10).raise_for_status()
    ports = [backend(), backend()]
    for p in ports:
        http.put(f"{base}/web/instances/127.0.0.1:{p}", json={}, timeout=10).raise_for_status()
    iid = f"127.0.0.1:{ports[0]}"

    state = Path(tempfile.mkdtemp(prefix="abc-", dir="/tmp"))  # short: UNIX socket paths
    procs = start_sidecars(zk_server.address, args.publish_interval, state)
    poll_times: list[float] = []

    def convergence() -> dict[str, Any]:
        t = time.perf_counter()
        r = http.get(f"{base}/web/convergence", timeout=10)
        poll_times.append(time.perf_counter() - t)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def converged(index: int) -> bool:
        b = convergence()
        return bool(b["converged"] and b["index"] >= index and b["summary"]["total"] == SIDECARS)

    deadline = time.monotonic() + 120
    while not converged(0):
        if time.monotonic() > deadline:
            raise SystemExit(f"the sidecars never converged: {convergence()}")
        time.sleep(0.1)

    watcher = KazooClient(hosts=zk_server.address)
    watcher.start(timeout=15)
    seen: list[tuple[int, float]] = []  # (mzxid, perf_counter) of every change the watch saw

    def on_change(data: bytes | None, stat: Any) -> None:
        if stat is not None:
            seen.append((int(stat.mzxid), time.perf_counter()))

    watcher.DataWatch(f"/atlas/{REALM}/services/web/{iid}", on_change)

    raw: list[float] = []
    conv: list[float] = []
    try:
        for i in range(args.rounds):
            time.sleep(args.publish_interval + 0.2)  # a quiet fleet: no report pacing pending
            t0 = time.perf_counter()
            r = http.patch(f"{base}/web/instances/{iid}", json={"enabled": i % 2 == 1}, timeout=10)
            r.raise_for_status()
            index = int(r.headers["X-Atlas-Index"])
            limit = time.monotonic() + 60
            while not converged(index):
                if time.monotonic() > limit:
                    raise SystemExit(f"round {i}: not converged in 60 s: {convergence()}")
            t_conv = time.perf_counter()
            hit = next((t for z, t in seen if z >= index), None)
            while hit is None and time.monotonic() < limit:
                time.sleep(0.001)
                hit = next((t for z, t in seen if z >= index), None)
            if hit is None:
                raise SystemExit(f"round {i}: the raw watch never saw index {index}")
            raw.append(hit - t0)
            conv.append(t_conv - t0)
    finally:
        watcher.stop()
        watcher.close()
        for p in procs:
            p.stop()
        shutil.rmtree(state, ignore_errors=True)

    def ms(samples: list[float], p: float) -> float:
        return pct([s * 1000 for s in samples], p)

    print(f"convergence bench: {SIDECARS} sidecars (publish interval {args.publish_interval:g} s), "
          f"{args.rounds} rounds, PATCH start -> seen")  # fmt: skip
    print(f"  raw kazoo watch:   median {ms(raw, 50):8.1f} ms  p90 {ms(raw, 90):8.1f} ms")
    print(f"  /convergence 3/3:  median {ms(conv, 50):8.1f} ms  p90 {ms(conv, 90):8.1f} ms")
    ratio = [c / r for c, r in zip(conv, raw, strict=True)]
    print(f"  ratio converged/raw: median {statistics.median(ratio):.1f}x  "
          f"(of medians {ms(conv, 50) / ms(raw, 50):.1f}x)")  # fmt: skip
    print(f"  one /convergence request: median {ms(poll_times, 50):.1f} ms  "
          f"p90 {ms(poll_times, 90):.1f} ms  ({len(poll_times)} requests)")  # fmt: skip


if __name__ == "__main__":
    main()
