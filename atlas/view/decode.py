"""Znode payloads back into the API's records: the inverse of `atlas.mirror.payloads`.

Pure functions. A payload that lacks a field the API returns (a node written by an older
Atlas, or a field another change added to the records but not to the znodes) decodes to None:
the view then serves that service from DynamoDB instead of guessing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from atlas.registry.records import HealthCheck, Instance, Service

# Record fields that no znode carries: they come from elsewhere (the config stamp, the path).
_SERVICE_NOT_IN_NODE = {"config_version", "deleting"}
_INSTANCE_NOT_IN_NODE = {"service"}


def _loads(data: bytes | None) -> dict[str, Any] | None:
    try:
        body = json.loads(data or b"")
    except (TypeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _fields(cls: type, body: dict[str, Any], skip: set[str]) -> dict[str, Any] | None:
    """The record's constructor arguments found in `body`; None if one it needs is absent.

    A field with a falsy default may be absent (payloads omit fields that are unset, such as
    `disabled_reason`); any other field must be there.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name in body:
            out[f.name] = body[f.name]
        elif f.default is dataclasses.MISSING or f.default:
            if f.name == "disabled_reason":  # Optional without a dataclass default
                out[f.name] = None
                continue
            return None
    return out


def decode_service(data: bytes | None, config_version: int) -> tuple[Service, int] | None:
    """(the service record, its node's instance count), or None when the node cannot say."""
    body = _loads(data)
    if body is None or not isinstance(body.get("instances"), int):
        return None
    args = _fields(Service, body, _SERVICE_NOT_IN_NODE)
    if args is None:
        return None
    try:
        hc = args.get("health_check")
        args["health_check"] = HealthCheck(**hc) if hc is not None else None
        args["tags"] = tuple(args.get("tags") or ())
        return Service(**args, config_version=config_version), int(body["instances"])
    except (TypeError, ValueError):
        return None


def decode_instance(service: str, data: bytes | None) -> Instance | None:
    """The instance record of an instance node, or None when the node cannot say."""
    body = _loads(data)
    if body is None or body.get("name") != service:
        return None
    args = _fields(Instance, body, _INSTANCE_NOT_IN_NODE)
    if args is None:
        return None
    try:
        args["labels"] = {str(k): str(v) for k, v in (args.get("labels") or {}).items()}
        return Instance(service=service, **args)
    except (TypeError, ValueError, AttributeError):
        return None


def decode_number(data: bytes | None, field: str) -> int | None:
    """The integer `field` of a stamp node (`{"version": n}`, `{"revocations": n}`), or None."""
    body = _loads(data)
    value = body.get(field) if body is not None else None
    return value if type(value) is int else None
