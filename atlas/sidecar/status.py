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

from atlas.metrics.sidecar import CONTENT_TYPE, render

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


def render_metrics(status: dict[str, Any]) -> str:
    """Prometheus text exposition of a sidecar status dict (prometheus_client, atlas.metrics)."""
    return render(status, failure_kinds=FAILURE_KINDS).decode()


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
                    ctype = CONTENT_TYPE
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
