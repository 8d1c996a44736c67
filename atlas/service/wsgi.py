"""The per-request work of every service, as one WSGI middleware: the request id (taken from
the incoming header or made, bound for the smart client and the logs, echoed on the response)
and the JSON access-log record.

The same request-id rules as `atlas.client.flask.init_app` (its validation and generation),
done around the Flask app instead of in three Flask hooks: measured by bench/service.py, the
hooks and a per-request logging call through the Flask stack cost a fifth of a hello-world's
throughput; this costs a lot less.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from atlas.client.request_id import (
    bind_request_id,
    clean_request_id,
    new_request_id,
    unbind_request_id,
)
from atlas.service import logs
from atlas.service.logs import ACCESS_LOGGER, access_fields, access_writer, fast_handler

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Where the request id of the current request is kept in the WSGI environ.
ENVIRON_KEY = "atlas.request_id"


class ServiceMiddleware:
    """Request id + access log around a WSGI app (thread-safe: no shared mutable state)."""

    def __init__(self, app: WSGIApp, request_id_header: str, access_log: bool = True) -> None:
        self.app = app
        self.header = request_id_header
        self._header_lower = request_id_header.lower()
        self._environ_name = "HTTP_" + request_id_header.upper().replace("-", "_")
        self.log = logging.getLogger(ACCESS_LOGGER) if access_log else None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Bind the request id, call the app, echo the id, log the request."""
        rid = clean_request_id(environ.get(self._environ_name)) or new_request_id()
        environ[ENVIRON_KEY] = rid
        log = self.log if self.log is not None and self.log.isEnabledFor(logging.INFO) else None
        t0 = time.perf_counter()
        seen: list[Any] = []

        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not any(name.lower() == self._header_lower for name, _ in headers):
                headers.append((self.header, rid))
            seen[:] = [status, headers]
            return start_response(status, headers, exc_info)

        token = bind_request_id(rid)
        try:
            body = self.app(environ, respond)
        finally:
            unbind_request_id(token)
        if log is not None:
            self._access(log, environ, seen, rid, (time.perf_counter() - t0) * 1000)
        return body

    @staticmethod
    def _access(
        log: logging.Logger, environ: dict[str, Any], seen: list[Any], rid: str, ms: float
    ) -> None:
        status_line, headers = seen or ("500", [])
        length = None
        for name, value in headers:
            if name.lower() == "content-length":
                length = int(value)
        request = (
            rid, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING"), int(status_line[:3]), ms, environ.get("REMOTE_ADDR"),
            length,
        )  # fmt: skip
        handler = fast_handler(log)
        if handler is not None:
            # The default setup: the writer thread formats the line, in batches (bench/service.py:
            # a formatted, flushed write per request costs a quarter of a hello-world request).
            service, realm = logs.context()
            access_writer(handler).post(time.time(), service, realm, *request)
            return
        message, fields = access_fields(*request)
        # Built directly (no findCaller walk up the Flask stack, as log.info would do).
        record = log.makeRecord(
            log.name, logging.INFO, __file__, 0, message, (), None, extra=fields
        )
        log.handle(record)
