"""Which gunicorn serving model holds 1,000 parked blocking queries on this 2-core machine?

Runs bench/waiter_app.py (a request parks until a broadcast, like a blocking query woken by a
ZooKeeper watch) under each candidate, parks N concurrent requests (asyncio client, one
connection each), then wakes them all with one broadcast. Prints per candidate: whether all N
parked, worker memory per parked request (RSS growth / N), and wake-up latency p50/p99 from the
broadcast to each full response. BENCH_WAITERS (default 1000) changes N.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atlas.stack.procs import free_port, wait_for_port
from bench._stack import pct

N = int(os.environ.get("BENCH_WAITERS", "1000"))
WORKERS = 2
CANDIDATES = {
    # gthread holds a thread per parked request, and one worker may accept most connections:
    # the pool must hold N in each worker.
    "gthread 2 workers x 1024 threads": ["--worker-class", "gthread", "--threads", "1024"],
    "gevent 2 workers (greenlets)": ["--worker-class", "gevent", "--worker-connections", "2000"],
}


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Broadcaster:
    """Accepts one connection per worker; `wake()` sends each a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def wake(self) -> float:
        t0 = time.perf_counter()
        for c in self.conns:
            c.sendall(b"x")
        return t0


async def http_get(port: int, path: str) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    done = time.perf_counter()
    writer.close()
    return data, done


def body(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def waiting(port: int) -> dict[int, int]:
    seen: dict[int, int] = {}
    for _ in range(40):
        raw, _ = await http_get(port, "/waiting")
        b = body(raw)
        seen[b["pid"]] = b["waiting"]
    return seen


async def run(port: int, bc: Broadcaster) -> dict[str, object]:
    await http_get(port, "/waiting")  # start the listeners
    for _ in range(100):
        if len(bc.conns) >= WORKERS:
            break
        await asyncio.sleep(0.05)
    pids = set()
    for _ in range(50):
        pids |= set(await waiting(port))
        if len(pids) >= WORKERS:
            break
    base = {pid: rss_kib(pid) for pid in pids}
    tasks = [asyncio.create_task(http_get(port, "/wait")) for _ in range(N)]
    parked = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        parked = sum((await waiting(port)).values())
        if parked >= N:
            break
    grown = sum(rss_kib(pid) - base[pid] for pid in pids)
    t0 = bc.wake()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    ok = [r for r in results if isinstance(r, tuple) and r[0].startswith(b"HTTP/1.1 200")]
    lat = [r[1] - t0 for r in ok]
    return {"parked": parked, "ok": len(ok), "kib_per_waiter": grown / max(parked, 1),
            "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
            "rss_mib": sum(rss_kib(p) for p in pids) / 1024}  # fmt: skip


def main() -> None:
    """Run every candidate and print one line each."""
    print(f"{N} parked requests, {WORKERS} workers, one broadcast wakes all")
    for name, extra in CANDIDATES.items():
        bc = Broadcaster()
        port = free_port()
        env = {**os.environ, "WAKE_PORT": str(bc.port), "PYTHONPATH": str(Path(__file__).parent)}
        argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                "--workers", str(WORKERS), "--timeout", "120", "--log-level", "warning",
                *extra, "waiter_app:app"]  # fmt: skip
        proc = subprocess.Popen(argv, env=env)
        try:
            wait_for_port(port, timeout=30, proc=proc)
            r = asyncio.run(run(port, bc))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            bc.sock.close()
        print(f"{name:34s} parked {r['parked']:5d}/{N}  answered {r['ok']:5d}  "
              f"{r['kib_per_waiter']:6.1f} KiB/waiter  workers RSS {r['rss_mib']:6.1f} MiB  "
              f"wake p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
