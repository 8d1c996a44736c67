"""Request parsing helpers shared by the resources: JSON bodies, query strings, ETags."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import IO, Any, cast

from flask import Request, request
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property

from atlas.api.problems import flatten_errors
from atlas.errors import BadRequest, PreconditionFailed, UnsupportedMediaType, ValidationFailed

BODY_METHODS = {"POST", "PUT", "PATCH"}


class CappedStream(io.RawIOBase):
    """A body of unknown length: reads through, and raises 413 on byte `limit + 1`.

    Never reads more than `limit + 1` bytes from the server, so an endless body costs at most
    that much memory.
    """

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.consumed = 0

    def readable(self) -> bool:
        """A body is readable."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read the next bytes of the body into `buffer`; 413 once the limit is passed."""
        want = min(len(buffer), self.limit + 1 - self.consumed)
        if want <= 0:
            raise RequestEntityTooLarge()
        data = self.stream.read(want)
        self.consumed += len(data)
        if self.consumed > self.limit:
            raise RequestEntityTooLarge()
        buffer[: len(data)] = data
        return len(data)


class BoundedRequest(Request):
    """Flask's request, with the body limit enforced on the bytes read, whatever the framing.

    werkzeug refuses a declared Content-Length over MAX_CONTENT_LENGTH, but a body without
    one (Transfer-Encoding: chunked, which the server de-chunks and marks
    `wsgi.input_terminated`) it cuts silently at the limit: the handler would see a truncated
    body, often still valid JSON. Here such a body is counted as it is read and refused with
    413 past the limit.
    """

    @cached_property
    def stream(self) -> IO[bytes]:
        """The body: werkzeug's for a declared length, else capped at max_content_length."""
        limit = self.max_content_length
        if (
            limit is None
            or self.content_length is not None
            or "wsgi.input_terminated" not in self.environ
        ):
            return super().stream
        return cast(IO[bytes], CappedStream(self.environ["wsgi.input"], limit))


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def has_body() -> bool:
    """True when the request carries a body (by length or chunked encoding)."""
    if request.content_length:
        return True
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def load_body(schema: Schema, required: bool = True) -> dict[str, Any]:
    """Parse and validate the JSON body with a schema (415, 400, 413, 422 on bad input)."""
    raw: Any = {}
    if has_body():
        if not _is_json(request.mimetype):
            raise UnsupportedMediaType(
                f"send the body as application/json, not {request.mimetype or 'no content type'}",
                {"Content-Type": ["Must be application/json."]},
            )
        data = request.get_data(cache=True)  # raises 413 over MAX_CONTENT_LENGTH
        if data.strip():
            try:
                raw = json.loads(data)
                # An escaped lone surrogate (backslash-u-d800) parses but cannot be stored as UTF-8.
                json.dumps(raw, ensure_ascii=False).encode()
            except (ValueError, UnicodeError, RecursionError) as exc:
                raise BadRequest(
                    f"the body is not valid JSON: {exc}"[:300], {"body": ["Malformed JSON."]}
                ) from None
    elif required:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationFailed("the body must be a JSON object", {"body": ["Must be an object."]})
    try:
        result: dict[str, Any] = schema.load(raw)
    except ValidationError as exc:
        errors = flatten_errors(exc.messages)
        raise ValidationFailed("invalid field(s): " + ", ".join(sorted(errors)), errors) from None
    return result


def load_query(schema: Schema, args: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Validate the query string with a schema (422 naming the parameter)."""
    source = dict(request.args.items()) if args is None else dict(args)
    try:
        result: dict[str, Any] = schema.load(source)
    except ValidationError as exc:
        errors = flatten_errors(exc.messages)
        raise ValidationFailed(
            "invalid query parameter(s): " + ", ".join(sorted(errors)), errors
        ) from None
    return result


def etag(version: int) -> str:
    """The strong ETag of a stored version."""
    return f'"{version}"'


def _parse_tag(value: str) -> int:
    tag = value.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        tag = tag[1:-1]
    if not (tag.isascii() and tag.isdigit()):
        raise PreconditionFailed(f"If-Match {value!r} names no version of this resource")
    return int(tag)


def if_match() -> int | None:
    """The version demanded by If-Match (None when absent or `*`)."""
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    return _parse_tag(value)


def if_match_star() -> bool:
    """True when If-Match is `*` (the resource must exist)."""
    return request.headers.get("If-Match", "").strip() == "*"


def if_none_match_star() -> bool:
    """True when If-None-Match is `*` (create only)."""
    value = request.headers.get("If-None-Match")
    if value is None:
        return False
    if value.strip() != "*":
        raise PreconditionFailed("only If-None-Match: * is supported on writes")
    return True
