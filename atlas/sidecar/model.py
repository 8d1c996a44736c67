"""Immutable snapshot of one realm's services, parsed leniently from the DESIGN.md znodes."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any

from atlas.contract import (
    DEFAULT_WEIGHT,
    INSTANCE_DRAIN,
    INSTANCE_SLOW_START,
    PORT_MAX,
    PORT_MIN,
    WEIGHT_MAX,
    WEIGHT_MIN,
    instance_id,
    is_health_check_path,
    is_ipv6,
    is_service_name,
    normalize_host,
    parse_drain,
    parse_slow_start,
    split_instance_id,
)


@dataclass(frozen=True, order=True)
class HealthCheck:
    """An HTTP health check: GET path every interval, failing after timeout."""

    path: str
    interval_ms: int = 5000
    timeout_ms: int = 2000


@dataclass(frozen=True, order=True)
class Instance:
    """One routable instance; `host:port` is its identity and its HAProxy server name."""

    host: str
    port: int
    enabled: bool = True
    weight: int = DEFAULT_WEIGHT
    address: str = ""  # where to connect; the identity host when empty
    drain: bool = False  # no new requests (HAProxy `drain`); runtime state, not in the config
    slow_start_s: int = 0  # HAProxy `slowstart` after an enable; 0: none

    @cached_property
    def key(self) -> str:
        """The instance identity, `host:port` (IPv6 hosts in brackets, as in its znode name)."""
        return instance_id(self.host, self.port)

    @cached_property
    def target(self) -> str:
        """The `addr:port` HAProxy connects to (IPv6 in brackets)."""
        addr = self.address or self.host
        return f"[{addr}]:{self.port}" if is_ipv6(addr) else f"{addr}:{self.port}"


@dataclass(frozen=True)
class Service:
    """A service, its optional health check and its instances sorted by identity."""

    name: str
    health_check: HealthCheck | None = None
    instances: tuple[Instance, ...] = ()
    # How many instances Atlas says the service has (its node's `instances`), None if unsaid.
    # 0 means emptied on purpose, which the last-known-good guard must not hold back.
    declared: int | None = field(default=None, compare=False)
    # The ZooKeeper index of the service's latest change in the view it was read from.
    index: int = field(default=0, compare=False)

    def instance_map(self) -> dict[str, Instance]:
        """Instances by `host:port`."""
        return {i.key: i for i in self.instances}

    @cached_property
    def server_ids(self) -> dict[str, int]:
        """Stable numeric HAProxy server ids from host:port (collisions probed in order)."""
        ids: dict[str, int] = {}
        used: set[int] = set()
        for inst in self.instances:
            sid = zlib.crc32(inst.key.encode()) % 1_000_000_000 + 1
            while sid in used:
                sid = sid % 1_000_000_000 + 1
            used.add(sid)
            ids[inst.key] = sid
        return ids

    def with_instances(self, instances: tuple[Instance, ...]) -> Service:
        """A copy with other instances (sorted)."""
        return replace(self, instances=tuple(sorted(instances, key=lambda i: (i.host, i.port))))


@dataclass(frozen=True)
class Snapshot:
    """All services of one realm at one moment, sorted by name; never mutated."""

    services: tuple[Service, ...] = ()
    _index: Mapping[str, Service] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.services, key=lambda s: s.name))
        object.__setattr__(self, "services", ordered)
        object.__setattr__(self, "_index", {s.name: s for s in ordered})

    def get(self, name: str) -> Service | None:
        """The named service, or None."""
        return self._index.get(name)

    def names(self) -> frozenset[str]:
        """Names of every service."""
        return frozenset(self._index)

    def instance_count(self) -> int:
        """Total number of instances."""
        return sum(len(s.instances) for s in self.services)


def _port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        return None
    return port if PORT_MIN <= port <= PORT_MAX else None


def _load_json(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _positive_ms(value: Any, default_ms: int) -> int:
    if value is None or isinstance(value, bool):
        return default_ms
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default_ms
    if not 0 < seconds <= 3600:
        return default_ms
    return max(1, round(seconds * 1000))


def parse_health_check(value: Any) -> HealthCheck | None:
    """The service's `health_check` {path, interval_s, timeout_s}, or None when absent/invalid."""
    if not isinstance(value, dict):
        return None
    path = value.get("path")
    if not is_health_check_path(path):
        return None
    return HealthCheck(
        path=path,
        interval_ms=_positive_ms(value.get("interval_s"), 5000),
        timeout_ms=_positive_ms(value.get("timeout_s"), 2000),
    )


