"""The one error handler: every failure becomes an RFC 9457 application/problem+json response."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from flask import Response
from werkzeug.exceptions import HTTPException

from atlas.errors import HTTP_ERRORS, AtlasError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def flatten_errors(errors: Any, prefix: str = "") -> dict[str, list[str]]:
    """Flatten marshmallow's nested error dicts into {"a.b": [messages]}."""
    out: dict[str, list[str]] = {}
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            name = str(key) if not prefix else f"{prefix}.{key}"
            if key == "_schema":
                name = prefix or "body"
            for k, v in flatten_errors(value, name).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(errors, list | tuple):
        for item in errors:
            if isinstance(item, Mapping):
                for k, v in flatten_errors(item, prefix).items():
                    out.setdefault(k, []).extend(v)
            else:
                out.setdefault(prefix or "body", []).append(str(item))
    else:
        out.setdefault(prefix or "body", []).append(str(errors))
    return out


def to_atlas_error(exc: BaseException) -> AtlasError:
    """Map any exception onto the Atlas error tree (unknown ones become a bare 500)."""
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


def problem_response(exc: BaseException) -> Response:
    """Render an exception as a problem+json response."""
    err = to_atlas_error(exc)
    body = err.to_problem()
    resp = Response(json.dumps(body), status=err.status, mimetype=PROBLEM_JSON)
    if err.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="atlas"'
    for name, value in getattr(err, "headers", {}).items():  # e.g. Retry-After on a 503
        resp.headers[name] = value
    if err.status == 405 and isinstance(exc, HTTPException):
        allow = exc.get_headers()
        for name, value in allow:
            if name.lower() == "allow":
                resp.headers["Allow"] = value
    return resp
