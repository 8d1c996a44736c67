"""A tiny HTTP backend for the local stack and tests: answers every request with its own name."""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name: str) -> type[BaseHTTPRequestHandler]:
    """A request handler class that reports `name`, the path and the Atlas-Service header."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps(
                {
                    "backend": name,
                    "method": self.command,
                    "path": self.path,
                    "service": self.headers.get("Atlas-Service"),
                    "request_id": self.headers.get("X-Request-Id"),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def main() -> None:
    """Serve on 127.0.0.1:PORT until killed."""
    p = argparse.ArgumentParser(description="tiny echo backend")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    args = p.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.name)).serve_forever()


if __name__ == "__main__":
    main()
