"""Where a read is served from: the process's in-memory view, or DynamoDB (the store).

The rules (README, "Consistency"):

- `?consistent=true` always reads DynamoDB.
- A read is served from the view only when the view is current (connected, loaded, compared
  with DynamoDB after a load), has reached every write this process acknowledged and the
  `?min_index=N` asked for (waiting for it, bounded), this process has no unpublished write to
  the service, and the service's entry is complete. Otherwise it reads DynamoDB.
- `?index=N` (with `?wait=`) is a blocking query: it returns once the resource's index moves
  past N, or after the wait with the same index N.

Responses say which: `X-Atlas-Source: view|store`, and a view read carries `X-Atlas-Index`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from flask import current_app, request
from marshmallow import Schema, ValidationError, fields, validate

from atlas.api.http import load_query
from atlas.errors import AtlasError
from atlas.view import Snapshot, TooManyWaiters, ZkView
from atlas.view.snapshot import INDEX, SERVICES

FRESHNESS_PARAMS = ("consistent", "min_index", "index", "wait")
WAIT_RE = re.compile(r"^(\d{1,9}(?:\.\d{1,6})?)(ms|s|m)?$")
INDEX_MAX = 2**63 - 1
ACK_WAIT_S = 2.0  # how long a read waits for the view to show this process's own writes


class Wait(fields.Field):
    """A Consul-style duration: `30s`, `5m`, `500ms`, or plain seconds."""

    default_error_messages = {"wait": "Must be a duration such as 30s, 5m or 500ms."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if not isinstance(value, str):
            raise self.make_error("wait")
        m = WAIT_RE.fullmatch(value)
        if m is None:
            raise self.make_error("wait")
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
        seconds = float(m.group(1)) * scale
        if not math.isfinite(seconds):
            raise self.make_error("wait")
        return seconds


class FreshnessSchema(Schema):
    """The freshness parameters of a read (any other parameter is the endpoint's business)."""

    consistent = fields.Boolean()
    min_index = fields.Integer(strict=False, validate=validate.Range(0, INDEX_MAX))
    index = fields.Integer(strict=False, validate=validate.Range(0, INDEX_MAX))
    wait = Wait()


freshness_schema = FreshnessSchema()


class Unavailable503(AtlasError):
    """Too many requests are waiting in this process; come back after Retry-After."""

    status = 503
    slug = "too-many-waiters"
    title = "Too many waiting requests"
    headers = {"Retry-After": "1"}


@dataclass(frozen=True)
class Freshness:
    """What the caller asked for."""

    consistent: bool = False
    min_index: int | None = None
    index: int | None = None
    wait: float = 0.0

    @property
    def blocking(self) -> bool:
        """True for a blocking query (`?index=`)."""
        return self.index is not None


def freshness(blocking: bool) -> tuple[Freshness, dict[str, str]]:
    """The caller's freshness parameters, and the other query parameters (422 on bad ones)."""
    settings = current_app.extensions["atlas"].settings
    if not request.args:  # the common case: nothing to parse
        return Freshness(wait=settings.blocking_wait_default_s), {}
    args = dict(request.args.items())
    mine = {k: args.pop(k) for k in FRESHNESS_PARAMS if k in args}
    if not blocking:
        for k in ("index", "wait"):
            if k in mine:
                args[k] = mine.pop(k)  # not a parameter here: the endpoint's schema says so
    try:
        parsed = freshness_schema.load(mine)
    except ValidationError:
        load_query(freshness_schema, mine)  # raises the 422 naming the parameter
        raise
    wait = parsed.get("wait", settings.blocking_wait_default_s)
    return (
        Freshness(
            consistent=parsed.get("consistent", False),
            min_index=parsed.get("min_index"),
            index=parsed.get("index"),
            wait=min(wait, settings.blocking_wait_max_s),
        ),
        args,
    )


@dataclass
class Choice:
    """Where one read is served from: `snapshot` (the view) or None (the store), and the
    index its response carries."""

    snapshot: Snapshot | None
    index: int | None = None
    reason: str = ""

    def headers(self) -> dict[str, str]:
        """X-Atlas-Source, and X-Atlas-Index when known."""
        out = {"X-Atlas-Source": "view" if self.snapshot is not None else "store"}
        if self.index is not None:
            out["X-Atlas-Index"] = str(self.index)
        return out


def _servable(view: ZkView, snap: Snapshot, service: str | None) -> str:
    """Why this snapshot may not serve the read ("" when it may)."""
    if service is None:
        if view.any_pending():
            return "unpublished_write"
        if not snap.list_current:
            return "incomplete"
        return ""
    if view.pending(service):
        return "unpublished_write"
    if service in snap.unverified:
        return "unverified"
    entry = snap.entry(service)
    if entry is None:
        return "absent"  # DynamoDB answers the 404 (or has it, if the view is behind)
    if not entry.complete:
        return "incomplete"
    return ""


def choose(fresh: Freshness, key: tuple[str, ...], service: str | None) -> Choice:
    """Decide where a read is served from, waiting as the caller asked (see module doc).

    Raises Unavailable503 when the process holds its maximum of waiting requests.
    """
    ext = current_app.extensions["atlas"]
    view: ZkView | None = ext.view
    if fresh.consistent:
        return _store(ext, "consistent", fresh)
    if view is None:
        return _store(ext, "no_view", fresh)
    need = max(view.acked_index, fresh.min_index or 0)
    try:
        if fresh.blocking:
            n = fresh.index or 0
            ext.reads.add("blocking.started")

            def moved(s: Snapshot | None) -> bool:
                # Past N, and the view's index has caught up with the change itself (a
                # snapshot may hold data fetched after its index: that is not "reached" yet).
                if s is None:
                    return False
                changed = s.resource_index(key)
                return changed > n and s.index >= max(need, changed)

            snap = view.wait(key, moved, fresh.wait, need=need)
            woken = moved(snap)
            ext.reads.add("blocking.woken" if woken else "blocking.timed_out")
            if snap is None or snap.index < need:
                return _store(ext, "not_current" if snap is None else "behind", fresh)
            why = _servable(view, snap, service)
            if why:
                return _store(ext, why, fresh)
            ext.reads.add("view_hits")
            return Choice(snap, snap.index if woken else n)
        snap = view.snapshot
        if snap is not None and snap.index < need:
            bound = ext.settings.min_index_wait_s if (fresh.min_index or 0) > snap.index else 0.0
            snap = view.wait(INDEX, lambda s: s.index >= need, max(bound, ACK_WAIT_S), need=need)
    except TooManyWaiters:
        ext.reads.add("waiters_rejected")
        raise Unavailable503(
            "this Atlas process holds its maximum of waiting requests; retry shortly"
        ) from None
    if snap is None:
        return _store(ext, "not_current", fresh)
    if snap.index < need:
        return _store(ext, "behind", fresh)
    why = _servable(view, snap, service)
    if why:
        return _store(ext, why, fresh)
    ext.reads.add("view_hits")
    return Choice(snap, snap.index)


def _store(ext: Any, reason: str, fresh: Freshness) -> Choice:
    ext.reads.add(f"store_fallbacks.{reason}")
    # A blocking query answered by DynamoDB keeps the caller's index: it polls again.
    return Choice(None, fresh.index if fresh.blocking else None, reason)


__all__ = ["SERVICES", "Choice", "Freshness", "Unavailable503", "choose", "freshness"]
