"""Read the mirrored ZooKeeper tree, and compute what it should be from DynamoDB's truth."""

from __future__ import annotations

import json
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from atlas.config import Settings
from atlas.contract import Layout
from atlas.mirror.payloads import desired_tree
from atlas.registry import Instance, Registry, build_models_for


def zk_tree(hosts: str, realm: str) -> dict[str, dict[str, Any]]:
    """Every node under /atlas/<realm>/services and /config, decoded, by path."""
    layout = Layout(realm)
    client = KazooClient(hosts=hosts)
    client.start(timeout=15)
    out: dict[str, dict[str, Any]] = {}
    try:
        for root in (layout.services, layout.config):
            try:
                names = client.get_children(root)
            except NoNodeError:
                continue
            for name in names:
                path = f"{root}/{name}"
                data, _ = client.get(path)
                out[path] = json.loads(data)
                for child in client.get_children(path):
                    cdata, _ = client.get(f"{path}/{child}")
                    out[f"{path}/{child}"] = json.loads(cdata)
    finally:
        client.stop()
        client.close()
    return out


def truth_tree(dynamodb_endpoint: str, realm: str) -> dict[str, dict[str, Any]]:
    """What the mirror must hold, computed from DynamoDB with the layout's pure functions."""
    settings = Settings(
        realm=realm,
        dynamodb_endpoint=dynamodb_endpoint,
        auth_disabled=realm == "local",
        admin_tokens=("x" * 16,),
    )
    reg = Registry(build_models_for(settings))
    layout = Layout(realm)
    instances: dict[str, list[Instance]] = {}
    for inst in reg.iter_instances():
        instances.setdefault(inst.service, []).append(inst)
    out: dict[str, dict[str, Any]] = {}
    for svc in reg.scan_services():
        for path, data in desired_tree(layout, svc, instances.get(svc.name, [])).items():
            out[path] = json.loads(data)
    return out
