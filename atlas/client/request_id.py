"""The request id that follows one request across services (a context variable)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

DEFAULT_HEADER = "X-Request-Id"

# Visible ASCII only, bounded: an incoming id is copied into outgoing headers,
# so anything that could split a header or bloat every hop is replaced.
_VALID = re.compile(r"^[\x21-\x7e]{1,200}$")

_current: ContextVar[str | None] = ContextVar("atlas_request_id", default=None)


def new_request_id() -> str:
    """Return a fresh random request id (32 hex digits)."""
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str | None:
    """Return ``value`` if it is acceptable as a request id, else None."""
    if value is not None and _VALID.match(value):
        return value
    return None


def current_request_id() -> str | None:
    """Return the request id bound to the current context (Flask request, ``request_id()``)."""
    return _current.get()


def bind_request_id(value: str | None) -> Token[str | None]:
    """Bind ``value`` as the current request id; pass the token to ``unbind_request_id``."""
    return _current.set(value)


def unbind_request_id(token: Token[str | None]) -> None:
    """Undo ``bind_request_id`` (falls back to clearing when called from another context)."""
    try:
        _current.reset(token)
    except ValueError:
        _current.set(None)


@contextmanager
def request_id(value: str | None = None) -> Iterator[str]:
    """Bind a request id (given, or new) for every call made inside the block."""
    rid = clean_request_id(value) or new_request_id()
    token = bind_request_id(rid)
    try:
        yield rid
    finally:
        unbind_request_id(token)


def outgoing_request_id() -> str:
    """The id for an outgoing request: the bound one, or a new one."""
    return _current.get() or new_request_id()
