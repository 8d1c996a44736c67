"""Znode paths and payloads of the ZooKeeper layout (DESIGN.md), as pure functions of records."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from atlas.contract import INSTANCE_DRAIN, INSTANCE_SLOW_START, Layout
from atlas.registry.records import Instance, Service


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def dumps(obj: dict[str, Any]) -> bytes:
    """Canonical JSON of a znode payload (sorted keys, no spaces): equal data, equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def service_payload(svc: Service, instances: int) -> bytes:
    """The service node: name, port, health_check, version, and how many instances it has.

    The count (an Atlas field) lets a consumer tell a service emptied on purpose from a view
    that is only half there (a blip, a tree being rebuilt): it changes in the same
    transaction as the instance nodes.
    """
    hc = svc.health_check
    return dumps(
        {
            "instances": instances,
            "name": svc.name,
            "port": svc.port,
            "health_check": (
                {"path": hc.path, "interval_s": hc.interval_s, "timeout_s": hc.timeout_s}
                if hc
                else None
            ),
            "version": svc.version,
            # Atlas: the rest of the API's record, so that every Atlas process can serve reads
            # of the service from its in-memory view (atlas.view).
            "description": svc.description,
            "owner": svc.owner,
            "tags": list(svc.tags),
            "created_at": svc.created_at,
            "updated_at": svc.updated_at,
            # The guard rail's floor, only when set (no consumer reads it; the view does).
            **({"min_enabled": svc.min_enabled} if svc.min_enabled else {}),
        }
    )


def instance_payload(inst: Instance) -> bytes:
    """An instance node readable unchanged by Curator x-discovery and SmartStack Synapse."""
    body: dict[str, Any] = {
        # Apache Curator x-discovery ServiceInstance
        "name": inst.service,
        "id": inst.id,
        "address": inst.host,
        "port": inst.port,
        "sslPort": None,
        "payload": None,
        "registrationTimeUTC": _ms(inst.created_at),
        "serviceType": "STATIC",
        "uriSpec": None,
        "enabled": inst.enabled,
        # Airbnb SmartStack Synapse
        "host": inst.host,
        "weight": inst.weight,
        "labels": dict(inst.labels),
        # Atlas
        "zone": inst.zone,
        "version": inst.version,
        "updated_at": inst.updated_at,
        "created_at": inst.created_at,
    }
    if inst.disabled_reason is not None:
        body["disabled_reason"] = inst.disabled_reason
    if not inst.enabled:
        body["haproxy_server_options"] = "disabled"
    # Atlas, only when set (the sidecar applies them through HAProxy's runtime API).
    if inst.drain:
        body[INSTANCE_DRAIN] = True
    if inst.slow_start_s:
        body[INSTANCE_SLOW_START] = inst.slow_start_s
    if inst.disabled_until is not None:
        body["disabled_until"] = inst.disabled_until  # for the view; the leader ends it
    return dumps(body)


def config_payload(version: int) -> bytes:
    """The config stamp: the version number only, never values."""
    return dumps({"version": version})


def desired_tree(layout: Layout, service: Service, instances: list[Instance]) -> dict[str, bytes]:
    """Every node one service should have: its node, its instances and its config stamp."""
    tree = {layout.service(service.name): service_payload(service, len(instances))}
    for inst in instances:
        tree[layout.instance(service.name, inst.id)] = instance_payload(inst)
    tree[layout.config_stamp(service.name)] = config_payload(service.config_version)
    return tree
