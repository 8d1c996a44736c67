"""Requests/s of GET /v1/services/{name}/instances (20 instances) against a hello-world
flask-restful endpoint under the same gunicorn settings, measured side by side in one run.

Also measures the DynamoDB endpoint on its own (the same Query through pynamodb at the same
concurrency), which is what bounds Atlas here: moto server is a single Python process.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from atlas.config import Settings
from atlas.registry import Registry, build_models_for
from atlas.stack import AtlasServer
from bench._stack import ADMIN, WORKDIR, _stop, start_atlas, start_moto, wrk

WORKERS, THREADS = 2, 4


def main() -> None:
    """Run the comparison and print the ratio."""
    moto = start_moto()
    atlas = start_atlas(moto, "bench", workers=WORKERS, threads=THREADS)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    requests.post(f"{atlas.url}/v1/services", json={"name": "catalog"}, headers=auth, timeout=10)
    for i in range(20):
        requests.put(f"{atlas.url}/v1/services/catalog/instances/10.0.0.{i}:8080", json={},
                     headers=auth, timeout=10)  # fmt: skip
    hello = AtlasServer(WORKDIR / "hello", {"PYTHONPATH": str(Path(__file__).parent)},
                        workers=WORKERS, threads=THREADS, app="hello_app:app", name="hello")  # fmt: skip
    hello.start()
    _stop.append(hello)
    bare = AtlasServer(WORKDIR / "bare", {"PYTHONPATH": str(Path(__file__).parent),
                       "ATLAS_ADMIN_TOKENS": ADMIN}, workers=WORKERS, threads=THREADS,
                       app="store_free_app:app", name="bare")  # fmt: skip
    bare.start()
    _stop.append(bare)

    url = f"{atlas.url}/v1/services/catalog/instances"
    assert len(requests.get(url, headers=auth, timeout=10).json()["items"]) == 20
    wrk(url, seconds=2, headers=auth)  # warm-up
    wrk(hello.url + "/", seconds=2)
    one = f"{atlas.url}/v1/services/catalog"
    rounds = []
    for _ in range(2):  # interleave so drift in machine load hits all three
        h = wrk(hello.url + "/", seconds=6)
        a = wrk(url, seconds=6, headers=auth)
        g = wrk(one, seconds=6, headers=auth)
        b = wrk(f"{bare.url}/v1/services/catalog/instances", seconds=6, headers=auth)
        rounds.append((h, a, g, b))
    hello_rps = max(r[0] for r in rounds)
    atlas_rps = max(r[1] for r in rounds)
    get_rps = max(r[2] for r in rounds)
    bare_rps = max(r[3] for r in rounds)

    settings = Settings(realm="bench", dynamodb_endpoint=moto.url, admin_tokens=(ADMIN,))
    reg = Registry(build_models_for(settings))
    count = [0]
    stop_at = time.monotonic() + 6

    def query_loop() -> None:
        while time.monotonic() < stop_at:
            reg.list_instances("catalog", 100)
            count[0] += 1

    threads = [threading.Thread(target=query_loop) for _ in range(WORKERS * THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    raw_rps = count[0] / 6

    print(f"gunicorn gthread {WORKERS} workers x {THREADS} threads, wrk 2 threads x 32 connections")
    print(f"hello-world flask-restful      {hello_rps:9.0f} req/s")
    print(f"Atlas GET instances (20)       {atlas_rps:9.0f} req/s")
    print(
        f"DynamoDB endpoint alone        {raw_rps:9.0f} queries/s (registry.list_instances, same concurrency)"
    )
    print(f"Atlas GET one service          {get_rps:9.0f} req/s (one GetItem)")
    print(f"Atlas, store in memory         {bare_rps:9.0f} req/s (same endpoint, no DynamoDB)")
    print(f"ratio Atlas / hello-world      {atlas_rps / hello_rps:9.2f}   (goal >= 0.7)")
    print(f"ratio Atlas layer / hello      {bare_rps / hello_rps:9.2f}   (what Atlas itself costs)")
    print(f"ratio GET service / hello      {get_rps / hello_rps:9.2f}")
    print(f"ratio Atlas / DynamoDB alone   {atlas_rps / raw_rps:9.2f}")


if __name__ == "__main__":
    main()
