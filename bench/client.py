"""Benchmark the smart client (one run; starts its own HAProxy and backends on 127.0.0.1).

1. Overhead: p50 latency of ``service://fast/`` through HAProxy with
   atlas.client against plain ``requests`` straight to the backend, both with
   keep-alive (goal: ratio <= 1.3).
2. Parallel: 50 calls to a backend that takes 20 ms, ``Session.map`` against
   the same 50 one after another (goal: ratio >= 10), with the breakdown of
   what bounds it: the HAProxy hop (map straight to the backend), the pool
   size (maps with smaller pools, and the connections they open and throw
   away), thread start-up (``gather`` starting its threads per call against
   ``Session.map`` reusing the session's), and the client's own CPU (a map of
   50 to a backend that answers at once).

Usage: .venv/bin/python bench/client.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import requests

from atlas.client import Session, gather
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
            run(proxy, fast, slow, args.requests, args.rounds)
        finally:
            proxy.stop()
            fast.stop()
            slow.stop()


def run(proxy: StaticHAProxy, fast: ChildBackend, slow: ChildBackend, n: int, rounds: int) -> None:
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

    plain.close()
    no_env.close()
    atlas.close()
    parallel(proxy, fast, slow)


class Discards(logging.Handler):
    """Counts urllib3's "Connection pool is full, discarding connection" warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "pool is full" in record.getMessage():
            self.count += 1


def parallel(proxy: StaticHAProxy, fast: ChildBackend, slow: ChildBackend) -> None:
    """50 calls to the 20 ms backend: sequential, Session.map, and what bounds the map."""
    discards = Discards()
    pool_log = logging.getLogger("urllib3.connectionpool")
    pool_log.addHandler(discards)
    pool_log.propagate = False  # counted, not printed
    n = 50
    via = [("GET", f"service://slow/{i}") for i in range(n)]
    direct = [("GET", f"{slow.url}/{i}") for i in range(n)]
    instant = [("GET", f"service://fast/{i}") for i in range(n)]
    sessions = {size: Session(sidecar_url=proxy.url, pool_maxsize=size) for size in (10, 32, 64)}
    default = sessions[64]
    variants: dict[str, Callable[[], list[object]]] = {
        "sequential via HAProxy": lambda: [default.get(url) for _method, url in via],
        "Session.map via HAProxy": lambda: default.map(via, concurrency=n),
        "Session.map direct to the backend": lambda: default.map(direct, concurrency=n),
        "Session.map via HAProxy, pool_maxsize=32": lambda: sessions[32].map(via, concurrency=n),
        "Session.map via HAProxy, pool_maxsize=10": lambda: sessions[10].map(via, concurrency=n),
        "gather via HAProxy (threads started per call)": lambda: gather(
            *[lambda url=url: default.get(url) for _method, url in via], concurrency=n
        ),
        "Session.map to a 0 ms backend (client CPU)": lambda: default.map(instant, concurrency=n),
    }
    for run_once in variants.values():  # warm up: connections, pools and threads
        run_once()
    times: dict[str, list[float]] = {name: [] for name in variants}
    thrown: dict[str, int] = dict.fromkeys(variants, 0)
    rounds = 7
    for _ in range(rounds):  # interleaved so that machine noise hits every variant alike
        for name, run_once in variants.items():
            before = discards.count
            start = time.perf_counter()
            results = run_once()
            times[name].append(time.perf_counter() - start)
            thrown[name] += discards.count - before
            bad = [r for r in results if not isinstance(r, requests.Response) or not r.ok]
            assert not bad, bad
    med = {name: statistics.median(values) * 1000 for name, values in times.items()}
    seq = med["sequential via HAProxy"]
    print(f"== parallel: {n} calls to a 20 ms backend, concurrency {n} (median of {rounds}) ==")
    print(f"{'':48} {'ms':>8} {'speed-up':>9} {'conns thrown away':>18}")
    for name, value in med.items():
        print(f"{name:48} {value:8.1f} {seq / value:8.1f}x {thrown[name] / rounds:18.0f}")
    print(f"speed-up of Session.map: {seq / med['Session.map via HAProxy']:.1f}x  (goal >= 10)")
    print(
        f"  HAProxy hop: {med['Session.map via HAProxy'] - med['Session.map direct to the backend']:+.1f} ms;"
        f" thread start-up: {med['gather via HAProxy (threads started per call)'] - med['Session.map via HAProxy']:+.1f} ms;"
        f" pool of 10 instead of 64: {med['Session.map via HAProxy, pool_maxsize=10'] - med['Session.map via HAProxy']:+.1f} ms;"
        f" client CPU for {n} calls: {med['Session.map to a 0 ms backend (client CPU)']:.1f} ms"
        f" (no map of {n} beats the larger of 20 ms and that)"
    )
    for session in sessions.values():
        session.close()


if __name__ == "__main__":
    main()
