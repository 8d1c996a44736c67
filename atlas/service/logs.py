"""One logging setup for every service: JSON lines on stdout with realm, service and request id.

Every record, whoever logs it (the service, a library, gunicorn's master), goes through one
handler on the root logger; a filter on that handler adds `service`, `realm` and the request id
bound by `atlas.client.flask` (None outside a request).
"""

from __future__ import annotations

import logging
import sys
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


def set_realm(realm: str) -> None:
    """Stamp `realm` on every record from now on (the realm is known once config is loaded)."""
    _context["realm"] = realm
