"""Atlas's Prometheus metrics (prometheus_client; multiprocess mode under gunicorn).

- `atlas.metrics.multiproc`: the gunicorn hooks' side (a fresh PROMETHEUS_MULTIPROC_DIR per
  server start, a dead worker's live gauges removed);
- `atlas.metrics.instruments`: every metric of the API server, and the Prometheus
  implementations of the registry's and the mirror's metrics interfaces;
- `atlas.metrics.web`: the Flask side (requests by method, route and status; GET /metrics);
- `atlas.metrics.sidecar`: the sidecar's exposition, rendered from its status dict.

This module imports nothing: prometheus_client picks single- or multi-process mode when it is
first imported, so `atlas.gunicorn_conf` must be able to set the directory before that.
"""
