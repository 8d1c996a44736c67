"""What the mirror and the reconciler report (interface + null implementation).

The mirror depends on this interface only; `atlas.metrics.instruments` implements it with
Prometheus and the app injects it. Every implementation is thread-safe and never raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ["MirrorMetrics", "NullMirrorMetrics"]


class MirrorMetrics(Protocol):
    """Receives the mirror's counters, state, ZooKeeper calls and reconcile runs."""

    def zk_call(self, op: str) -> AbstractContextManager[None]:
        """Time the ZooKeeper round trip(s) of the block (`op`: one of the mirror's fixed
        names); a ZooKeeper error that escapes it is counted by class."""

    def counted(self, deltas: Mapping[str, int]) -> None:
        """The mirror's counters (`ZkMirror.status()` names) grew by these amounts."""

    def state(self, *, connected: bool, dirty: int, lag_s: float, leader: bool) -> None:
        """The state of this process's mirror now (published by its owner thread)."""

    def reconciled(self, seconds: float, drift: Mapping[str, int], fixed: int) -> None:
        """A reconcile run finished: its duration, drift found by kind, nodes fixed."""

    def reconcile_failed(self, kind: str) -> None:
        """A reconcile run failed (`kind`: "error" for ZooKeeper/DynamoDB, "crash" else)."""

    def swallowed(self, where: str) -> None:
        """An error was caught and logged at `where` (a fixed name) so a thread lives on."""


class NullMirrorMetrics:
    """Reports nothing."""

    _NOTHING = contextlib.nullcontext()

    def zk_call(self, op: str) -> AbstractContextManager[None]:
        """A context that does nothing."""
        return self._NOTHING

    def counted(self, deltas: Mapping[str, int]) -> None:
        """Do nothing."""

    def state(self, *, connected: bool, dirty: int, lag_s: float, leader: bool) -> None:
        """Do nothing."""

    def reconciled(self, seconds: float, drift: Mapping[str, int], fixed: int) -> None:
        """Do nothing."""

    def reconcile_failed(self, kind: str) -> None:
        """Do nothing."""

    def swallowed(self, where: str) -> None:
        """Do nothing."""
