"""Requests/s of GET /v1/services/{name}/instances (20 instances) against a hello-world
flask-restful endpoint under the same gunicorn settings, measured side by side in one run.

Two Atlas processes on the same data: one with ZooKeeper, serving the read from its in-memory
view (`X-Atlas-Source: view`), one without, reading DynamoDB (`store`). Also measures the
DynamoDB endpoint on its own (the same Query through pynamodb at the same concurrency), which
is what bounds the store read here: moto server is a single Python process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from atlas.config import Settings
from atlas.registry import Registry, build_models_for
from atlas.stack import AtlasServer
from bench._stack import ADMIN, WORKDIR, _stop, start_atlas, start_moto, start_zk, wrk

WORKERS, THREADS = 2, 4


def main() -> None:
    """Run the comparison and print the ratio."""
    moto = start_moto()
    zk = start_zk()
    atlas = start_atlas(moto, "bench", workers=WORKERS, threads=THREADS)
    viewed = start_atlas(moto, "bench", workers=WORKERS, threads=THREADS, ATLAS_ZK_HOSTS=zk.address)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    # Written through the process with ZooKeeper, so the change is published to the view.
    requests.post(f"{viewed.url}/v1/services", json={"name": "catalog"}, headers=auth, timeout=10)
    for i in range(20):
        requests.put(f"{viewed.url}/v1/services/catalog/instances/10.0.0.{i}:8080", json={},
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
    view_url = f"{viewed.url}/v1/services/catalog/instances"
    assert len(requests.get(url, headers=auth, timeout=10).json()["items"]) == 20
    for _ in range(200):  # the viewed process's workers: every one serves from its view
        r = requests.get(view_url, headers=auth, timeout=10)
        if r.headers.get("X-Atlas-Source") == "view" and len(r.json()["items"]) == 20:
            break
        time.sleep(0.05)
    stored = requests.get(url + "?consistent=true", headers=auth, timeout=10)
    import difflib

    assert r.content == stored.content, "".join(
        difflib.unified_diff(
            r.text.replace(", {", ",\n{").splitlines(True),
            stored.text.replace(", {", ",\n{").splitlines(True),
        )
    )
    wrk(url, seconds=2, headers=auth)  # warm-up
    wrk(view_url, seconds=2, headers=auth)
    wrk(hello.url + "/", seconds=2)
    one = f"{atlas.url}/v1/services/catalog"
    rounds = []
    for _ in range(2):  # interleave so drift in machine load hits all of them
        h = wrk(hello.url + "/", seconds=6)
        v = wrk(view_url, seconds=6, headers=auth)
        a = wrk(url, seconds=6, headers=auth)
        g = wrk(one, seconds=6, headers=auth)
        b = wrk(f"{bare.url}/v1/services/catalog/instances", seconds=6, headers=auth)
        rounds.append((h, a, g, b, v))
    hello_rps = max(r[0] for r in rounds)
    atlas_rps = max(r[1] for r in rounds)
    get_rps = max(r[2] for r in rounds)
    bare_rps = max(r[3] for r in rounds)
    view_rps = max(r[4] for r in rounds)
    sources = requests.get(f"{viewed.url}/v1/info", headers=auth, timeout=10).json()["view"]

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

    model = os.environ.get("ATLAS_WORKER_CLASS", "gevent")
    print(f"gunicorn {model} {WORKERS} workers (x {THREADS} threads for gthread), "
          "wrk 2 threads x 32 connections")  # fmt: skip
    print(f"hello-world flask-restful      {hello_rps:9.0f} req/s")
    print(f"Atlas GET instances, view      {view_rps:9.0f} req/s (X-Atlas-Source: view)")
    print(f"Atlas GET instances, store     {atlas_rps:9.0f} req/s (no ZooKeeper: DynamoDB)")
    print(
        f"DynamoDB endpoint alone        {raw_rps:9.0f} queries/s (registry.list_instances, same concurrency)"
    )
    print(f"Atlas GET one service          {get_rps:9.0f} req/s (one GetItem)")
    print(f"Atlas, store in memory         {bare_rps:9.0f} req/s (same endpoint, no DynamoDB)")
    print(f"ratio view / hello-world       {view_rps / hello_rps:9.2f}   (goal >= 0.7)")
    print(f"ratio store / hello-world      {atlas_rps / hello_rps:9.2f}")
    print(f"ratio Atlas layer / hello      {bare_rps / hello_rps:9.2f}   (what Atlas itself costs)")
    print(f"ratio GET service / hello      {get_rps / hello_rps:9.2f}")
    print(f"ratio store / DynamoDB alone   {atlas_rps / raw_rps:9.2f}")
    print(f"one viewed worker's reads      {sources['reads']}")


if __name__ == "__main__":
    main()
