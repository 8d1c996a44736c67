"""Benchmark the smart client (one run; starts its own HAProxy and backends on 127.0.0.1).

1. Overhead: p50 latency of ``service://fast/`` through HAProxy with
   atlas.client against plain ``requests`` straight to the backend, both with
   keep-alive (goal: ratio <= 1.3).
2. Parallel: 50 calls to a backend that takes 20 ms, ``Session.map`` against
   the same 50 one after another (goal: ratio >= 10).

Usage: .venv/bin/python bench/client.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import requests

from atlas.client import Session
from atlas.client.testing import Backend, Behaviour, StaticHAProxy


def sample(call: Callable[[], object], n: int) -> list[float]:
    """Latencies in ms of n sequential calls."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _serve(name: str, delay: float, conn: Connection) -> None:
    backend = Backend(name, Behaviour(delay=delay)).start()
    conn.send(backend.address)
    conn.recv()  # until the parent says stop
    backend.stop()


class ChildBackend:
    """A Backend in its own process, so its threads do not share the client's GIL."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(name, delay, child), daemon=True
        )
        self.process.start()
        self.address: tuple[str, int] = self.conn.recv()
        self.url = f"http://{self.address[0]}:{self.address[1]}"

    def stop(self) -> None:
        """Stop the child."""
        self.conn.send("stop")
        self.process.join(timeout=10)


def main() -> None:
    """Run both benchmarks and print the numbers and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="per client per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    fast = ChildBackend("fast")
    slow = ChildBackend("slow", delay=0.020)
    with tempfile.TemporaryDirectory() as tmp:
        proxy = StaticHAProxy(Path(tmp), {"fast": [fast.address], "slow": [slow.address]}).start()
        try:
            run(proxy, fast, args.requests, args.rounds)
        finally:
            proxy.stop()
            fast.stop()
            slow.stop()


def run(proxy: StaticHAProxy, fast: ChildBackend, n: int, rounds: int) -> None:
    """The measurements themselves."""
    plain = requests.Session()
    no_env = requests.Session()
    no_env.trust_env = False  # skips requests' per-call proxy scan of os.environ
    atlas = Session(sidecar_url=proxy.url)
    clients: dict[str, Callable[[], object]] = {
        "requests -> backend (direct)": lambda: plain.get(fast.url + "/"),
        "requests -> backend, trust_env=False": lambda: no_env.get(fast.url + "/"),
        "requests -> HAProxy (header)": lambda: plain.get(
            proxy.url + "/", headers={"Atlas-Service": "fast"}
        ),
        "atlas.client http:// -> backend": lambda: atlas.get(fast.url + "/"),
        "atlas.client service://fast/": lambda: atlas.get("service://fast/"),
    }
    for call in clients.values():  # warm up connections and code paths
        sample(call, 100)
    results: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(rounds):  # interleaved so that machine noise hits every client alike
        for name, call in clients.items():
            results[name] += sample(call, n)

    print(f"== overhead: {rounds} x {n} sequential keep-alive GETs per client ==")
    print(f"{'client':38} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for name, values in results.items():
        print(f"{name:38} {pct(values, 0.5):8.3f} {pct(values, 0.9):8.3f} {pct(values, 0.99):8.3f}")
    direct = pct(results["requests -> backend (direct)"], 0.5)
    service = pct(results["atlas.client service://fast/"], 0.5)
    via_proxy = pct(results["requests -> HAProxy (header)"], 0.5)
    print(
        f"p50 ratio service:// via HAProxy / requests direct: {service / direct:.2f}x  (goal <= 1.3)"
    )
    bare = pct(results["requests -> backend, trust_env=False"], 0.5)
    print(
        f"  of which the HAProxy hop: {via_proxy / direct:.2f}x;"
        f" the client adapter: {service / via_proxy:.2f}x"
    )
    print(
        "  like for like (service:// skips requests' proxy scan of os.environ; so does a"
        f" direct requests.Session with trust_env=False): {service / bare:.2f}x"
    )

    calls = [("GET", f"service://slow/{i}") for i in range(50)]
    atlas.map(calls, concurrency=50)  # warm up: open 50 keep-alive connections
    sequential, parallel = [], []
    for _ in range(3):
        start = time.perf_counter()
        for _method, url in calls:
            atlas.get(url).raise_for_status()
        sequential.append(time.perf_counter() - start)
        start = time.perf_counter()
        results_map = atlas.map(calls, concurrency=50)
        parallel.append(time.perf_counter() - start)
        bad = [r for r in results_map if not isinstance(r, requests.Response) or not r.ok]
        assert not bad, bad
    seq, par = statistics.median(sequential), statistics.median(parallel)
    print("== parallel: 50 calls to a 20 ms backend through HAProxy (median of 3) ==")
    print(f"sequential: {seq * 1000:8.1f} ms")
    print(f"Session.map(concurrency=50): {par * 1000:8.1f} ms")
    print(f"speed-up: {seq / par:.1f}x  (goal >= 10)")
    plain.close()
    no_env.close()
    atlas.close()


if __name__ == "__main__":
    main()
