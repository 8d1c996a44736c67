"""Plain, immutable records the registry hands out (no pynamodb, no Flask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atlas.contract import instance_id


@dataclass(frozen=True)
class HealthCheck:
    """HTTP health check of a service's instances."""

    path: str
    interval_s: int = 10
    timeout_s: int = 2


@dataclass(frozen=True)
class Service:
    """A registered service."""

    name: str
    description: str
    owner: str
    port: int | None
    health_check: HealthCheck | None
    tags: tuple[str, ...]
    version: int
    created_at: str
    updated_at: str
    config_version: int = 0
    deleting: bool = False
    min_enabled: int = 0


@dataclass(frozen=True)
class Instance:
    """One host:port of a service."""

    service: str
    host: str
    port: int
    enabled: bool
    weight: int
    zone: str | None
    labels: dict[str, str] = field(hash=False)
    disabled_reason: str | None
    version: int
    created_at: str
    updated_at: str
    drain: bool = False
    slow_start_s: int = 0
    disabled_until: str | None = None

    @property
    def id(self) -> str:
        """The instance id, `host:port` (IPv6 hosts in brackets)."""
        return instance_id(self.host, self.port)

    @property
    def serving(self) -> bool:
        """True when it takes new requests (enabled, not draining): what min_enabled counts."""
        return self.enabled and not self.drain


@dataclass(frozen=True)
class DueExpiry:
    """A timed disable whose end has passed, as the expiry index saw it (maybe stale)."""

    service: str
    instance_id: str
    version: int
    disabled_until: str


@dataclass(frozen=True)
class HostChange:
    """What a host-wide enable/disable did: every instance on the host as stored after it,
    those it changed, and those it left as they were (already in the asked state)."""

    items: list[Instance]
    changed: list[Instance]
    unchanged: list[Instance]


@dataclass(frozen=True)
class Page:
    """One page of a listing and the cursor of the next (None at the end)."""

    items: list[Any]
    next_cursor: str | None


@dataclass(frozen=True)
class ConfigEntry:
    """One version of a config key; `value` is meaningful only when `revealed` (or not secret)."""

    service: str
    key: str
    version: int
    secret: bool
    deleted: bool
    value: Any
    revealed: bool
    created_at: str
    updated_at: str
    updated_by: str


@dataclass(frozen=True)
class ConfigView:
    """A service's current config: every live key, with secrets opened or masked."""

    realm: str
    service: str
    version: int
    values: dict[str, Any] = field(hash=False)
    secrets_read: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceToken:
    """A service token as listed (never the token itself)."""

    id: str
    service: str
    description: str
    created_at: str
    created_by: str


@dataclass(frozen=True)
class AuditRecord:
    """Who did what to which service, when, from where, and how it ended."""

    id: str
    at: str
    service: str | None
    principal: str
    token_id: str | None
    action: str
    method: str
    path: str
    target: str | None
    status: int
    remote_addr: str | None
    # What changed: [{"field", "before", "after"} (+ "instance" on host actions)]; None when
    # the record says nothing about it (a read, a refused request, an older record).
    changes: tuple[dict[str, Any], ...] | None = None
