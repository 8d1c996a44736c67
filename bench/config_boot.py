"""Boot-time config: a full `atlas.client.config.load()` against `GET /healthz` on the same Atlas.

load() = one GET /v1/services/{s}/config with a service token (token lookup and config
document from memory once cached, secrets opened, audit queued) + merge with a defaults module + the encrypted
last-known-good copy written to disk. /healthz touches nothing. Both open a new connection per
call, as a booting process does; they alternate in one run and print p50/p99 and the ratio.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from atlas.client.config import load
from bench._stack import ADMIN, pct, start_atlas, start_moto, start_zk, summary

N = int(os.environ.get("BENCH_N", "400"))
WARMUP = 30


def main() -> None:
    """Seed a service (5 plain keys, 2 secrets), then measure both paths side by side."""
    moto = start_moto()
    zk = start_zk()
    # With ZooKeeper: the config document and the token lookup come from memory (the view's
    # config stamp and revocation stamp say they are current); secrets are opened per call.
    atlas = start_atlas(moto, "boot", ATLAS_ZK_HOSTS=zk.address)
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {ADMIN}"
    s.post(f"{atlas.url}/v1/services", json={"name": "web"}, timeout=10).raise_for_status()
    cfg = f"{atlas.url}/v1/services/web/config"
    for i in range(5):
        s.put(f"{cfg}/PLAIN_{i}", json={"value": f"value-{i}"}, timeout=10).raise_for_status()
    for name in ("DB_PASSWORD", "API_KEY"):
        s.put(
            f"{cfg}/{name}", json={"value": "x" * 32, "secret": True}, timeout=10
        ).raise_for_status()
    token = s.post(f"{atlas.url}/v1/services/web/tokens", timeout=10).json()["token"]
    defaults = types.ModuleType("defaults")
    defaults.DEBUG = False  # type: ignore[attr-defined]
    defaults.WORKERS = 4  # type: ignore[attr-defined]
    cache_dir = tempfile.mkdtemp(prefix="atlas-bench-cache-")
    key = base64.b64encode(os.urandom(32)).decode()

    def boot() -> None:
        settings = load("web", defaults=defaults, atlas_url=atlas.url, token=token,
                        cache_dir=cache_dir, cache_key=key, required=("DB_PASSWORD",))  # fmt: skip
        assert settings.source == "atlas"

    def healthz() -> None:
        requests.get(f"{atlas.url}/healthz", timeout=10).raise_for_status()

    load_s: list[float] = []
    health_s: list[float] = []
    for i in range(N + WARMUP):
        t0 = time.perf_counter()
        healthz()
        t1 = time.perf_counter()
        boot()
        t2 = time.perf_counter()
        if i >= WARMUP:
            health_s.append(t1 - t0)
            load_s.append(t2 - t1)

    print(f"GET /healthz (new connection)   {summary(health_s)}")
    print(f"load() (token, 7 keys, 2 secrets) {summary(load_s)}")
    print(
        f"ratio at p50                    {pct(load_s, 50) / pct(health_s, 50):.2f}x  (goal <= 2x)"
    )
    print(f"ratio at p99                    {pct(load_s, 99) / pct(health_s, 99):.2f}x")


if __name__ == "__main__":
    main()
