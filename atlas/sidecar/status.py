"""A tiny read-only HTTP endpoint on loopback: GET /status (JSON) and GET /metrics (Prometheus).

Both are rendered from the status dict the loop publishes after every step (an immutable
copy), so the server threads never touch the loop's state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Fault kinds the loop counts (`failures` in /status); always exported, 0 when none yet.
FAILURE_KINDS = (
    "check",
    "check_timeout",
    "config_write",
    "haproxy_exit",
    "haproxy_start",
    "reload",
    "render",
    "runtime",
    "state_file",
    "status_file",
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(status: dict[str, Any]) -> str:
    """Prometheus text exposition of a sidecar status dict."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP atlas_sidecar_{name} {help_}")
        lines.append(f"# TYPE atlas_sidecar_{name} {kind}")
        for labels, value in samples:
            lines.append(f"atlas_sidecar_{name}{labels} {value:g}")

    def num(key: str) -> float:
        value = status.get(key)
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
        )

    failures = dict.fromkeys(FAILURE_KINDS, 0) | dict(status.get("failures") or {})
    failing = status.get("failing") or {}
    pool = status.get("pool") or {}
    metric("reloads_total", "counter", "HAProxy reloads done.", [("", num("reloads"))])
    metric(
        "runtime_updates_total", "counter", "Runtime API changes applied.",
        [("", num("runtime_updates"))],
    )  # fmt: skip
    metric(
        "passes_total", "counter", "Batches of changes taken from ZooKeeper.", [("", num("passes"))]
    )
    metric(
        "failures_total", "counter", "Faults of the control loop, by kind (each retried).",
        [(f'{{kind="{_escape(k)}"}}', float(v)) for k, v in sorted(failures.items())],
    )  # fmt: skip
    metric(
        "failing", "gauge", "1 while a kind of fault is happening.",
        [(f'{{kind="{_escape(k)}"}}', 1.0 if k in failing else 0.0) for k in sorted(failures)],
    )  # fmt: skip
    metric(
        "haproxy_restarts_total", "counter", "HAProxy restarts after it exited.",
        [("", num("haproxy_restarts"))],
    )  # fmt: skip
    metric(
        "check_failures_total",
        "counter",
        "Configs haproxy -c refused.",
        [("", num("check_failures"))],
    )
    metric(
        "stale",
        "gauge",
        "1 while HAProxy does not run the latest view.",
        [("", float(bool(status.get("stale"))))],
    )
    metric(
        "in_sync",
        "gauge",
        "1 when HAProxy runs the whole latest view.",
        [("", float(bool(status.get("in_sync"))))],
    )
    metric(
        "zk_connected",
        "gauge",
        "1 while the ZooKeeper session is connected.",
        [("", float(bool(status.get("zk_connected"))))],
    )
    metric(
        "reload_required",
        "gauge",
        "1 while a reload waits.",
        [("", float(bool(status.get("reload_required"))))],
    )
    metric("services", "gauge", "Services HAProxy routes.", [("", num("services"))])
    metric("instances", "gauge", "Servers HAProxy has.", [("", num("instances"))])
    metric(
        "applied_index",
        "gauge",
        "ZooKeeper index applied up to (zxid).",
        [("", num("applied_index"))],
    )
    metric(
        "lagging_services",
        "gauge",
        "Services not applied in full.",
        [("", float(len(status.get("lagging") or {})))],
    )
    metric(
        "spare_backends", "gauge", "Spare backends for new services, by state.",
        [('{state="free"}', float(pool.get("free", 0))), ('{state="used"}', float(pool.get("used", 0)))],
    )  # fmt: skip
    metric(
        "spare_refills_total",
        "counter",
        "Reloads that refilled the spare pool.",
        [("", float(pool.get("refills", 0)))],
    )
    return "\n".join(lines) + "\n"


class StatusServer:
    """Serves `status()` on 127.0.0.1:<port> from daemon threads: /status JSON, /metrics text.

    `status` must be thread-safe (`Sidecar.status_dict` is); start/stop from one thread.
    """

    def __init__(self, status: Callable[[], dict[str, Any]], port: int, host: str = "127.0.0.1"):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/status"):
                    body = (json.dumps(status(), sort_keys=True) + "\n").encode()
                    ctype = "application/json"
                elif path == "/metrics":
                    body = render_metrics(status()).encode()
                    ctype = "text/plain; version=0.0.4; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()
