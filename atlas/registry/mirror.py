"""What the registry tells the ZooKeeper mirror after each DynamoDB write."""

from __future__ import annotations

from typing import Any, Protocol

from atlas.registry.records import Instance, Service


class Mirror(Protocol):
    """Receives every acknowledged change; must never raise into the write path.

    Each change returns the ZooKeeper zxid at which it was published, or None when it was
    not mirrored now (no ZooKeeper, ZooKeeper down: the mirror catches up later).
    """

    def put_service(self, service: Service) -> int | None:
        """Create or update the service node; the zxid that published it, or None."""

    def delete_service(self, name: str) -> int | None:
        """Remove the service node and everything under it; the zxid, or None."""

    def prepare_instance(self, service: str, instance_id: str) -> Any:
        """Called before an instance write; whatever it returns is passed to instance_changed."""

    def instance_changed(
        self, service: str, instance_id: str, record: Instance | None, prepared: Any
    ) -> int | None:
        """An instance was written (record) or detached (None); the zxid, or None."""

    def status(self) -> dict[str, Any]:
        """Mirror state for /v1/info and /readyz."""


class NullMirror:
    """A mirror that mirrors nothing (no ZooKeeper configured)."""

    def put_service(self, service: Service) -> int | None:
        """Do nothing: not mirrored."""
        return None

    def delete_service(self, name: str) -> int | None:
        """Do nothing: not mirrored."""
        return None

    def prepare_instance(self, service: str, instance_id: str) -> Any:
        """Nothing to prepare."""
        return None

    def instance_changed(
        self, service: str, instance_id: str, record: Instance | None, prepared: Any
    ) -> int | None:
        """Do nothing: not mirrored."""
        return None

    def status(self) -> dict[str, Any]:
        """Report that no mirror is configured."""
        return {"configured": False}
