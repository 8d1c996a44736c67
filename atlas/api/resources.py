"""Thin flask-restful resources: parse, call the registry, serialize."""

from __future__ import annotations

import base64
import binascii
import json
from types import SimpleNamespace
from typing import Any

from flask import Response, current_app, g, request
from flask_restful import Resource
from marshmallow import Schema

from atlas.api import schemas as s
from atlas.api.freshness import Choice, choose, freshness
from atlas.api.http import (
    etag,
    if_match,
    if_match_star,
    if_none_match_star,
    load_body,
    load_query,
)
from atlas.contract import (
    HOST_RULE,
    check_service_name,
    instance_id,
    normalize_host,
    parse_instance_id,
)
from atlas.errors import NotFound, PreconditionFailed, ValidationFailed
from atlas.registry import Instance, Registry, Service
from atlas.registry.records import HostChange
from atlas.registry.service import INSTANCE_CURSOR, SERVICE_CURSOR
from atlas.view import SERVICES, Snapshot, instances_key

service_out = s.ServiceSchema()
instance_out = s.InstanceSchema()
host_out = s.HostSchema()
host_change_out = s.HostChangeSchema()
page_query = s.PageQuerySchema()
instance_list_query = s.InstanceListQuerySchema()
host_query = s.HostQuerySchema()
delete_query = s.DeleteQuerySchema()
service_create = s.ServiceCreateSchema()
service_patch = s.ServicePatchSchema()
instance_put = s.InstancePutSchema()
instance_patch = s.InstancePatchSchema()
host_action = s.HostActionSchema()
host_disable = s.HostDisableSchema()
force_query = s.ForceQuerySchema()

Result = tuple[Any, int, dict[str, str]] | tuple[Any, int]


def registry() -> Registry:
    """The registry injected into the app by AtlasExtension."""
    reg: Registry = current_app.extensions["atlas"].registry
    return reg


def page_args(
    query: dict[str, str] | None = None, schema: Schema = page_query
) -> tuple[int, str | None]:
    """(limit, cursor) of a list request, with the configured default and maximum."""
    settings = current_app.extensions["atlas"].settings
    if not (request.args if query is None else query):
        return settings.page_limit_default, None  # nothing to validate: the common case
    args = load_query(schema, query)
    limit = args.get("limit", settings.page_limit_default)
    if limit > settings.page_limit_max:
        raise ValidationFailed(
            "limit too large", {"limit": [f"Must be at most {settings.page_limit_max}."]}
        )
    return limit, args.get("cursor")


def dump_service(svc: Service) -> dict[str, Any]:
    """Serialize a service."""
    data: dict[str, Any] = service_out.dump(svc)
    return data


def dump_instance(inst: Instance) -> dict[str, Any]:
    """Serialize an instance."""
    data: dict[str, Any] = instance_out.dump(inst)
    return data


def _instance_key(instance: str) -> tuple[str, int]:
    return parse_instance_id(instance)


def dumped_instances(snap: Snapshot, name: str) -> list[dict[str, Any]]:
    """A view entry's instances, serialized once per entry (entries are immutable)."""
    entry = snap.services[name]
    items: list[dict[str, Any]] | None = entry.memo.get("dumped")
    if items is None:
        items = [dump_instance(i) for i in entry.instances]
        entry.memo["dumped"] = items
    return items


def json_response(body: str, status: int, headers: dict[str, str]) -> Response | None:
    """A response with this JSON text (made as flask-restful's output_json makes one), or None
    when flask-restful would render something else (another Accept, debug indentation)."""
    if current_app.debug or current_app.config.get("RESTFUL_JSON"):
        return None
    api = current_app.extensions.get("atlas_api")
    representations = api.representations if api is not None else {"application/json": None}
    chosen = request.accept_mimetypes.best_match(representations, default="application/json")
    if chosen != "application/json":
        return None
    resp = current_app.response_class(body, status, headers)
    resp.headers["Content-Type"] = "application/json"
    return resp


def render_cached(memo: dict[str, Any], key: str, build: Any) -> str:
    """The JSON text of `build()`, made once per immutable view entry (as output_json does)."""
    text: str | None = memo.get(key)
    if text is None:
        text = json.dumps(build()) + "\n"
        memo[key] = text
    return text


# A page of services from the view is in name order, and its cursor says so: DynamoDB lists
# services in its own (hash) order, so a cursor of one order is no place in the other.
_BY_NAME = "name"


def _services_cursor(cursor: str | None) -> tuple[str | None, bool]:
    """(the name a page starts after, whether the cursor is a by-name one of the view)."""
    if not cursor:
        return None, False
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = None
    if (
        isinstance(raw, dict)
        and raw.get("order") == {"S": _BY_NAME}
        and set(raw) == {"name", "order"}
    ):
        name = raw["name"].get("S") if isinstance(raw["name"], dict) else None
        if isinstance(name, str) and name:
            return name, True
    SERVICE_CURSOR.decode(cursor)  # 422 unless it is one of DynamoDB's
    return None, False


