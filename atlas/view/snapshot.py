"""What readers of the view get: immutable snapshots of a realm's services and instances.

A snapshot is built by the view's owner thread and never changed after it is published, so
any thread may read it without a lock. Its `index` is the ZooKeeper zxid the view has reached:
every change with a zxid up to `index` to a node the view watches is reflected in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from atlas.registry.records import Instance, Service

#: Resource keys of blocking queries (what a waiter waits on).
SERVICES = ("services",)
INDEX = ("index",)


def instances_key(name: str) -> tuple[str, str]:
    """The key of a service's instance list."""
    return ("instances", name)


def config_key(name: str) -> tuple[str, str]:
    """The key of a service's config document."""
    return ("config", name)


@dataclass(frozen=True, eq=False)
class ServiceEntry:
    """One service as the view holds it.

    `complete` is False when the service node could not be decoded or its instance count
    (`"instances": n`, written in the same transaction as the instance nodes) disagrees with
    the instances seen: such a service is read from DynamoDB. `index` is the zxid of the last
    change to the service node or its instances; `config_index` that of its config stamp.
    """

    name: str
    service: Service | None
    instances: tuple[Instance, ...]  # ordered by id, as DynamoDB returns them
    complete: bool
    index: int
    service_index: int
    config_version: int | None
    config_index: int
    by_id: Mapping[str, Instance] = field(default_factory=dict)
    # Renderers may cache what they derive from this entry here (a benign race: equal values).
    memo: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The realm as the view has it at `index` (see the module docstring)."""

    index: int
    epoch: int
    services: Mapping[str, ServiceEntry]
    names: tuple[str, ...]  # sorted
    services_index: int
    #: Services whose view disagreed with DynamoDB when it was last checked (after a load).
    unverified: frozenset[str]
    #: Services whose entry is not complete (see ServiceEntry).
    incomplete: frozenset[str]
    revocations: int | None
    tokens_index: int
    memo: dict[str, Any] = field(default_factory=dict)

    def entry(self, name: str) -> ServiceEntry | None:
        """A service's entry, or None when the view has no such service."""
        return self.services.get(name)

    def resource_index(self, key: tuple[str, ...]) -> int:
        """The zxid of the last change to one blocking-query resource.

        A service the view does not have answers with the snapshot's index.
        """
        if key == SERVICES:
            return self.services_index
        if key == INDEX:
            return self.index
        e = self.services.get(key[1])
        if e is None:
            return self.index
        return e.index if key[0] == "instances" else e.config_index

    @property
    def list_current(self) -> bool:
        """True when the list of services can be served: verified and every entry complete."""
        return not self.unverified and not self.incomplete

    def hosts(self) -> Mapping[str, tuple[Instance, ...]]:
        """Every instance by host, ordered by service then id (computed once per snapshot)."""
        cached = self.memo.get("hosts")
        if cached is None:
            by_host: dict[str, list[Instance]] = {}
            for name in self.names:
                for inst in self.services[name].instances:
                    by_host.setdefault(inst.host, []).append(inst)
            cached = {h: tuple(v) for h, v in by_host.items()}
            self.memo["hosts"] = cached
        return cached
