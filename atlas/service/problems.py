"""problem+json (RFC 9457) for every error of a service, as Atlas's API renders them
(`atlas.problems`), and flask-restful's Api routed through the one handler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response
from flask_restful import Api
from werkzeug.exceptions import HTTPException

from atlas.errors import AtlasError
from atlas.problems import PROBLEM_JSON, problem_response, to_atlas_error

__all__ = ["PROBLEM_JSON", "ProblemApi", "is_unexpected", "problem_response", "to_atlas_error"]


def is_unexpected(exc: BaseException) -> bool:
    """True for an error that is a bug (not an AtlasError nor an HTTP error): report it."""
    return not isinstance(exc, AtlasError | HTTPException)


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
