"""Blocking queries, measured side by side in one run.

1. Wake-up: a blocking `GET /v1/services/{s}/instances?index=N` on Atlas process B, woken by a
   PATCH made through Atlas process A: PATCH start -> blocking response received. Against the
   floor: raw kazoo `set` -> another client's DataWatch fired, on the same ZooKeeper.
2. 1,000 concurrent blocking waiters on one Atlas process (BENCH_WAITERS): memory per waiter
   (worker RSS growth / waiters) and the wake-up p50/p99 when one PATCH wakes them all, for
   each serving model (ATLAS_WORKER_CLASS gthread with enough threads, and gevent).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from kazoo.client import KazooClient

from bench._stack import ADMIN, pct, start_atlas, start_moto, start_zk, summary

N = int(os.environ.get("BENCH_N", "100"))
WAITERS = int(os.environ.get("BENCH_WAITERS", "1000"))
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def kazoo_floor(zk_address: str, n: int) -> list[float]:
    """raw kazoo set -> DataWatch fired in another client, n times."""
    writer, reader = KazooClient(zk_address), KazooClient(zk_address)
    writer.start()
    reader.start()
    writer.ensure_path("/bench-floor")
    fired = threading.Event()
    seen = {"v": b""}

    @reader.DataWatch("/bench-floor")
    def _watch(data: bytes | None, stat: object) -> None:
        seen["v"] = data or b""
        fired.set()

    out = []
    for i in range(n + 10):
        fired.clear()
        t0 = time.perf_counter()
        writer.set("/bench-floor", b"%d" % i)
        while seen["v"] != b"%d" % i:
            fired.wait(5)
            fired.clear()
        if i >= 10:
            out.append(time.perf_counter() - t0)
    for c in (writer, reader):
        c.stop()
        c.close()
    return out


def wake_latency(a_url: str, b_url: str, n: int, patch_s: list[float]) -> list[float]:
    """PATCH through A -> B's blocking query answered, n times (one waiter at a time)."""
    s_a, s_b = requests.Session(), requests.Session()
    s_a.headers.update(AUTH)
    s_b.headers.update(AUTH)
    url = f"{b_url}/v1/services/feed/instances"
    index = int(s_b.get(url, timeout=10).headers["X-Atlas-Index"])
    out = []
    for i in range(n + 10):
        got: dict[str, float | requests.Response] = {}

        def block(idx: int = index, got: dict[str, Any] = got) -> None:
            got["r"] = s_b.get(f"{url}?index={idx}&wait=30s", timeout=60)
            got["t"] = time.perf_counter()

        t = threading.Thread(target=block)
        t.start()
        time.sleep(0.02)  # let it park (a late one returns at once: still correct, just faster)
        t0 = time.perf_counter()
        s_a.patch(f"{a_url}/v1/services/feed/instances/10.0.0.1:80", json={"weight": i % 200},
                  timeout=10)  # fmt: skip
        patched = time.perf_counter()
        t.join()
        r = got["r"]
        assert isinstance(r, requests.Response) and r.status_code == 200
        index = int(r.headers["X-Atlas-Index"])
        if i >= 10:
            out.append(float(got["t"]) - t0)  # type: ignore[arg-type]
            patch_s.append(patched - t0)
    return out


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def workers_of(master: int) -> list[int]:
    """The gunicorn master's worker pids."""
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


async def _get(port: int, path: str) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    done = time.perf_counter()
    writer.close()
    return data, done


