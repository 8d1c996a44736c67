"""The expiry sweep: Atlas itself ends timed disables (`disabled_until`) once they pass.

Run by the reconciler's leader (a leader task, `atlas.mirror.reconciler.Reconciler(tasks=...)`)
every `interval_s`: one query of the sparse expiry index for the due ones, then one conditional
write each (`Registry.expire_disable`: only at the version that set the end). So a sweep that
read a stale index, or a second leader for a moment during a handover, writes nothing, and a
manual change made after the end was set (an enable, a longer disable) is never undone. Each
enable is mirrored like any write and recorded in the audit trail as `atlas:expiry`.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from atlas.registry.records import Instance
from atlas.registry.service import Registry
from atlas.registry.serving import EXPIRY_PRINCIPAL

log = logging.getLogger(__name__)

__all__ = ["EXPIRY_PRINCIPAL", "AuditSink", "ExpirySweep"]


class AuditSink(Protocol):
    """Where the sweep records what it did (atlas.registry.audit.AuditLog)."""

    def record(
        self,
        *,
        service: str | None,
        principal: str,
        token_id: str | None,
        action: str,
        method: str,
        path: str,
        status: int,
        target: str | None = None,
        remote_addr: str | None = None,
    ) -> object:
        """Queue one audit record; never raises."""


class ExpirySweep:
    """Enables the instances whose timed disable has passed; a leader task.

    `run_once` is thread-safe (each call reads and writes on its own; the counters are locked)
    but is meant to be called from one thread, the reconciler's task thread.
    """

    name = "expiry"
    action = "expire disabled_until"

    def __init__(
        self,
        registry: Registry,
        audit: AuditSink | None = None,
        interval_s: float = 1.0,
        batch: int = 100,
    ) -> None:
        self.registry = registry
        self.audit = audit
        self.interval_s = interval_s
        self.batch = batch
        self._lock = threading.Lock()
        self.counters = {"runs": 0, "enabled": 0, "skipped": 0}

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def run_once(self) -> list[Instance]:
        """End every due timed disable (up to `batch`); the instances this run enabled.

        A due entry that changed since the index saw it is skipped (counted): the later write
        decides. DynamoDB errors propagate (the caller counts them and tries again).
        """
        self._count("runs")
        enabled: list[Instance] = []
        for due in self.registry.due_expiries(limit=self.batch):
            record = self.registry.expire_disable(due)
            if record is None:
                self._count("skipped")
                continue
            self._count("enabled")
            enabled.append(record)
            log.info(
                "timed disable of %s %s ended (was until %s)",
                due.service,
                due.instance_id,
                due.disabled_until,
            )
            if self.audit is not None:
                self.audit.record(
                    service=due.service,
                    principal=EXPIRY_PRINCIPAL,
                    token_id=None,
                    action=self.action,
                    method="PATCH",
                    path=f"/v1/services/{due.service}/instances/{due.instance_id}",
                    status=200,
                    target=due.instance_id,
                )
        return enabled
