"""The apps of bench/metrics_cost.py: one hello-world route, without and with Atlas's metrics
middleware (atlas.metrics.web: every request counted and timed, in multiprocess mode)."""

from flask import Flask

from atlas.metrics import web
from atlas.metrics.instruments import AtlasMetrics


def _hello_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    return app


plain = _hello_app()
instrumented = _hello_app()
web.init_app(instrumented, AtlasMetrics(realm="bench"))