# Pure and called per change with the same few thousand names: remembered.
_split_id = lru_cache(maxsize=1 << 16)(split_instance_id)
_normalize = lru_cache(maxsize=1 << 16)(normalize_host)


def parse_instance(node_name: str, data: bytes | None) -> tuple[Instance | None, str | None]:
    """Parse one instance znode (Curator + Synapse + Atlas fields); returns (instance, warning)."""
    parsed = _split_id(node_name)
    if parsed is None:
        return None, f"instance node {node_name!r}: name is not <host>:<port>"
    host, port = parsed
    obj = _load_json(data)
    if obj is None:
        return None, f"instance node {node_name!r}: data is not a JSON object"
    raw_address = obj.get("host", obj.get("address"))
    address = _normalize(raw_address) if isinstance(raw_address, str) else None
    if address is None:
        address = host
    data_port = _port(obj.get("port"))
    if data_port is not None and data_port != port:
        return None, f"instance node {node_name!r}: port {data_port} does not match its name"
    enabled = obj.get("enabled", True)
    enabled = enabled if isinstance(enabled, bool) else True
    options = obj.get("haproxy_server_options")
    if isinstance(options, str) and "disabled" in options.split():
        enabled = False
    weight_raw = obj.get("weight", DEFAULT_WEIGHT)
    if isinstance(weight_raw, bool) or not isinstance(weight_raw, int | float):
        weight = DEFAULT_WEIGHT
    else:
        weight = min(WEIGHT_MAX, max(WEIGHT_MIN, int(weight_raw)))
    return (
        Instance(
            host=host,
            port=port,
            enabled=enabled,
            weight=weight,
            address="" if address == host else address,
            drain=parse_drain(obj.get(INSTANCE_DRAIN)),
            slow_start_s=parse_slow_start(obj.get(INSTANCE_SLOW_START)),
        ),
        None,
    )


def parse_service_node(
    name: str, data: bytes | None
) -> tuple[HealthCheck | None, int | None, list[str]]:
    """A service node's own data: (health check, declared instance count, warnings)."""
    warnings: list[str] = []
    obj = _load_json(data)
    health: HealthCheck | None = None
    declared: int | None = None
    if obj is None:
        if data:
            warnings.append(f"service node {name!r}: data is not a JSON object, no health check")
    else:
        health = parse_health_check(obj.get("health_check"))
        if obj.get("health_check") and health is None:
            warnings.append(f"service {name!r}: invalid health_check ignored")
        count = obj.get("instances")
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            declared = count
    return health, declared, warnings


def parse_service(
    name: str, data: bytes | None, children: Mapping[str, bytes | None], index: int = 0
) -> tuple[Service | None, list[str]]:
    """Parse a service znode and its instance children; returns (service, warnings).

    `index` is the ZooKeeper index of the service's latest change, carried along (not compared).
    """
    if not is_service_name(name):
        return None, [f"service node {name!r}: not a valid service name, ignored"]
    health, declared, warnings = parse_service_node(name, data)
    instances: list[Instance] = []
    for child, child_data in children.items():
        inst, warning = parse_instance(child, child_data)
        if warning:
            warnings.append(f"service {name!r}: {warning}")
        if inst is not None:
            instances.append(inst)
    service = Service(name=name, health_check=health, declared=declared, index=index)
    return service.with_instances(tuple(instances)), warnings


def build_snapshot(
    raw: Mapping[str, tuple[bytes | None, Mapping[str, bytes | None]]],
) -> tuple[Snapshot, list[str]]:
    """Build a snapshot from {service: (data, {instance node: data})}; returns (snapshot, warnings)."""
    services: list[Service] = []
    warnings: list[str] = []
    for name, (data, children) in raw.items():
        service, service_warnings = parse_service(name, data, children)
        warnings.extend(service_warnings)
        if service is not None:
            services.append(service)
    return Snapshot(tuple(services)), warnings
