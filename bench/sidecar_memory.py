"""What one sidecar's view costs: ZooKeeper watches and memory at 1,000 x 10 and 10,000 x 10.

Starts its own ZooKeeper, fills one realm per size, then, for each, runs the sidecar's watch
(`ZooKeeperSource`) and keeps the parsed view the loop keeps, in a fresh child process: prints
the watches it holds on the server (`mntr` zk_watch_count), the time to read it all, and the
child's RSS against an idle interpreter with the same imports. (HAProxy's own memory for the
rendered config is printed by bench/sidecar_scale.py.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kazoo.client import KazooClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atlas.stack import ZooKeeperServer
from bench.sidecar_fleet import populate, zk_watches

CHILD = """
import json, sys, time
from pathlib import Path
from atlas.sidecar.watch import ZooKeeperSource
from atlas.sidecar import core  # what the sidecar imports besides

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

base = rss()
if sys.argv[2] == "-":
    print(json.dumps({"rss": base, "base": base})); sys.stdout.flush(); sys.stdin.readline()
    raise SystemExit
src = ZooKeeperSource(sys.argv[1], sys.argv[2])
src.set_listener(lambda: None)
t0 = time.perf_counter()
src.start()
view = {}
while True:
    changes = src.drain(max_incomplete_s=3600)
    for name, svc in changes.services.items():
        if svc is None:
            view.pop(name, None)
        else:
            view[name] = svc
    if changes.index is not None and view:
        break
    time.sleep(0.05)
elapsed = time.perf_counter() - t0
print(json.dumps({"rss": rss(), "base": base, "read_s": elapsed, "services": len(view),
                  "instances": sum(len(s.instances) for s in view.values())}))
sys.stdout.flush()
sys.stdin.readline()
src.stop()
"""


def measure(zk: ZooKeeperServer, realm: str) -> dict[str, float]:
    before = zk_watches(zk.port)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, zk.address, realm],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    result = json.loads(proc.stdout.readline())
    time.sleep(1.0)
    result["watches"] = zk_watches(zk.port) - before
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=60)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000", help="services per realm (x 10 instances)")
    ap.add_argument("--instances", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="asm-", dir="/tmp"))
    zk = ZooKeeperServer(tmp / "zk", heap_mb=2048)
    zk.start()
    w = KazooClient(zk.address, timeout=60)
    w.start(timeout=60)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        for n in sizes:
            t0 = time.perf_counter()
            populate(w, f"m{n}", n, args.instances)
            print(f"populated {n} x {args.instances} in {time.perf_counter() - t0:.0f} s")
        idle = measure(zk, "-")
        print(
            f"\n{'size':>14}{'watches':>10}{'read s':>9}{'RSS MB':>9}{'view MB':>9}{'kB/inst':>9}"
        )
        for n in sizes:
            r = measure(zk, f"m{n}")
            view = r["rss"] - idle["rss"]
            print(
                f"{n:>7} x {args.instances:<4}{r['watches']:>10}{r['read_s']:>9.1f}"
                f"{r['rss']:>9.0f}{view:>9.0f}{view * 1024 / r['instances']:>9.2f}"
            )
        print(f"(an idle interpreter with the sidecar's imports: {idle['rss']:.0f} MB)")
    finally:
        w.stop()
        zk.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
