"""Thin flask-restful resources: parse, call the registry, serialize."""

from __future__ import annotations

from typing import Any

from flask import current_app, g, request
from flask_restful import Resource
from marshmallow import Schema

from atlas.api import schemas as s
from atlas.api.http import (
    etag,
    if_match,
    if_match_star,
    if_none_match_star,
    load_body,
    load_query,
)
from atlas.contract import HOST_RULE, check_service_name, normalize_host, parse_instance_id
from atlas.errors import NotFound, PreconditionFailed, ValidationFailed
from atlas.registry import Instance, Registry, Service
from atlas.registry.records import HostChange

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

Result = tuple[Any, int, dict[str, str]] | tuple[Any, int]


def registry() -> Registry:
    """The registry injected into the app by AtlasExtension."""
    reg: Registry = current_app.extensions["atlas"].registry
    return reg


def page_args(schema: Schema = page_query) -> tuple[int, str | None]:
    """(limit, cursor) of a list request, with the configured default and maximum."""
    args = load_query(schema)
    settings = current_app.extensions["atlas"].settings
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


class ServiceList(Resource):
    """/v1/services"""

    def get(self) -> Result:
        """List services."""
        limit, cursor = page_args()
        page = registry().list_services(limit, cursor)
        return {
            "items": [dump_service(x) for x in page.items],
            "next_cursor": page.next_cursor,
        }, 200

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
        svc = registry().get_service(check_service_name(name))
        return dump_service(svc), 200, {"ETag": etag(svc.version)}

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
        """List a service's instances."""
        check_service_name(name)
        limit, cursor = page_args(instance_list_query)
        enabled = load_query(instance_list_query).get("enabled")
        page = registry().list_instances(name, limit, cursor)
        return {
            "items": [dump_instance(x) for x in enabled_only(page.items, enabled)],
            "next_cursor": page.next_cursor,
        }, 200


class InstanceItem(Resource):
    """/v1/services/{name}/instances/{host}:{port}"""

    def get(self, name: str, instance: str) -> Result:
        """Read an instance."""
        check_service_name(name)
        host, port = _instance_key(instance)
        inst = registry().get_instance(name, host, port)
        return dump_instance(inst), 200, {"ETag": etag(inst.version)}

    def put(self, name: str, instance: str) -> Result:
        """Attach (201) or replace (200) an instance."""
        check_service_name(name)
        host, port = _instance_key(instance)
        data = load_body(instance_put)
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
            name, host, port, data, if_match=version, if_none_match=if_none_match_star()
        )
        headers = {"ETag": etag(inst.version)}
        if created:
            headers["Location"] = f"/v1/services/{name}/instances/{inst.id}"
        return dump_instance(inst), 201 if created else 200, headers

    def patch(self, name: str, instance: str) -> Result:
        """Change some fields of an instance (enable/disable, weight, ...)."""
        check_service_name(name)
        host, port = _instance_key(instance)
        changes = load_body(instance_patch)
        inst = registry().update_instance(name, host, port, changes, if_match())
        return dump_instance(inst), 200, {"ETag": etag(inst.version)}

    def delete(self, name: str, instance: str) -> Result:
        """Detach an instance."""
        check_service_name(name)
        host, port = _instance_key(instance)
        registry().delete_instance(name, host, port, if_match())
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
        enabled = load_query(host_query).get("enabled")
        items = enabled_only(registry().host_instances(h), enabled)
        return host_out.dump({"host": h, "items": items}), 200


class HostDisable(Resource):
    """/v1/hosts/{host}/disable"""

    def post(self, host: str) -> Result:
        """Disable every instance on a host."""
        h = _host(host)
        body = load_body(host_action, required=False)
        return dump_host_change(h, registry().change_host(h, False, body.get("reason"))), 200


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
