"""Plain, immutable records the registry hands out (no pynamodb, no Flask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    @property
    def id(self) -> str:
        """The instance id, `host:port` (IPv6 hosts in brackets)."""
        return instance_id(self.host, self.port)


def instance_id(host: str, port: int) -> str:
    """Format host and port as the instance id used in URLs and znode names."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Page:
    """One page of a listing and the cursor of the next (None at the end)."""

    items: list[Any]
    next_cursor: str | None
