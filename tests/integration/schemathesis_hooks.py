"""Schemathesis hooks for the openapi.yaml conformance run (loaded with SCHEMATHESIS_HOOKS).

openapi.yaml states every rule JSON Schema can state, in the patterns the server itself checks.
Three rules it can only state in prose, because they relate two values or depend on what was
issued before; a generated *valid* case is made to respect them here, and nothing else is
changed. Invalid (negative) cases are left alone: the server must refuse them all.
Whatever the document says is valid and depends on state is excused by status, not here: 404
(a made-up name), 409 (a state conflict) and 412 (a well-formed `If-Match` naming another version)
are the run's accepted answers to valid data.

- `cursor` is opaque: only a `next_cursor` Atlas issued for the same listing is valid.
- `health_check.timeout_s` must not exceed `health_check.interval_s` (10 when absent).
- `host` and `port` in the body of `PUT .../instances/{instance}` must match the path.

One class of answers is not Atlas's: gunicorn refuses an over-long request line (414) or header
field (431) with its own text/html page before Atlas sees the request. Such a failure is dropped
only after checking that the request really exceeded gunicorn's limit.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import schemathesis

GUNICORN_LIMIT_REQUEST_LINE = 4094
GUNICORN_LIMIT_REQUEST_FIELD_SIZE = 8190
DEFAULT_INTERVAL_S = 10
INSTANCE_PATH = "/v1/services/{name}/instances/{instance}"


def _positive(case: Any) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


def _fit_health_check(body: Any) -> None:
    hc = body.get("health_check") if isinstance(body, dict) else None
    if not isinstance(hc, dict):
        return
    interval = hc.get("interval_s", DEFAULT_INTERVAL_S)
    timeout = hc.get("timeout_s")
    if (
        isinstance(timeout, int | float)
        and isinstance(interval, int | float)
        and timeout > interval
    ):
        hc["timeout_s"] = interval


def _fit_instance_body(case: Any) -> None:
    body, instance = case.body, case.path_parameters.get("instance")
    if not isinstance(body, dict) or not isinstance(instance, str):
        return
    # The coverage phase hands path parameters over already percent-encoded.
    host, _, port = unquote(instance).rpartition(":")
    if "host" in body:
        body["host"] = host
    if "port" in body:
        body["port"] = int(port)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Make a valid case respect the three rules openapi.yaml states only in prose.

    Done just before the call, so that it also holds for values the stateful phase fills in
    from earlier responses.
    """
    if not _positive(case):
        return
    if case.query and "cursor" in case.query:
        case.query = {k: v for k, v in case.query.items() if k != "cursor"}
    _fit_health_check(case.body)
    if case.operation.path == INSTANCE_PATH and case.method.upper() == "PUT":
        _fit_instance_body(case)


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but gunicorn's own 414/431 to a request over its limits."""
    if response.status_code not in (414, 431):
        return True
    request = response.request
    if response.status_code == 414:
        line = f"{request.method} {request.path_url} HTTP/1.1"
        return len(line.encode()) <= GUNICORN_LIMIT_REQUEST_LINE
    longest = max((len(f"{k}: {v}") for k, v in request.headers.items()), default=0)
    return longest <= GUNICORN_LIMIT_REQUEST_FIELD_SIZE