def _by_name_cursor(name: str) -> str:
    key = {"name": {"S": name}, "order": {"S": _BY_NAME}}
    raw = json.dumps(key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _page_by_name(
    items: list[Service], limit: int, after: str | None
) -> tuple[list[Service], str | None]:
    rest = [x for x in items if after is None or x.name > after]
    page = rest[:limit]
    return page, _by_name_cursor(page[-1].name) if len(rest) > limit else None


class ServiceList(Resource):
    """/v1/services"""

    def get(self) -> Result:
        """List services (from the view in name order; blocking with ?index=)."""
        fresh, rest = freshness(blocking=True)
        limit, cursor = page_args(rest)
        after, by_name = _services_cursor(cursor)
        choice = choose(fresh, SERVICES, None)
        snap = choice.snapshot
        if snap is not None and (by_name or cursor is None):
            services = [snap.services[n].service for n in snap.names]
            page, next_cursor = _page_by_name([x for x in services if x is not None], limit, after)
        elif by_name:
            # The view's order, continued from DynamoDB (the view is not current now).
            everything = sorted(registry().scan_services(), key=lambda x: x.name)
            page, next_cursor = _page_by_name(everything, limit, after)
        else:
            if snap is not None:
                choice = Choice(None, choice.index, "cursor")
            stored = registry().list_services(limit, cursor)
            page, next_cursor = stored.items, stored.next_cursor
        return (
            {
                "items": [dump_service(x) for x in page],
                "next_cursor": next_cursor,
            },
            200,
            choice.headers(),
        )

    def post(self) -> Result:
        """Register a service."""
        data = load_body(service_create)
        svc = registry().create_service(data)
        return (
            dump_service(svc),
            201,
            {"ETag": etag(svc.version), "Location": f"/v1/services/{svc.name}"},
        )


class ServiceItem(Resource):
    """/v1/services/{name}"""

    def get(self, name: str) -> Result:
        """Read a service."""
        check_service_name(name)
        fresh, _ = freshness(blocking=False)
        choice = choose(fresh, instances_key(name), name)
        entry = choice.snapshot.entry(name) if choice.snapshot is not None else None
        svc = entry.service if entry is not None and entry.service is not None else None
        if svc is None:
            choice = Choice(None)
            svc = registry().get_service(name)
        return dump_service(svc), 200, {"ETag": etag(svc.version), **choice.headers()}

    def patch(self, name: str) -> Result:
        """Change some fields of a service."""
        check_service_name(name)
        changes = load_body(service_patch)
        svc = registry().update_service(name, changes, if_match())
        return dump_service(svc), 200, {"ETag": etag(svc.version)}

    def delete(self, name: str) -> Result:
        """Delete a service (409 while it has instances unless ?cascade=true)."""
        check_service_name(name)
        args = load_query(delete_query)
        registry().delete_service(name, cascade=args["cascade"], if_match=if_match())
        return "", 204


class InstanceList(Resource):
    """/v1/services/{name}/instances"""

    def get(self, name: str) -> Result:
        """List a service's instances (blocking with ?index=)."""
        check_service_name(name)
        fresh, rest = freshness(blocking=True)
        limit, cursor = page_args(rest, instance_list_query)
        enabled = load_query(instance_list_query, rest).get("enabled") if rest else None
        start = INSTANCE_CURSOR.decode(cursor, service=name)
        choice = choose(fresh, instances_key(name), name)
        snap = choice.snapshot
        if snap is not None:
            entry = snap.services[name]
            if start is None and enabled is None and limit >= len(entry.instances):
                # The whole list in one page: its text is made once per entry.
                text = render_cached(entry.memo, "all", lambda: {
                    "items": dumped_instances(snap, name), "next_cursor": None})  # fmt: skip
                resp = json_response(text, 200, choice.headers())
                if resp is not None:
                    return resp  # type: ignore[return-value]
            items = dumped_instances(snap, name)
            first = 0
            if start is not None:
                after = start["instance_id"]["S"]
                first = next((i for i, x in enumerate(entry.instances) if x.id > after), len(items))
            page = items[first : first + limit]
            more = first + limit < len(items)
            last = entry.instances[first + limit - 1] if more else None
            next_cursor = (
                INSTANCE_CURSOR.encode(SimpleNamespace(service=name, instance_id=last.id))  # type: ignore[arg-type]
                if last is not None
                else None
            )
            if enabled is not None:
                page = [x for x in page if x["enabled"] is enabled]
            return {"items": page, "next_cursor": next_cursor}, 200, choice.headers()
        stored = registry().list_instances(name, limit, cursor)
        return (
            {
                "items": [dump_instance(x) for x in enabled_only(stored.items, enabled)],
                "next_cursor": stored.next_cursor,
            },
            200,
            choice.headers(),
        )


class InstanceItem(Resource):
    """/v1/services/{name}/instances/{host}:{port}"""

    def get(self, name: str, instance: str) -> Result:
        """Read an instance."""
        check_service_name(name)
        host, port = _instance_key(instance)
        fresh, _ = freshness(blocking=False)
        choice = choose(fresh, instances_key(name), name)
        entry = choice.snapshot.entry(name) if choice.snapshot is not None else None
        inst = entry.by_id.get(instance_id(host, port)) if entry is not None else None
        if inst is None:
            choice = Choice(None)
            inst = registry().get_instance(name, host, port)
        return dump_instance(inst), 200, {"ETag": etag(inst.version), **choice.headers()}

    def put(self, name: str, instance: str) -> Result:
        """Attach (201) or replace (200) an instance."""
        check_service_name(name)
        host, port = _instance_key(instance)
        data = load_body(instance_put)
        force = load_query(force_query)["force"]
        mismatch = {
            k: ["Must match the instance id in the path."]
            for k, v in (("host", host), ("port", port))
            if k in data and data[k] != v
        }
        if mismatch:
            raise ValidationFailed("body disagrees with the path", mismatch)
        version = if_match()
        if if_match_star():
            try:
                version = registry().get_instance(name, host, port).version
            except NotFound:
                raise PreconditionFailed(f"instance {instance} does not exist") from None
        inst, created = registry().put_instance(
            name,
            host,
            port,
            data,
            if_match=version,
            if_none_match=if_none_match_star(),
            force=force,
        )
        headers = {"ETag": etag(inst.version)}
        if created:
            headers["Location"] = f"/v1/services/{name}/instances/{inst.id}"
        return dump_instance(inst), 201 if created else 200, headers

    def patch(self, name: str, instance: str) -> Result:
        """Change some fields of an instance (enable/disable, drain, weight, ...)."""
        check_service_name(name)
        host, port = _instance_key(instance)
        changes = load_body(instance_patch)
        force = load_query(force_query)["force"]
        inst = registry().update_instance(name, host, port, changes, if_match(), force=force)
        return dump_instance(inst), 200, {"ETag": etag(inst.version)}

    def delete(self, name: str, instance: str) -> Result:
        """Detach an instance."""
        check_service_name(name)
        host, port = _instance_key(instance)
        force = load_query(force_query)["force"]
        registry().delete_instance(name, host, port, if_match(), force=force)
        return "", 204


def enabled_only(items: list[Instance], enabled: bool | None) -> list[Instance]:
    """`?enabled=`: the instances in that state (all when not given). A page filtered this
    way may hold fewer than `limit` items; `next_cursor` still leads to the rest."""
    return items if enabled is None else [i for i in items if i.enabled is enabled]


def dump_host_change(host: str, change: HostChange) -> dict[str, Any]:
    """Serialize a host-wide enable/disable."""
    data: dict[str, Any] = host_change_out.dump(
        {"host": host, "items": change.items, "changed": change.changed,
         "unchanged": change.unchanged}
    )  # fmt: skip
    return data


def _host(host: str) -> str:
    normalized = normalize_host(host)
    if normalized is None:
        raise ValidationFailed(f"invalid host {host[:80]!r}", {"host": [HOST_RULE]})
    return normalized


class HostItem(Resource):
    """/v1/hosts/{host}"""

    def get(self, host: str) -> Result:
        """Every instance on a host."""
        h = _host(host)
        fresh, rest = freshness(blocking=False)
        enabled = load_query(host_query, rest).get("enabled") if rest else None
        choice = choose(fresh, SERVICES, None)
        if choice.snapshot is not None:
            items = list(choice.snapshot.hosts().get(h, ()))
        else:
            items = registry().host_instances(h)
        return (
            host_out.dump({"host": h, "items": enabled_only(items, enabled)}),
            200,
            choice.headers(),
        )


class HostDisable(Resource):
    """/v1/hosts/{host}/disable"""

    def post(self, host: str) -> Result:
        """Disable every instance on a host (every service's min_enabled in one decision)."""
        h = _host(host)
        body = load_body(host_disable, required=False)
        force = load_query(force_query)["force"]
        change = registry().change_host(
            h, False, body.get("reason"), until=body.get("disabled_until"), force=force
        )
        return dump_host_change(h, change), 200


class HostEnable(Resource):
    """/v1/hosts/{host}/enable"""

    def post(self, host: str) -> Result:
        """Enable every instance on a host."""
        h = _host(host)
        load_body(host_action, required=False)
        return dump_host_change(h, registry().change_host(h, True)), 200


class Info(Resource):
    """/v1/info"""

    def get(self) -> Result:
        """Realm, build and mirror state."""
        ext = current_app.extensions["atlas"]
        return ext.info(principal=getattr(g, "principal", None)), 200


def request_is_write() -> bool:
    """True for methods that change state."""
    return request.method not in ("GET", "HEAD", "OPTIONS")
