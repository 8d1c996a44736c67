"""The API's one error handler: every failure becomes an RFC 9457 application/problem+json
response (`atlas.problems`), and marshmallow's errors a flat map of fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response

from atlas.problems import PROBLEM_JSON, to_atlas_error
from atlas.problems import problem_response as render_problem

__all__ = ["PROBLEM_JSON", "flatten_errors", "problem_response", "to_atlas_error"]


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


def problem_response(exc: BaseException) -> Response:
    """Render an exception as the API's problem+json response (401s challenge for a bearer)."""
    return render_problem(exc, www_authenticate='Bearer realm="atlas"')
