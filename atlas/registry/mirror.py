"""What the registry tells the ZooKeeper mirror after each DynamoDB write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from atlas.registry.records import Instance, Service


class Mirror(Protocol):
    """Receives every acknowledged change; must never raise into the write path."""

    def put_service(self, service: Service) -> None:
        """Create or update the service node."""

    def delete_service(self, name: str) -> None:
        """Remove the service node and everything under it."""

    def put_instances(self, instances: Sequence[Instance]) -> None:
        """Create or update instance nodes."""

    def delete_instance(self, service: str, instance_id: str, version: int) -> None:
        """Remove one instance node."""

    def status(self) -> dict[str, Any]:
        """Mirror state for /v1/info and /readyz."""


class NullMirror:
    """A mirror that mirrors nothing (no ZooKeeper configured)."""

    def put_service(self, service: Service) -> None:
        """Do nothing."""

    def delete_service(self, name: str) -> None:
        """Do nothing."""

    def put_instances(self, instances: Sequence[Instance]) -> None:
        """Do nothing."""

    def delete_instance(self, service: str, instance_id: str, version: int) -> None:
        """Do nothing."""

    def status(self) -> dict[str, Any]:
        """Report that no mirror is configured."""
        return {"configured": False}
