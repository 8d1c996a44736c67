"""What the dashboard shows, read in-process through the app's Atlas extension (no HTTP to itself).

Records are serialized with the API's own dump functions, so a page sees exactly
the fields the API returns (and fields a later API adds, such as
`disabled_until` or `min_enabled`, appear without a change here). Secrets are
read masked only: nothing in this module asks for a secret's value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from atlas.api.auth import ADMIN, CONFIG, Principal
from atlas.api.resources import dump_instance, dump_service
from atlas.errors import AtlasError, Forbidden
from atlas.fleet import convergence, sidecar_item
from atlas.registry.records import Instance

if TYPE_CHECKING:
    from atlas.app import AtlasExtension

MASKED: dict[str, Any] = {"secret": True}
AUDIT_ROWS = 20
SIDECAR_ROWS = 50  # the overview lists this many sidecars; GET /v1/sidecars pages all
VALUE_CHARS = 120


def _all_services(ext: AtlasExtension) -> list[Any]:
    registry = ext.registry
    limit = ext.settings.page_limit_max
    out: list[Any] = []
    cursor: str | None = None
    while True:
        page = registry.list_services(limit, cursor)
        out += page.items
        cursor = page.next_cursor
        if not cursor:
            return out


def counts(instances: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{"enabled": n, "total": m}."""
    listed = list(instances)
    return {"enabled": sum(1 for i in listed if i.get("enabled")), "total": len(listed)}


def services_overview(ext: AtlasExtension) -> list[dict[str, Any]]:
    """Every service with its instance counts (one scan of the instances, not one query each)."""
    by_service: dict[str, list[Instance]] = {}
    for inst in ext.registry.iter_instances():
        by_service.setdefault(inst.service, []).append(inst)
    rows = []
    for svc in _all_services(ext):
        row = dump_service(svc)
        row["deleting"] = bool(getattr(svc, "deleting", False))
        row["counts"] = counts(dump_instance(i) for i in by_service.get(svc.name, []))
        rows.append(row)
    return rows


def mirror_state(ext: AtlasExtension) -> dict[str, Any]:
    """The mirror part of /v1/info: this process's view, with the realm's last reconcile (the
    leader's, whichever process answers) when ZooKeeper tells it; None for what is unknown."""
    info = ext.info()
    status: Mapping[str, Any] = info.get("mirror") or {}
    realm: Mapping[str, Any] = info.get("reconciler") or {}
    last = realm.get("last_reconcile") if realm.get("known") else status.get("last_reconcile")
    drift = last.get("drift_found") if isinstance(last, Mapping) else None
    return {
        "configured": status.get("configured"),
        "connected": status.get("connected"),
        "state": status.get("state"),
        "leader": status.get("leader"),
        "lagging": status.get("lagging"),
        "dirty_services": status.get("dirty_services"),
        "last_reconcile_at": last.get("at") if isinstance(last, Mapping) else None,
        "last_reconcile_services": last.get("services") if isinstance(last, Mapping) else None,
        "drift": dict(drift) if isinstance(drift, Mapping) else None,
        "drift_found_total": status.get("drift_found_total"),
        "drift_fixed_total": status.get("drift_fixed_total"),
        "last_error": status.get("last_error"),
    }


def _allowed(ext: AtlasExtension, principal: Principal, scope: str, service: str) -> bool:
    try:
        ext.authenticator.authorize(principal, False, scope, service)
    except Forbidden:
        return False
    return True


def value_text(value: Any) -> str:
    """A non-secret config value for a table cell, cut when long."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def config_rows(ext: AtlasExtension, name: str) -> tuple[int, list[dict[str, Any]]]:
    """(config version, [{key, secret, value}]) with every secret masked (never opened)."""
    view = ext.config.get_config(name, reveal=False)
    rows = []
    for key in sorted(view.values):
        value = view.values[key]
        # A masked secret reads {"secret": true}; a plain value equal to it is shown masked too,
        # which can hide a value but never shows a secret.
        secret = value == MASKED
        rows.append({"key": key, "secret": secret, "value": None if secret else value_text(value)})
    return view.version, rows


def service_detail(ext: AtlasExtension, name: str, principal: Principal) -> dict[str, Any]:
    """A service, its instances, its config keys and its recent audit (each if allowed)."""
    svc = ext.registry.get_service(name)
    instances = [dump_instance(i) for i in ext.registry.all_instances(name)]
    instances.sort(key=lambda i: (i.get("host") or "", i.get("port") or 0))
    detail: dict[str, Any] = {
        "service": dump_service(svc),
        "instances": instances,
        "counts": counts(instances),
        "has_until": any("disabled_until" in i for i in instances),
        "config": None,
        "config_version": None,
        "audit": None,
    }
    if _allowed(ext, principal, CONFIG, name):
        detail["config_version"], detail["config"] = config_rows(ext, name)
    detail["convergence"] = service_convergence(ext, name)
    if _allowed(ext, principal, ADMIN, name):
        ext.audit.flush()  # this process's own queued records (the last click) show at once
        detail["audit"] = list(ext.audit.list(name, AUDIT_ROWS).items)
    return detail


def host_detail(ext: AtlasExtension, host: str) -> dict[str, Any]:
    """Every instance on a host, across services."""
    instances = [dump_instance(i) for i in ext.registry.host_instances(host)]
    instances.sort(key=lambda i: (i.get("service") or "", i.get("port") or 0))
    return {
        "host": host,
        "instances": instances,
        "counts": counts(instances),
        "has_until": any("disabled_until" in i for i in instances),
    }


def view_state(ext: AtlasExtension) -> dict[str, Any]:
    """This process's in-memory view: whether reads are served from it, its index and lag."""
    status = ext.view_status()
    if not status.get("enabled"):
        return {"enabled": False}
    reads = status.get("reads") or {}
    fallbacks = sum(n for k, n in reads.items() if k.startswith("store_fallbacks."))
    return {
        "enabled": True,
        "state": status.get("state"),
        "index": status.get("index"),
        "lag_zxids": status.get("lag_zxids"),
        "behind_s": status.get("behind_s"),
        "waiters": status.get("waiters"),
        "view_hits": reads.get("view_hits", 0),
        "store_fallbacks": fallbacks,
    }


def fleet_overview(ext: AtlasExtension) -> dict[str, Any]:
    """The live sidecars (the first SIDECAR_ROWS by host id), or why they cannot be listed now
    (no ZooKeeper configured, ZooKeeper not answering)."""
    try:
        ids = ext.fleet.host_ids()
        nodes = ext.fleet.sidecars(ids[:SIDECAR_ROWS])
    except AtlasError as exc:
        return {"available": False, "reason": exc.detail or exc.title}
    now = time.time() * 1000.0
    return {"available": True, "total": len(ids), "items": [sidecar_item(n, now) for n in nodes]}


def service_convergence(ext: AtlasExtension, name: str) -> dict[str, Any]:
    """The body of GET /v1/services/{name}/convergence for an existing service, or why it is
    not available now."""
    try:
        ext.fleet.check()
        state = ext.fleet.service_state(name)  # before the reports (see atlas.fleet)
        nodes = ext.fleet.sidecars()
    except AtlasError as exc:
        return {"available": False, "reason": exc.detail or exc.title}
    body = convergence(name, state, nodes, time.time() * 1000.0, ext.mirror_pending(name))
    return {"available": True, **body}
