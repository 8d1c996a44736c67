"""What a mutation changed, for its audit record: the resource read before the request (one
consistent read, by the `before_request` hook) against the representation the write returned.

Under concurrent writers the read may be older than the state the write replaced: the
`version` change then shows the gap (e.g. 3 → 5). Never a secret's value: a config entry is
recorded by version, secret flag and deletion; a token by id and description.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, g, request

from atlas.api import resources as r
from atlas.contract import is_service_name, normalize_host, parse_instance_id
from atlas.errors import AtlasError
from atlas.registry.audit import TRUNCATED, Change, diff

log = logging.getLogger(__name__)

#: Fields that say nothing about a change (the record's own time says when).
NOISE = ("created_at", "updated_at")
IDENTITY = ("service", "id", "host", "port", "name")
CONFIG_FIELDS = ("key", "version", "secret", "deleted")  # never "value"
TOKEN_FIELDS = ("id", "description")  # never "token"
HOST_FIELDS = ("enabled", "disabled_reason", "version")

Reader = Callable[[Any, Mapping[str, Any]], Any]


def _service(ext: Any, args: Mapping[str, Any]) -> dict[str, Any] | None:
    svc = ext.registry.find_service(args["name"])
    return r.dump_service(svc) if svc is not None else None


def _instance(ext: Any, args: Mapping[str, Any]) -> dict[str, Any] | None:
    host, port = parse_instance_id(args["instance"])
    inst = ext.registry.get_instance(args["name"], host, port)
    return r.dump_instance(inst)


def _config(ext: Any, args: Mapping[str, Any]) -> dict[str, Any] | None:
    entry = ext.config.get_entry(args["name"], args["key"], None, reveal=False)
    return {f: getattr(entry, f) for f in CONFIG_FIELDS}


def _host(ext: Any, args: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    host = normalize_host(args["host"])
    if host is None:
        return None
    return {f"{i.service}/{i.id}": r.dump_instance(i) for i in ext.registry.host_instances(host)}


#: endpoint -> how to read the resource before the write (None: nothing to read).
BEFORE: dict[str, Reader | None] = {
    "servicelist": None,
    "serviceitem": _service,
    "instanceitem": _instance,
    "configitem": _config,
    "tokenlist": None,
    "tokenitem": None,
    "hostdisable": _host,
    "hostenable": _host,
}


def capture_before(app: Flask) -> None:
    """`before_request` (after authentication): remember the target of a mutation as it is."""
    reader = BEFORE.get(request.endpoint or "")
    if reader is None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    try:
        g.audit_before = reader(app.extensions["atlas"], request.view_args or {})
    except AtlasError:
        g.audit_before = None  # nothing there yet (404), or a bad id the request will refuse
    except Exception:
        app.extensions["atlas"].audit.count("unread_before")
        app.extensions["atlas"].metrics.swallowed_error("audit_before")
        log.exception("audit: could not read %s before the write", request.path[:200])
        g.audit_before = None
        g.audit_before_unknown = True


def _body(resp: Response) -> dict[str, Any] | None:
    if resp.status_code == 204 or not resp.is_json:
        return None
    body = resp.get_json(silent=True)
    return body if isinstance(body, dict) else None


def created_service(resp: Response) -> str | None:
    """The service a POST /v1/services named (the answer's, else the body's), if valid."""
    for source in (_body(resp), request.get_json(silent=True)):
        name = source.get("name") if isinstance(source, dict) else None
        if isinstance(name, str) and is_service_name(name):
            return name
    return None


def changes(resp: Response) -> list[Change] | None:
    """What the request changed (None: it changed nothing, or nothing is known)."""
    endpoint = request.endpoint or ""
    if endpoint not in BEFORE or not 200 <= resp.status_code < 300:
        return None
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None  # a read recorded for the secrets it revealed changed nothing
    before = g.get("audit_before")
    after = _body(resp)
    if request.method == "DELETE":
        after = None
    if endpoint in ("hostdisable", "hostenable"):
        return _host_changes(before or {}, after or {})
    if endpoint == "configitem":
        return diff(before, after, CONFIG_FIELDS)
    if endpoint in ("tokenlist", "tokenitem"):
        return diff(None, after, TOKEN_FIELDS) if after is not None else None
    created = before is None and after is not None
    # The target (or, for a new service, its `name`) says which resource it is.
    out = diff(before, after, skip=(*NOISE, "service", "id") if created else (*NOISE, *IDENTITY))
    if g.get("audit_before_unknown"):
        out.append({"field": TRUNCATED, "before_unknown": True})  # `before`s are not known
    return out


def _host_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    out: list[Change] = []
    items = {f"{i['service']}/{i['id']}": i for i in after.get("items", [])}
    for ref in after.get("changed", []):
        key = f"{ref['service']}/{ref['id']}"
        out += diff(before.get(key), items.get(key), HOST_FIELDS, instance=key)
    return out
