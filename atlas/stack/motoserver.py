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

`--state-file PATH` makes the state persistent (the dev stack's DynamoDB and KMS survive a
restart, like its ZooKeeper): the backends of the persisted services are restored from PATH
at start, and written back (pickled under the lock, so each snapshot is the state between two
requests, then renamed into place atomically) at most `--persist-interval` seconds after a
request that may have changed them, and once more at shutdown. moto's own recorder is no
substitute: it replays requests, and a replayed KMS CreateKey makes new key material, so
every stored secret would become unreadable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
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


#: The services whose state `--state-file` keeps: what Atlas stores in moto.
PERSISTED_SERVICES = ("dynamodb", "kms")
#: Actions (the `X-Amz-Target` operation) that never change a backend's state.
READ_ONLY_ACTIONS = (
    "Get", "BatchGet", "Describe", "List", "Query", "Scan", "TransactGet",
    "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateRandom", "Verify", "Sign",
)  # fmt: skip
EXIT_STATE_UNREADABLE = 3

log = logging.getLogger("atlas.stack.motoserver")


def _load_private_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pem, password=None)


def _load_public_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(pem)


class _StatePickler(pickle.Pickler):
    """Pickles moto backends; cryptography's key objects (KMS keys hold them) go as PEM."""

    def reducer_override(self, obj: Any) -> Any:
        """PEM for cryptography's private and public keys, the default for everything else."""
        if not type(obj).__module__.startswith("cryptography"):
            return NotImplemented
        from cryptography.hazmat.primitives import serialization as ser

        if hasattr(obj, "private_bytes"):
            pem = obj.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
            return _load_private_key, (pem,)
        if hasattr(obj, "public_bytes"):
            pem = obj.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
            return _load_public_key, (pem,)
        return NotImplemented


def _changes_state(environ: dict[str, Any]) -> bool:
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if not target:
        return environ.get("REQUEST_METHOD") not in ("GET", "HEAD", "OPTIONS")
    return not target.rpartition(".")[2].startswith(READ_ONLY_ACTIONS)


class StateFile:
    """The persisted state of some moto services in one file. Thread-safe.

    `lock` is the lock every request is served under: a snapshot taken under it is the state
    between two requests.
    """

    def __init__(
        self,
        path: Path,
        lock: threading.Lock,
        services: Iterable[str] = PERSISTED_SERVICES,
        interval_s: float = 0.2,
    ) -> None:
        self.path = Path(path)
        self.lock = lock
        self.services = tuple(services)
        self.interval_s = interval_s
        self.snapshots = 0
        self.failures = 0  # snapshots that could not be written (each is logged)
        self._dirty = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> bool:
        """Put the saved backends in place (before serving); False when there is no file.

        Raises whatever unpickling raises (a file from another moto version, a torn file).
        """
        if not self.path.exists():
            return False
        from moto.backends import get_backend

        with self.path.open("rb") as f:
            state: dict[str, dict[str, dict[str, Any]]] = pickle.load(f)  # our own file
        for service, accounts in state.items():
            live: Any = get_backend(service)  # type: ignore[call-overload]
            for account, regions in accounts.items():
                for region, backend in regions.items():
                    dict.__setitem__(live[account], region, backend)
        return True

    def _snapshot(self) -> bytes:
        from moto.backends import get_backend

        state = {
            service: {
                account: dict(regions.items())
                for account, regions in get_backend(service).items()  # type: ignore[call-overload]
            }
            for service in self.services
        }
        buffer = io.BytesIO()
        _StatePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
        return buffer.getvalue()

    def save(self) -> None:
        """Write the current state now (atomically: a crash leaves the previous file)."""
        self._dirty.clear()
        with self.lock:
            data = self._snapshot()
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self.snapshots += 1

    def touched(self, environ: dict[str, Any]) -> None:
        """Note a served request: a snapshot follows within the interval if it may have written."""
        if _changes_state(environ):
            self._dirty.set()

    def start(self) -> None:
        """Start the thread that writes snapshots after changes."""
        self._thread = threading.Thread(target=self._run, name="moto-state", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            if not self._dirty.wait(timeout=0.5):
                continue
            self._stopped.wait(self.interval_s)  # one snapshot for a burst of writes
            self._save_logged()

    def _save_logged(self) -> None:
        try:
            self.save()
        except Exception:
            self.failures += 1
            log.exception("could not write the state file %s", self.path)

    def close(self) -> None:
        """Stop the thread and write the last changes."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._dirty.is_set() or not self.path.exists():
            self._save_logged()


class PersistingApp:
    """A SerializedApp whose served requests are noted in a StateFile. Thread-safe."""

    def __init__(self, app: SerializedApp, state: StateFile) -> None:
        self.app = app
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """Serve one request (under the app's lock), then note it."""
        try:
            return self.app(environ, start_response)
        finally:
            self.state.touched(environ)


def moto_app() -> WSGIApp:
    """moto's own WSGI app (every service, dispatched by request), as `moto.server` builds it."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    app: WSGIApp = DomainDispatcherApplication(create_backend_app)
    return app


def serve(
    host: str,
    port: int,
    serialized: bool = True,
    state_file: Path | None = None,
    persist_interval_s: float = 0.2,
) -> None:
    """Serve moto on host:port (threaded) until SIGTERM or SIGINT (SIGHUP too)."""
    from moto.server import MotoRequestHandler

    app = moto_app()
    served: WSGIApp = SerializedApp(app) if serialized else app
    state: StateFile | None = None
    if state_file is not None:
        if not isinstance(served, SerializedApp):
            raise ValueError("--state-file needs the serialized server (snapshots take its lock)")
        state = StateFile(state_file, served.lock, interval_s=persist_interval_s)
        started = time.monotonic()
        try:
            restored = state.restore()
        except Exception as exc:
            print(
                f"moto: cannot restore the state in {state_file} ({exc!r}); it stays as it is."
                " Move it away (or start the dev stack with --fresh) to start empty.",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(EXIT_STATE_UNREADABLE)
        took = time.monotonic() - started
        print(
            f"moto: state {'restored from' if restored else 'will be kept in'} {state_file}"
            + (f" in {took:.3f}s" if restored else ""),
            file=sys.stderr,
            flush=True,
        )
        served = PersistingApp(served, state)
        state.start()
    server = make_server(host, port, served, threaded=True, request_handler=MotoRequestHandler)

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return: run it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    mode = "serialized" if serialized else "unserialized"
    print(f"moto ({mode}) on http://{host}:{server.server_port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if state is not None:
            with contextlib.suppress(Exception):
                state.close()


def main(argv: list[str] | None = None) -> None:
    """Command line: -H host -p port [--unserialized] [--quiet]."""
    parser = argparse.ArgumentParser(prog="python -m atlas.stack.motoserver")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument(
        "--unserialized", action="store_true", help="no lock (stock moto's concurrency)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    parser.add_argument(
        "--state-file", type=Path, help="keep DynamoDB and KMS state in this file across restarts"
    )
    parser.add_argument(
        "--persist-interval",
        type=float,
        default=0.2,
        help="seconds between a change and its snapshot (default 0.2)",
    )
    args = parser.parse_args(argv)
    if args.quiet:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    serve(
        args.host,
        args.port,
        serialized=not args.unserialized,
        state_file=args.state_file,
        persist_interval_s=args.persist_interval,
    )


if __name__ == "__main__":
    main()
