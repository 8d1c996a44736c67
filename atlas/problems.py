"""problem+json (RFC 9457) for every error, on the Atlas error tree (`atlas.errors`).

Shared by Atlas's API (`atlas.api.problems`) and the Smart Service (`atlas.service.problems`):
Flask and werkzeug only, so that a service imports it without the registry.
"""

from __future__ import annotations

import json
import logging

from flask import Response
from werkzeug.exceptions import HTTPException

from atlas.errors import HTTP_ERRORS, AtlasError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def to_atlas_error(exc: BaseException) -> AtlasError:
    """Map any exception onto the Atlas error tree (unknown ones become a bare 500, logged)."""
    if isinstance(exc, AtlasError):
        return exc
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        cls = HTTP_ERRORS.get(code)
        if cls is not None:
            detail = exc.description or cls.title
            if code == 413:
                detail = "The request body is larger than the server accepts."
            return cls(detail)
        err = AtlasError(exc.description or "HTTP error")
        err.status = code
        err.title = exc.name
        err.slug = exc.name.lower().replace(" ", "-")
        return err
    log.error("unhandled error", exc_info=exc)
    return AtlasError("An unexpected error occurred; it has been logged.")


def problem_response(exc: BaseException, www_authenticate: str | None = None) -> Response:
    """Render an exception as a problem+json response.

    Keeps an HTTP error's `Allow` (405) and `WWW-Authenticate` (401) headers and an Atlas
    error's own (`Retry-After` on a 503); `www_authenticate` is the challenge of any 401 that
    brings none.
    """
    err = to_atlas_error(exc)
    resp = Response(json.dumps(err.to_problem()), status=err.status, mimetype=PROBLEM_JSON)
    if err.status == 401 and www_authenticate:
        resp.headers["WWW-Authenticate"] = www_authenticate
    for name, value in getattr(err, "headers", {}).items():
        resp.headers[name] = value
    if isinstance(exc, HTTPException) and err.status in (401, 405):
        for name, value in exc.get_headers():
            if name.lower() in ("allow", "www-authenticate"):
                resp.headers[name] = value
    return resp
