"""What Atlas's metrics middleware costs: requests/s of one hello-world Flask route without and
with it (prometheus_client in multiprocess mode, as Atlas runs), under the same gunicorn
settings, measured side by side in one run (rounds interleaved so machine load hits both)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from atlas.stack import AtlasServer
from bench._stack import WORKDIR, _stop, wrk

WORKERS, THREADS, ROUNDS, SECONDS = 2, 4, 3, 6


def _serve(app: str, name: str) -> AtlasServer:
    server = AtlasServer(WORKDIR / name, {"PYTHONPATH": str(Path(__file__).parent)},
                         workers=WORKERS, threads=THREADS, app=app, name=name)  # fmt: skip
    server.start()
    _stop.append(server)
    return server


def main() -> None:
    """Run the comparison and print the ratio."""
    plain = _serve("metrics_hello_app:plain", "plain")
    measured = _serve("metrics_hello_app:instrumented", "instrumented")
    wrk(plain.url + "/", seconds=2)  # warm-up
    wrk(measured.url + "/", seconds=2)
    rounds = [
        (wrk(plain.url + "/", seconds=SECONDS), wrk(measured.url + "/", seconds=SECONDS))
        for _ in range(ROUNDS)
    ]
    plain_rps = max(r[0] for r in rounds)
    measured_rps = max(r[1] for r in rounds)
    text = requests.get(measured.url + "/metrics", timeout=10).text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('atlas_http_requests_total{method="GET",route="/",status="200"}')
    )
    print(f"gunicorn gthread {WORKERS} workers x {THREADS} threads, wrk 2 threads x 32 connections")
    print(f"hello-world, no metrics          {plain_rps:9.0f} req/s")
    print(f"hello-world, metrics middleware  {measured_rps:9.0f} req/s")
    print(f"requests counted in one scrape   {counted:9.0f} (both workers, multiprocess mode)")
    print(f"ratio with / without metrics     {measured_rps / plain_rps:9.2f}")
    per_request_us = (1 / measured_rps - 1 / plain_rps) * 1e6 * WORKERS
    print(f"cost per request                 {per_request_us:9.1f} us of worker time (approx.)")


if __name__ == "__main__":
    main()
