"""One error tree for the whole of Atlas; the API maps it to RFC 9457 problem+json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROBLEM_BASE = "https://atlas.dev/problems/"


class AtlasError(Exception):
    """Base of every error Atlas reports to a caller."""

    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str = "", errors: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors: dict[str, list[str]] | None = (
            {k: list(v) for k, v in errors.items()} if errors else None
        )

    def to_problem(self) -> dict[str, Any]:
        """The problem+json body for this error."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(AtlasError):
    """The request could not be parsed (malformed JSON, bad cursor encoding)."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class ValidationFailed(AtlasError):
    """The request parsed but a field is invalid; `errors` names every field."""

    status = 422
    slug = "validation"
    title = "Validation failed"


class Unauthorized(AtlasError):
    """No or unknown bearer token."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"


class Forbidden(AtlasError):
    """The token is valid but may not do this."""

    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(AtlasError):
    """The resource does not exist."""

    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(AtlasError):
    """The resource exists but not with this method."""

    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class NotAcceptable(AtlasError):
    """The client accepts no representation Atlas can give."""

    status = 406
    slug = "not-acceptable"
    title = "Not acceptable"


class Conflict(AtlasError):
    """The resource exists already, or its state forbids the change, or a race was lost."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class PreconditionFailed(AtlasError):
    """If-Match / If-None-Match did not hold."""

    status = 412
    slug = "precondition-failed"
    title = "Precondition failed"


class PayloadTooLarge(AtlasError):
    """The request body is over the configured limit."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(AtlasError):
    """A body was sent that is not JSON."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class Unavailable(AtlasError):
    """A backing store did not answer; the write was not made."""

    status = 503
    slug = "unavailable"
    title = "Service unavailable"


class SecretUnreadable(AtlasError):
    """A stored secret failed its integrity check or its key could not be unwrapped."""

    status = 500
    slug = "secret-unreadable"
    title = "Secret cannot be decrypted"


HTTP_ERRORS: dict[int, type[AtlasError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        NotAcceptable,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unavailable,
    )
}
