"""What the registry tells the ZooKeeper mirror after each DynamoDB write."""

from __future__ import annotations

from typing import Any, Protocol

from atlas.registry.records import Instance, Service


class Mirror(Protocol):
    """Receives every acknowledged change; must never raise into the write path."""

    def put_service(self, service: Service) -> None:
        """Create or update the service node."""

    def delete_service(self, name: str) -> None:
        """Remove the service node and everything under it."""

    def prepare_instance(self, service: str, instance_id: str) -> Any:
        """Called before an instance write; whatever it returns is passed to instance_changed."""

    def instance_changed(
        self, service: str, instance_id: str, record: Instance | None, prepared: Any
    ) -> None:
        """An instance was written (record) or detached (None)."""

    def status(self) -> dict[str, Any]:
        """Mirror state for /v1/info and /readyz."""


class NullMirror:
    """A mirror that mirrors nothing (no ZooKeeper configured)."""

    def put_service(self, service: Service) -> None:
        """Do nothing."""

    def delete_service(self, name: str) -> None:
        """Do nothing."""

    def prepare_instance(self, service: str, instance_id: str) -> Any:
        """Nothing to prepare."""
        return None

    def instance_changed(
        self, service: str, instance_id: str, record: Instance | None, prepared: Any
    ) -> None:
        """Do nothing."""

    def status(self) -> dict[str, Any]:
        """Report that no mirror is configured."""
        return {"configured": False}
