"""One logging setup for every service: JSON lines on stdout with realm, service and request id.

Every record, whoever logs it (the service, a library, gunicorn's master), goes through one
handler on the root logger; a filter on that handler adds `service`, `realm` and the request id
bound by `atlas.client.flask` (None outside a request).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from atlas.client.request_id import current_request_id

ACCESS_LOGGER = "atlas.service.access"

# What the filter stamps on each record. Written by configure_logging() (at boot, before any
# worker thread exists), read by every thread: plain assignments, no lock needed.
_context: dict[str, str | None] = {"service": None, "realm": None}


class ContextFilter(logging.Filter):
    """Stamps service, realm and the current request id on each record (thread-safe)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        record.service = _context["service"]
        record.realm = _context["realm"]
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class StdoutHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stdout is when a record is emitted (test runners swap it)."""

    _atlas_service = True  # marks ours, for configure_logging() to replace

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> IO[str]:
        """The current sys.stdout."""
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def write_line(self, line: str) -> None:
        """Write one pre-formatted line (thread-safe: under the handler's lock)."""
        with self.lock:  # type: ignore[union-attr]
            stream = self.stream
            stream.write(line + "\n")
            stream.flush()


def json_formatter() -> JsonFormatter:
    """The one JSON-lines format: time, level, logger, message, service, realm, request_id."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s %(service)s %(realm)s %(request_id)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


def make_handler() -> logging.Handler:
    """A stdout handler with the JSON format and the context filter."""
    handler = StdoutHandler()
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(service: str, realm: str | None = None, level: str | int = "INFO") -> None:
    """Install the JSON handler on the root logger (replacing one installed before); idempotent."""
    _context["service"] = service
    _context["realm"] = realm
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_atlas_service", False):
            root.removeHandler(h)
    root.addHandler(make_handler())
    root.setLevel(level.upper() if isinstance(level, str) else level)


def context() -> tuple[str | None, str | None]:
    """(service, realm) stamped on every record now."""
    return _context["service"], _context["realm"]


def set_realm(realm: str) -> None:
    """Stamp `realm` on every record from now on (the realm is known once config is loaded)."""
    _context["realm"] = realm


def fast_handler(log: logging.Logger, level: int = logging.INFO) -> StdoutHandler | None:
    """Our stdout handler when it is the only one a record of `log` at `level` would reach,
    unfiltered beyond our own filter (then a caller may write a JSON line to it directly)."""
    if log.handlers or not log.propagate or log.filters:
        return None
    parent = log.parent
    while parent is not None and parent.parent is not None:  # up to the root
        if parent.handlers or not parent.propagate or parent.filters:
            return None
        parent = parent.parent
    root = logging.getLogger()
    if len(root.handlers) != 1 or root.filters:
        return None
    handler = root.handlers[0]
    if not isinstance(handler, StdoutHandler) or handler.level > level or len(handler.filters) != 1:
        return None
    return handler


class AccessWriter:
    """Access-log lines written by one background thread per process, in batches.

    Request threads `post()` the fields of a line (thread-safe: a deque append, no lock, no
    I/O); the writer thread (started on first use in each process, so a forked worker has its
    own) formats what arrived every `interval` seconds and writes it with one write() under the
    handler's lock, so lines from several processes sharing stdout never interleave. A line
    costs the request a fraction of a formatted, flushed write (bench/service.py). `flush()`
    writes what is pending now (at exit, and for tests); errors writing are counted in `errors`.
    """

    def __init__(self, handler: StdoutHandler, interval: float = 0.05) -> None:
        self.handler = handler
        self.interval = interval
        self.errors = 0
        self._pending: deque[tuple[Any, ...]] = deque()
        self._pid = 0
        self._lock = threading.Lock()  # guards the start and the drain, not post()

    def post(self, *fields: Any) -> None:
        """Queue one line: the arguments of `access_fields` (thread-safe)."""
        if self._pid != os.getpid():
            self._start()
        self._pending.append(fields)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pending = deque()  # lines queued before a fork belong to the parent
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="atlas-access-log", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        """Format and write every pending line now (thread-safe)."""
        with self._lock:
            if not self._pending:
                return
            lines = []
            pending = self._pending
            while pending:
                created, service, realm, *request = pending.popleft()
                message, fields = access_fields(*request)
                doc = {
                    "level": "INFO", "logger": ACCESS_LOGGER, "message": message,
                    "service": service, "realm": realm, **fields,
                    "time": datetime.fromtimestamp(created, tz=UTC).isoformat(),
                }  # fmt: skip
                lines.append(json.dumps(doc, default=str))
            try:
                self.handler.write_line("\n".join(lines))
            except Exception:
                self.errors += 1


def access_fields(
    rid: str, method: str, path: str, query: str | None, status: int, ms: float,
    remote: str | None, length: int | None,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The message and fields of one access-log line."""
    message = f"{method} {path}?{query} {status}" if query else f"{method} {path} {status}"
    return message, {
        "request_id": rid, "method": method, "path": path, "status": status,
        "duration_ms": round(ms, 3), "remote_addr": remote, "bytes": length,
    }  # fmt: skip


_writers: dict[int, AccessWriter] = {}


def access_writer(handler: StdoutHandler) -> AccessWriter:
    """The AccessWriter of a handler (one per handler, made on first use)."""
    writer = _writers.get(id(handler))
    if writer is None or writer.handler is not handler:
        writer = _writers[id(handler)] = AccessWriter(handler)
    return writer


def flush_access_log() -> None:
    """Write every pending access-log line now."""
    for writer in list(_writers.values()):
        writer.flush()


atexit.register(flush_access_log)
