"""moto's DynamoDB/KMS endpoint, linearizable: one request at a time.

Stock `moto.server` is not atomic under concurrency: a conditional UpdateItem checks and then
sets in two Python steps, so two writers can both win one version, and a TransactWriteItems
that fails restores its start-of-transaction copy of a table over writes made meanwhile.
DynamoDB makes every request atomic (and every item linearizable). `SerializedApp` restores
that by running moto's WSGI app one request at a time, with the response materialized inside
the lock; the request body is read in full before the lock is taken, so a slow or stalled
client never holds the lock (it is not yet a request moto has started).

Run it as `python -m atlas.stack.motoserver -H 127.0.0.1 -p PORT` (what `MotoServer` starts:
the dev stack, the test session and the benches); `--unserialized` runs the same server
without the lock, for benchmarks that measure what the lock costs.
"""

from __future__ import annotations

import argparse
import io
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wsgi import get_input_stream

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SerializedApp:
    """A WSGI app that runs another one request at a time. Thread-safe (that is its point)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """Serve one request under the lock; the response is complete before the lock goes."""
        body = get_input_stream(environ).read()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


def moto_app() -> WSGIApp:
    """moto's own WSGI app (every service, dispatched by request), as `moto.server` builds it."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    app: WSGIApp = DomainDispatcherApplication(create_backend_app)
    return app


def serve(host: str, port: int, serialized: bool = True) -> None:
    """Serve moto on host:port (threaded) until SIGTERM or SIGINT."""
    from moto.server import MotoRequestHandler

    app = moto_app()
    server = make_server(
        host,
        port,
        SerializedApp(app) if serialized else app,
        threaded=True,
        request_handler=MotoRequestHandler,
    )

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return: run it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    mode = "serialized" if serialized else "unserialized"
    print(f"moto ({mode}) on http://{host}:{server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()


def main(argv: list[str] | None = None) -> None:
    """Command line: -H host -p port [--unserialized] [--quiet]."""
    parser = argparse.ArgumentParser(prog="python -m atlas.stack.motoserver")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument(
        "--unserialized", action="store_true", help="no lock (stock moto's concurrency)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = parser.parse_args(argv)
    if args.quiet:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    serve(args.host, args.port, serialized=not args.unserialized)


if __name__ == "__main__":
    main()
