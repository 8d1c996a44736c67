"""Thin resources of the fleet's view: the sidecars' reports and a service's convergence (the
reading and the rules are `atlas.fleet`'s)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from flask import current_app
from flask_restful import Resource

from atlas.api.auth import TOPOLOGY
from atlas.api.resources import Result, page_args, registry
from atlas.contract import check_service_name
from atlas.fleet import Fleet, convergence, page, sidecar_item
from atlas.registry import CursorKey

SIDECAR_CURSOR = CursorKey(("host_id",))


def _fleet() -> Fleet:
    fleet: Fleet = current_app.extensions["atlas"].fleet
    return fleet


def _now_ms() -> float:
    return time.time() * 1000.0


class SidecarList(Resource):
    """/v1/sidecars"""

    scope = TOPOLOGY

    def get(self) -> Result:
        """Every live sidecar of the realm and what it has applied, by host id (paginated)."""
        limit, cursor = page_args()
        start = SIDECAR_CURSOR.decode(cursor)
        after = start["host_id"]["S"] if start is not None else None
        fleet = _fleet()
        ids, last = page(fleet.host_ids(), limit, after)
        now = _now_ms()
        items = [sidecar_item(sc, now) for sc in fleet.sidecars(ids)]
        next_cursor = SIDECAR_CURSOR.encode(SimpleNamespace(host_id=last)) if last else None  # type: ignore[arg-type]
        return {"items": items, "next_cursor": next_cursor}, 200


class Convergence(Resource):
    """/v1/services/{name}/convergence"""

    scope = TOPOLOGY

    def get(self, name: str) -> Result:
        """Which live sidecars have applied the service's latest change, which lag and since when."""
        check_service_name(name)
        ext = current_app.extensions["atlas"]
        fleet = _fleet()
        fleet.check()  # 503 before anything else when ZooKeeper is not there
        _require_service(ext, name)
        state = fleet.service_state(name)  # before the reports: see atlas.fleet
        sidecars = fleet.sidecars()
        pending = ext.mirror_pending(name)
        return convergence(name, state, sidecars, _now_ms(), mirror_pending=pending), 200


def _require_service(ext: Any, name: str) -> None:
    """404 unless the service exists in DynamoDB (the truth). A current view that has the
    service, compared with DynamoDB since its load, stands in for that read."""
    snap = ext.view.snapshot if ext.view is not None else None
    entry = snap.entry(name) if snap is not None else None
    if (
        snap is not None
        and entry is not None
        and entry.service is not None
        and name not in snap.unverified
    ):
        return
    registry().get_service(name)  # NotFound: 404 problem+json
