"""Pure diff of desired znodes against actual ones, as an ordered list of CAS operations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    """One znode operation: create, set (CAS on version) or delete (CAS on version)."""

    kind: str  # "create" | "set" | "delete"
    path: str
    data: bytes = b""
    version: int = -1


@dataclass(frozen=True)
class Plan:
    """The operations that turn actual into desired, and what kind of drift each fixes."""

    ops: tuple[Op, ...]

    @property
    def missing(self) -> int:
        """Nodes that had to be created."""
        return sum(1 for o in self.ops if o.kind == "create")

    @property
    def stale(self) -> int:
        """Nodes whose data was out of date."""
        return sum(1 for o in self.ops if o.kind == "set")

    @property
    def extra(self) -> int:
        """Nodes that should not exist."""
        return sum(1 for o in self.ops if o.kind == "delete")


def diff_subtree(desired: Mapping[str, bytes], actual: Mapping[str, tuple[bytes, int]]) -> Plan:
    """Diff two views of a subtree: deletes deepest first, then sets, then creates shallowest first."""
    deletes = [
        Op("delete", path, version=ver) for path, (_, ver) in actual.items() if path not in desired
    ]
    sets = [
        Op("set", path, data, actual[path][1])
        for path, data in desired.items()
        if path in actual and actual[path][0] != data
    ]
    creates = [Op("create", path, data) for path, data in desired.items() if path not in actual]
    deletes.sort(key=lambda o: (-o.path.count("/"), o.path))
    sets.sort(key=lambda o: o.path)
    creates.sort(key=lambda o: (o.path.count("/"), o.path))
    return Plan(tuple(deletes + sets + creates))
