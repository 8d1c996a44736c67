"""The audit trail: records are queued by the request and written in batches by a background
thread, so recording costs the request nothing and a failing audit write never fails it.

Each record of a mutation says what changed: a list of `{"field", "before", "after"}` (and
`"instance"` on a host-wide action), built by `diff` from the resource before and after.
Callers choose the fields: never a secret's value (config records key, version, secret flag).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from atlas.registry.metrics import AuditMetrics, NullAuditMetrics
from atlas.registry.models import AuditModel
from atlas.registry.records import AuditRecord, Page
from atlas.registry.service import Registry
from atlas.registry.store import CursorKey

log = logging.getLogger(__name__)

NO_SERVICE = "-"
BATCH = 25
AUDIT_CURSOR = CursorKey(("service", "sk"))
# An AuditRecord's fields stored as they are (`service` and the sort key are derived).
STORED_FIELDS = (
    "id", "at", "principal", "token_id", "action", "method", "path", "target", "status",
    "remote_addr",
)  # fmt: skip
#: Bounds of what a record keeps of a change (DynamoDB items hold 400 KB; a batch 16 MB).
MAX_CHANGES = 64
MAX_VALUE_CHARS = 1024
TRUNCATED = "…"

Change = dict[str, Any]
EMPTY: tuple[Any, ...] = (None, "", [], {})


def _bounded(value: Any) -> Any:
    """A JSON value, or its JSON text cut to MAX_VALUE_CHARS when it is longer."""
    text = json.dumps(value, sort_keys=True, default=str)
    if len(text) <= MAX_VALUE_CHARS:
        return value
    return text[: MAX_VALUE_CHARS - 1] + TRUNCATED


def diff(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    fields: Sequence[str] | None = None,
    skip: Iterable[str] = (),
    **extra: Any,
) -> list[Change]:
    """The fields that differ between two representations of one resource (None: it did not
    exist, or no longer does), in `fields` order (default: every field of either, in the
    order the representations list them),
    `skip` left out; each `{"field", "before", "after", **extra}`."""
    old, new = before or {}, after or {}
    names = list(fields) if fields is not None else [*new, *(k for k in old if k not in new)]
    skipped = set(skip)
    out = []
    for name in names:
        if name in skipped or (name not in old and name not in new):
            continue
        a, b = old.get(name), new.get(name)
        if before is not None and after is not None and a == b:
            continue
        if (before is None and b in EMPTY) or (after is None and a in EMPTY):
            continue  # created or deleted: only the fields that held something
        out.append({"field": name, "before": _bounded(a), "after": _bounded(b), **extra})
    return out


def bounded_changes(changes: Sequence[Change]) -> list[Change]:
    """At most MAX_CHANGES changes; past that, one `{"field": "…", "omitted": n}`."""
    if len(changes) <= MAX_CHANGES:
        return list(changes)
    kept = list(changes[: MAX_CHANGES - 1])
    return [*kept, {"field": TRUNCATED, "omitted": len(changes) - len(kept)}]


class AuditLog:
    """Queues audit records and writes them to `<prefix>audit`; lists them for admins."""

    def __init__(
        self,
        registry: Registry,
        queue_size: int = 10_000,
        linger_s: float = 0.1,
        metrics: AuditMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.linger_s = linger_s
        self.metrics: AuditMetrics = metrics or NullAuditMetrics()
        self.models = registry.models
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._count_lock = threading.Lock()  # the counts below change on request threads
        self.dropped = 0
        self.failed = 0
        # Records written without their changes (each is logged): the resource could not be
        # read before the write, or the change could not be worked out.
        self.unread_before = 0
        self.unrecorded_changes = 0

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the plain counts (`dropped`, `failed`, `unread_before`,
        `unrecorded_changes`). Thread-safe."""
        with self._count_lock:
            setattr(self, name, getattr(self, name) + n)

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
        changes: Sequence[Change] | None = None,
    ) -> AuditRecord:
        """Queue one record (never raises; a full queue drops it with an error log).

        `changes` must hold no secret values (see `diff`)."""
        rec = AuditRecord(
            id=uuid.uuid4().hex,
            at=self.registry.now(),
            service=service,
            principal=principal,
            token_id=token_id,
            action=action,
            method=method,
            path=path[:1024],
            target=target[:1024] if target else None,
            status=status,
            remote_addr=remote_addr,
            changes=tuple(bounded_changes(changes)) if changes is not None else None,
        )
        self._ensure_thread()
        try:
            self._queue.put_nowait(rec)
            self.metrics.queued()
        except queue.Full:
            self.count("dropped")
            self.metrics.dropped()
            log.error("audit queue full; dropped %s %s (%s)", method, path[:200], rec.id)
        return rec

    def _ensure_thread(self) -> None:
        # Started lazily: a thread started before gunicorn forks would not exist in the worker.
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="atlas-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            batch = [first]
            # Linger briefly so that a burst of requests costs one BatchWriteItem, not many.
            deadline = time.monotonic() + self.linger_s
            while len(batch) < BATCH:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # seen again after this batch
                    self._queue.task_done()
                    break
                batch.append(nxt)
            self._write(batch)
            for _ in batch:
                self._queue.task_done()

    def _write(self, batch: list[AuditRecord]) -> None:
        try:
            self._write_batch(batch)
            self.metrics.written(len(batch))
        except Exception:
            if len(batch) == 1:
                self._lost(batch)
                return
            # One bad record must not take the others down with it: write them one by one.
            for r in batch:
                try:
                    self._write_batch([r])
                    self.metrics.written(1)
                except Exception:
                    self._lost([r])

    def _write_batch(self, batch: list[AuditRecord]) -> None:
        model = self.models.Audit
        timed = self.registry.store.timed("writing the audit trail")
        with self._write_lock, timed, model.batch_write() as writer:
            for r in batch:
                fields = {name: getattr(r, name) for name in STORED_FIELDS}
                if r.changes is not None:
                    fields["changes"] = json.dumps(list(r.changes), sort_keys=True, default=str)
                writer.save(model(r.service or NO_SERVICE, f"{r.at}#{r.id}", **fields))

    def _lost(self, batch: list[AuditRecord]) -> None:
        self.count("failed", len(batch))
        self.metrics.lost(len(batch))
        # The records hold no secrets (no bodies, no values), so they may be logged.
        log.error(
            "audit write failed; lost %d record(s): %s",
            len(batch),
            "; ".join(
                f"{r.at} {r.principal}:{r.token_id} {r.method} {r.path[:200]} {r.status}"
                for r in batch
            ),
        )

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued record has been written (or given up on)."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)

    @staticmethod
    def _record(m: AuditModel) -> AuditRecord:
        fields: dict[str, Any] = {name: getattr(m, name) for name in STORED_FIELDS}
        fields["status"] = int(fields["status"])
        raw = getattr(m, "changes", None)
        try:
            changes = tuple(json.loads(raw)) if raw else None
        except ValueError:
            changes = ({"field": TRUNCATED, "unreadable": True},)
        return AuditRecord(
            service=None if m.service == NO_SERVICE else m.service, changes=changes, **fields
        )

    def list(self, service: str | None, limit: int, cursor: str | None = None) -> Page:
        """One page of records: of one service newest first, or of all in table order."""
        model = self.models.Audit
        start = AUDIT_CURSOR.decode(cursor, **({} if service is None else {"service": service}))

        def fetch(**page: Any) -> Iterable[AuditModel]:
            if service is None:
                return model.scan(consistent_read=True, **page)
            return model.query(service, scan_index_forward=False, consistent_read=True, **page)

        return self.registry.store.paginate(
            fetch,
            limit=limit,
            start=start,
            key=AUDIT_CURSOR,
            convert=self._record,
            action="listing the audit trail",
        )