def waiters(a_url: str, b_port: int, b_master: int, n: int) -> dict[str, float]:
    """n concurrent blocking queries on B, one PATCH through A wakes them all."""
    url = f"http://127.0.0.1:{b_port}/v1/services/feed/instances"
    index = int(requests.get(url, headers=AUTH, timeout=10).headers["X-Atlas-Index"])
    pids = workers_of(b_master)
    base = sum(rss_kib(p) for p in pids)

    def parked() -> int:  # one worker: its /v1/info counts every waiter
        info = requests.get(f"http://127.0.0.1:{b_port}/v1/info", headers=AUTH, timeout=30)
        return int(info.json()["view"]["waiters"])

    async def run() -> dict[str, float]:
        tasks = [
            asyncio.create_task(
                _get(b_port, f"/v1/services/feed/instances?index={index}&wait=120s")
            )
            for _ in range(n)
        ]
        deadline = time.monotonic() + 120
        held = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            held = await asyncio.to_thread(parked)
            if all(t.done() for t in tasks) or held >= n * 0.99:
                break
        grown = sum(rss_kib(p) for p in pids) - base
        t0 = time.perf_counter()
        await asyncio.to_thread(
            requests.patch, f"{a_url}/v1/services/feed/instances/10.0.0.2:80",
            json={"weight": 3}, headers=AUTH, timeout=30,
        )  # fmt: skip
        results = await asyncio.gather(*tasks, return_exceptions=True)
        ok = [r for r in results if isinstance(r, tuple) and r[0].startswith(b"HTTP/1.1 200")]
        refused = [r for r in results if isinstance(r, tuple) and b" 503 " in r[0][:20]]
        lat = [r[1] - t0 for r in ok if r[1] >= t0]
        return {
            "answered": len(ok),
            "refused": len(refused),
            "woken": len(lat),
            "kib_per_waiter": grown / max(n, 1),
            "p50_ms": pct(lat, 50) * 1000,
            "p99_ms": pct(lat, 99) * 1000,
        }

    return asyncio.run(run())


def main() -> None:
    """Run both measurements and print the ratios."""
    moto = start_moto()
    zk = start_zk()
    a = start_atlas(moto, "block", workers=1, threads=4, ATLAS_ZK_HOSTS=zk.address)
    b = start_atlas(moto, "block", workers=1, threads=4, ATLAS_ZK_HOSTS=zk.address)
    s = requests.Session()
    s.headers.update(AUTH)
    s.post(f"{a.url}/v1/services", json={"name": "feed"}, timeout=10).raise_for_status()
    for i in range(20):
        s.put(f"{a.url}/v1/services/feed/instances/10.0.0.{i}:80", json={}, timeout=10)
    for _ in range(200):
        if (
            s.get(f"{b.url}/v1/services/feed/instances", timeout=10).headers.get("X-Atlas-Source")
            == "view"
        ):
            break
        time.sleep(0.05)
    floor = kazoo_floor(zk.address, N)
    patch_s: list[float] = []
    woken = wake_latency(a.url, b.url, N, patch_s)
    print(f"raw kazoo set -> DataWatch         {summary(floor)}")
    print(f"PATCH via A -> blocking GET on B  {summary(woken)}")
    print(f"  of which the PATCH's own answer {summary(patch_s)}  (DynamoDB write + mirror)")
    print(f"ratio at p50                      {pct(woken, 50) / pct(floor, 50):.2f}x  (goal <= 5x)")
    print()
    print(f"{WAITERS} concurrent blocking queries on one Atlas process, one PATCH wakes all:")
    models = {
        "gthread 1 worker x 1024 threads": {"ATLAS_WORKER_CLASS": "gthread"},
        "gevent 1 worker": {"ATLAS_WORKER_CLASS": "gevent"},
    }
    for name, env in models.items():
        threads = 1024 if env["ATLAS_WORKER_CLASS"] == "gthread" else 4
        w = start_atlas(moto, "block", workers=1, threads=threads, ATLAS_ZK_HOSTS=zk.address,
                        ATLAS_MAX_WAITERS=str(WAITERS + 10), **env)  # fmt: skip
        for _ in range(200):
            if (
                s.get(f"{w.url}/v1/services/feed/instances", timeout=10).headers.get(
                    "X-Atlas-Source"
                )
                == "view"
            ):
                break
            time.sleep(0.05)
        r = waiters(a.url, w.port, w.process.proc.pid, WAITERS)
        print(
            f"{name:32s} answered {r['answered']:5.0f}  woken {r['woken']:5.0f}  "
            f"503 {r['refused']:4.0f}  {r['kib_per_waiter']:6.1f} KiB/waiter  "
            f"wake p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
        )
        w.stop()


if __name__ == "__main__":
    main()
