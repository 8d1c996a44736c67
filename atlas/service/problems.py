"""problem+json (RFC 9457) for every error of a service, in the shape Atlas's API uses.

The same idea as `atlas/api/problems.py`, on the same error tree (`atlas.errors`), without
importing `atlas.api` (which pulls in marshmallow and the registry).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Response
from flask_restful import Api
from werkzeug.exceptions import HTTPException

from atlas.errors import HTTP_ERRORS, AtlasError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def is_unexpected(exc: BaseException) -> bool:
    """True for an error that is a bug (not an AtlasError nor an HTTP error): report it."""
    return not isinstance(exc, AtlasError | HTTPException)


def to_atlas_error(exc: BaseException) -> AtlasError:
    """Map any exception onto the Atlas error tree (unknown ones become a bare 500)."""
    if isinstance(exc, AtlasError):
        return exc
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        cls = HTTP_ERRORS.get(code)
        if cls is not None:
            return cls(exc.description or cls.title)
        err = AtlasError(exc.description or "HTTP error")
        err.status = code
        err.title = exc.name
        err.slug = exc.name.lower().replace(" ", "-")
        return err
    log.error("unhandled error", exc_info=exc)
    return AtlasError("An unexpected error occurred; it has been logged.")


def problem_response(exc: BaseException) -> Response:
    """Render an exception as a problem+json response."""
    err = to_atlas_error(exc)
    resp = Response(json.dumps(err.to_problem()), status=err.status, mimetype=PROBLEM_JSON)
    if isinstance(exc, HTTPException) and err.status in (401, 405):
        for name, value in exc.get_headers():
            if name.lower() in ("allow", "www-authenticate"):
                resp.headers[name] = value
    return resp


class ProblemApi(Api):
    """flask-restful's Api with every error rendered by one problem+json handler."""

    def __init__(self, app: Any, handler: Callable[[BaseException], Response], **kwargs: Any):
        self._problem = handler
        super().__init__(app, **kwargs)

    def handle_error(self, e: Exception) -> Any:
        """Render any error raised inside a resource as problem+json."""
        return self._problem(e)

    def error_router(self, original_handler: Any, e: Exception) -> Any:
        """Errors of our endpoints, and 404/405 anywhere, go to the one handler."""
        return self._problem(e)
