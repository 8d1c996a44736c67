"""Prometheus text-format metrics for one process (requests by route and status, latency)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from flask import Flask, Response, g, request

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))


class Metrics:
    """Counters and a latency histogram, rendered at GET /metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)

    def init_app(self, app: Flask) -> None:
        """Time every request and serve /metrics."""

        @app.before_request
        def _start() -> None:
            g._atlas_t0 = time.perf_counter()

        @app.after_request
        def _count(resp: Response) -> Response:
            t0 = g.get("_atlas_t0")
            if t0 is not None:
                rule = request.url_rule.rule if request.url_rule else "unmatched"
                self.observe(request.method, rule, resp.status_code, time.perf_counter() - t0)
            return resp

        @app.get("/metrics")
        def _metrics() -> Response:
            return Response(self.render(), mimetype="text/plain; version=0.0.4")

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one request."""
        with self._lock:
            self.requests[(method, route, status)] += 1
            buckets = self.latency[route]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.latency_sum[route] += seconds

    def render(self) -> str:
        """The Prometheus exposition text."""
        lines = [
            "# HELP atlas_http_requests_total HTTP requests by method, route and status.",
            "# TYPE atlas_http_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(
                    f'atlas_http_requests_total{{method="{method}",route="{route}",'
                    f'status="{status}"}} {n}'
                )
            lines += [
                "# HELP atlas_http_request_seconds Request latency by route.",
                "# TYPE atlas_http_request_seconds histogram",
            ]
            for route, buckets in sorted(self.latency.items()):
                for bound, n in zip(BUCKETS, buckets, strict=True):
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(
                        f'atlas_http_request_seconds_bucket{{route="{route}",le="{le}"}} {n}'
                    )
                lines.append(
                    f'atlas_http_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}'
                )
                lines.append(f'atlas_http_request_seconds_count{{route="{route}"}} {buckets[-1]}')
        return "\n".join(lines) + "\n"
