"""Schemathesis hooks for the openapi.yaml conformance run (loaded with SCHEMATHESIS_HOOKS).

openapi.yaml states every rule JSON Schema can state, in the patterns the server itself checks.
Four rules it can only state in prose, because they relate two values or depend on what was
issued before; a generated *valid* case is made to respect them here, and nothing else is
changed. Invalid (negative) cases are left alone: the server must refuse them all.
Whatever the document says is valid and depends on state is excused by status, not here: 404
(a made-up name), 409 (a state conflict) and 412 (a well-formed `If-Match` naming another version)
are the run's accepted answers to valid data.

- `cursor` is opaque: only a `next_cursor` Atlas issued for the same listing is valid. Every
  issued cursor is recorded here; a valid case with a made-up cursor is sent with one Atlas
  issued for that listing instead, or without one while there is none.
- `health_check.timeout_s` must not exceed `health_check.interval_s` (10 when absent).
- `host` and `port` in the body of `PUT .../instances/{instance}` must match the path.
- a non-null `disabled_until` goes only with `"enabled": false` (on an instance; a host-disable
  has no `enabled`), and lies in the future, at most 30 days ahead: it is set to an hour ahead.

One class of answers is not Atlas's: gunicorn refuses an over-long request line (414) or header
field (431) with its own text/html page before Atlas sees the request. Such a failure is dropped
only after checking that the request really exceeded gunicorn's limit.

Two more are dropped, each only in its exact form:

- The fleet's operations (tag `fleet`: `/v1/sidecars`, `.../convergence`) need ZooKeeper, which
  this Atlas has not (with one, blocking queries really wait and the run takes many times
  longer): they answer their documented 503 `zookeeper-not-configured`. Only the "server error"
  finding of exactly that answer is dropped; the answer is still checked against the document.
  Their 200s are checked against the document on real sidecars (tests/sidecar/test_fleet_api.py).
- The stateful phase fills path parameters from earlier responses through links it infers by
  name (an audit record's `target` as an `instance`): a value that does not match the
  parameter's documented pattern was never schema-valid data, so its refusal is no
  "schema-valid request rejected".
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import schemathesis

from atlas.contract import CONFIG_KEY_RE, INSTANCE_ID_RE, SERVICE_NAME_RE

# Where to write what the hooks saw (JSON), for the test to report: SCHEMATHESIS_HOOK_STATS.
STATS_PATH = os.environ.get("SCHEMATHESIS_HOOK_STATS")
STATS = {"cursors_issued": 0, "cursors_sent": 0, "cursors_dropped": 0}


def _count(key: str) -> None:
    STATS[key] += 1
    if STATS_PATH:
        Path(STATS_PATH).write_text(json.dumps(STATS))


GUNICORN_LIMIT_REQUEST_LINE = 4094
GUNICORN_LIMIT_REQUEST_FIELD_SIZE = 8190
DEFAULT_INTERVAL_S = 10
INSTANCE_PATH = "/v1/services/{name}/instances/{instance}"
ISSUED: dict[tuple[str, ...], list[str]] = {}  # listing -> the cursors Atlas issued for it


def _listing(case: Any) -> tuple[str, ...]:
    """What a cursor belongs to: the route, its path parameters and the audit's `service`."""
    params = tuple(f"{k}={unquote(str(v))}" for k, v in sorted(case.path_parameters.items()))
    service = (case.query or {}).get("service")
    return (case.operation.path, *params, f"service={service}")


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


def _fit_disabled_until(case: Any) -> None:
    body = case.body
    if not isinstance(body, dict) or body.get("disabled_until") is None:
        return
    ahead = datetime.now(UTC) + timedelta(hours=1)
    body["disabled_until"] = ahead.isoformat(timespec="seconds").replace("+00:00", "Z")
    if case.operation.path == INSTANCE_PATH:
        body["enabled"] = False


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Make a valid case respect the four rules openapi.yaml states only in prose.

    Done just before the call, so that it also holds for values the stateful phase fills in
    from earlier responses.
    """
    if not _positive(case):
        return
    cursor = (case.query or {}).get("cursor")
    if cursor is not None:
        issued = ISSUED.get(_listing(case), [])
        if cursor not in issued:
            # Made up: send a cursor Atlas issued for this listing instead, or none.
            case.query = {k: v for k, v in case.query.items() if k != "cursor"}
            if issued:
                case.query["cursor"] = issued[-1]
        _count("cursors_sent" if "cursor" in case.query else "cursors_dropped")
    _fit_health_check(case.body)
    _fit_disabled_until(case)
    if case.operation.path == INSTANCE_PATH and case.method.upper() == "PUT":
        _fit_instance_body(case)


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """Record the cursors Atlas issues, for the listing that issued them."""
    if response.status_code != 200 or not case.operation.path.startswith("/v1/"):
        return
    try:
        cursor = response.json().get("next_cursor")
    except (ValueError, AttributeError):
        return
    issued = ISSUED.setdefault(_listing(case), [])
    if isinstance(cursor, str) and cursor not in issued:
        issued.append(cursor)
        _count("cursors_issued")


#: The documented patterns of path parameters (openapi.yaml carries these exact ones).
PATH_PATTERNS = {"name": SERVICE_NAME_RE, "instance": INSTANCE_ID_RE, "key": CONFIG_KEY_RE}


def _zookeeper_not_configured(case: Any, response: Any) -> bool:
    if response.status_code != 503 or "fleet" not in (case.operation.tags or []):
        return False
    try:
        kind = response.json().get("type", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(kind, str) and kind.endswith("/zookeeper-not-configured")


def _off_pattern(case: Any) -> bool:
    for name, value in (case.path_parameters or {}).items():
        pattern = PATH_PATTERNS.get(name)
        if pattern is not None and not pattern.fullmatch(unquote(str(value))):
            return True
    return False


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but gunicorn's own 414/431 to a request over its limits, the fleet's
    documented 503 without ZooKeeper, and refusals of off-pattern values links filled in."""
    kind = type(failure).__name__
    if kind == "ServerError" and _zookeeper_not_configured(case, response):
        return False
    if kind == "RejectedPositiveData" and _off_pattern(case):
        return False
    if response.status_code not in (414, 431):
        return True
    request = response.request
    if response.status_code == 414:
        line = f"{request.method} {request.path_url} HTTP/1.1"
        return len(line.encode()) <= GUNICORN_LIMIT_REQUEST_LINE
    longest = max((len(f"{k}: {v}") for k, v in request.headers.items()), default=0)
    return longest <= GUNICORN_LIMIT_REQUEST_FIELD_SIZE
