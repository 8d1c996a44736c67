"""The Flask side of Atlas's metrics: every request counted and timed, GET /metrics.

A WSGI wrapper takes the start time and counts requests in flight; an `after_request` hook
(which Flask runs for every response it makes, error pages and unmatched routes included)
records method, route template and status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, request

from atlas.metrics.instruments import CONTENT_TYPE, AtlasMetrics

#: Methods that get a label of their own; any other is `other`.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
_T0 = "atlas.metrics.t0"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def init_app(app: Flask, metrics: AtlasMetrics) -> None:
    """Count and time every request of `app`, and serve `metrics` at GET /metrics."""
    inner: WSGIApp = app.wsgi_app
    in_flight = metrics.http_in_flight
    # Label children by key: labels() takes a lock and builds a tuple; a dict read does not.
    counters: dict[tuple[str, str, int], Any] = {}
    timers: dict[tuple[str, str], Any] = {}

    def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[_T0] = time.perf_counter()
        in_flight.inc()
        try:
            return inner(environ, start_response)
        finally:
            in_flight.dec()

    app.wsgi_app = timed  # type: ignore[method-assign]

    @app.after_request
    def _record(resp: Response) -> Response:
        t0 = request.environ.get(_T0)
        if t0 is None:
            return resp
        method = request.method if request.method in METHODS else "other"
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        key = (method, route, resp.status_code)
        counter = counters.get(key)
        if counter is None:
            counter = counters.setdefault(
                key, metrics.http_requests.labels(method, route, str(resp.status_code))
            )
        timer = timers.get(key[:2])
        if timer is None:
            timer = timers.setdefault(key[:2], metrics.http_duration.labels(method, route))
        counter.inc()
        timer.observe(time.perf_counter() - t0)
        return resp

    @app.get("/metrics")
    def metrics_view() -> Response:
        return Response(metrics.render(), content_type=CONTENT_TYPE)
