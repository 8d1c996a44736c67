"""Every Prometheus metric of the Atlas API server, and the implementations of the registry's
(`atlas.registry.metrics`) and the mirror's (`atlas.mirror.metrics`) metrics interfaces.

Two modes, chosen by prometheus_client when it is first imported:

- multiprocess (gunicorn: `PROMETHEUS_MULTIPROC_DIR` set by `atlas.gunicorn_conf` before the
  workers import anything): each process writes its values to its own files and a scrape of
  any worker reads every process's files. Counters and histograms are summed over the
  workers (a dead worker's counts stay). Gauges say per metric how they combine
  (`multiprocess_mode`): per-process state carries a `pid` label (`liveall`), "the worst
  worker" is `livemax`, a sum over workers `livesum`; `live*` files of a dead worker are
  removed by gunicorn's `child_exit` hook. Worker A never reads worker B's mirror: B's owner
  thread writes B's mirror state to B's file every round (at least every 0.25 s), and A's
  scrape reads that file.
- in-process (unit tests, `flask run`): values in memory, in a registry of the app's own, so
  two apps in one process never share a series.

Label values are bounded: methods outside the standard ones are `other`, routes are Flask's
rule templates (one `unmatched` for the rest), store actions and ZooKeeper ops are fixed names
from the code, errors are classified into a fixed set or the library's exception class.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _pc_values
from prometheus_client.multiprocess import MultiProcessCollector

from atlas import __version__
from atlas.metrics.multiproc import ENV
from atlas.mirror.zk import CONFLICTS, ZK_ERRORS

log = logging.getLogger(__name__)

#: The exposition's content type (the classic text format, which every Prometheus reads).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DYNAMODB_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ZK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RECONCILE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: `ZkMirror` counters exported as `atlas_mirror_<name>_total` (the reconcile ones are
#: exported by `reconciled`, with their duration and drift by kind).
MIRROR_COUNTERS = {
    "syncs": "Mirror changes published (whole-service syncs and group-committed changes).",
    "sync_failures": "Mirror writes deferred to the repair thread (the service marked dirty).",
    "resync_failures": "Re-syncs of a dirty service by the repair thread that failed again.",
    "cas_retries": "Mirror multis that lost a compare-and-set race and were retried.",
    "stale_retries": "Instance changes re-read from DynamoDB: a newer commit overtook them.",
    "group_commits": "Group commits (one multi for every queued change of one service).",
    "grouped_changes": "Instance changes published by group commits.",
    "client_recreated": "ZooKeeper clients replaced (a session unusable for too long).",
    "client_refused": "ZooKeeper clients replaced because the server refused them (wiped).",
}
DRIFT_KINDS = ("missing", "stale", "extra")
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_.' -]{0,63}$")


def multiprocess_enabled() -> bool:
    """True when prometheus_client writes to `PROMETHEUS_MULTIPROC_DIR` in this process.

    A directory set after prometheus_client was imported does not count (its values live in
    memory then): the scrape falls back to this process's own registry, with a warning.
    """
    path = os.environ.get(ENV)
    if not path or not os.path.isdir(path):
        return False
    if _pc_values.ValueClass is _pc_values.MutexValue:
        log.warning("%s is set but prometheus_client was imported before it: one process only", ENV)
        return False
    return True


def bounded(name: str) -> str:
    """A code-given name as a label value, or `other` if it does not look like one."""
    return name if _SAFE_NAME.match(name) else "other"


class AtlasMetrics:
    """The metrics of one app: built on a registry of its own, rendered by `render()`.

    Thread-safe (prometheus_client's values are locked). Build it once per app, in the process
    that imports the app (gunicorn's master with --preload: values created there are re-made
    in each worker after the fork by prometheus_client itself).
    """

    def __init__(self, realm: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.multiprocess = multiprocess_enabled()
        r = self.registry
        self.info = Gauge(
            "atlas_build_info", "Always 1: the version and realm of this Atlas.",
            ["version", "realm"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.info.labels(__version__, realm).set(1)
        # HTTP
        self.http_requests = Counter(
            "atlas_http_requests", "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_duration = Histogram(
            "atlas_http_request_duration_seconds",
            "Time to answer an HTTP request (until the response is handed to the server).",
            ["method", "route"], buckets=HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_in_flight = Gauge(
            "atlas_http_requests_in_flight", "HTTP requests being answered (all workers).",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        # DynamoDB
        self.dynamodb_duration = Histogram(
            "atlas_dynamodb_request_duration_seconds",
            "Time of one store action's DynamoDB call(s), by action; failures included.",
            ["action"], buckets=DYNAMODB_BUCKETS, registry=r,
        )  # fmt: skip
        self.dynamodb_errors = Counter(
            "atlas_dynamodb_errors",
            "Store actions DynamoDB did not complete, by action and kind (condition_failed and "
            "transaction_canceled are lost races and refused conditions; the rest failures).",
            ["action", "error"], registry=r,
        )  # fmt: skip
        self.scan_pages = Counter(
            "atlas_dynamodb_scan_pages", "Pages of full-table scans read.", registry=r
        )
        self.scan_page_retries = Counter(
            "atlas_dynamodb_scan_page_retries",
            "Scan pages that failed and were read again from where they stopped.",
            registry=r,
        )
        # Audit
        self.audit_queued = Counter(
            "atlas_audit_records_queued", "Audit records queued for writing.", registry=r
        )
        self.audit_written = Counter(
            "atlas_audit_records_written", "Audit records written to DynamoDB.", registry=r
        )
        self.audit_dropped = Counter(
            "atlas_audit_records_dropped",
            "Audit records dropped because the queue was full.",
            registry=r,
        )
        self.audit_lost = Counter(
            "atlas_audit_records_lost",
            "Audit records given up on after their write failed.",
            registry=r,
        )
        self.audit_depth = Gauge(
            "atlas_audit_queue_depth", "Audit records queued and not yet written (all workers).",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        # Mirror and ZooKeeper
        self.mirror_counters = {
            name: Counter(f"atlas_mirror_{name}", doc, registry=r)
            for name, doc in MIRROR_COUNTERS.items()
        }
        self.mirror_dirty = Gauge(
            "atlas_mirror_dirty_services",
            "Services whose mirror is behind DynamoDB, waiting for a re-sync (worst worker).",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.mirror_lag = Gauge(
            "atlas_mirror_lag_seconds",
            "How long the mirror has been behind DynamoDB: since its oldest unrepaired write "
            "or since its session was lost; 0 when caught up (worst worker).",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        # Per-process state, made on first use: made in gunicorn's master (--preload) they
        # would show the master as a disconnected non-leader.
        self._mirror_connected: Gauge | None = None
        self._leader: Gauge | None = None
        self.zk_duration = Histogram(
            "atlas_zk_request_duration_seconds",
            "Time of the mirror's ZooKeeper round trips, by operation (pipelined reads and "
            "multis count once).",
            ["op"], buckets=ZK_BUCKETS, registry=r,
        )  # fmt: skip
        self.zk_errors = Counter(
            "atlas_zk_errors",
            "The mirror's ZooKeeper calls that failed (no answer, lost session, server "
            "error), by operation and exception class.",
            ["op", "error"], registry=r,
        )  # fmt: skip
        # Reconcile
        self.reconcile_runs = Counter(
            "atlas_reconcile_runs",
            "Reconcile runs by outcome (ok, error: ZooKeeper or DynamoDB failed, crash).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.reconcile_duration = Histogram(
            "atlas_reconcile_duration_seconds", "Time of a successful reconcile run.",
            buckets=RECONCILE_BUCKETS, registry=r,
        )  # fmt: skip
        self.drift_found = Counter(
            "atlas_reconcile_drift_found",
            "Differences between DynamoDB and ZooKeeper found by reconciles, by kind.",
            ["kind"], registry=r,
        )  # fmt: skip
        self.drift_fixed = Counter(
            "atlas_reconcile_drift_fixed", "ZooKeeper writes reconciles made.", registry=r
        )
        self.reconcile_last = Gauge(
            "atlas_reconcile_last_success_timestamp_seconds",
            "Unix time of the last successful reconcile run of this server.",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.swallowed = Counter(
            "atlas_swallowed_errors",
            "Errors caught and logged so that a background thread lives on, by place.",
            ["where"], registry=r,
        )  # fmt: skip
        self.reads = Counter(
            "atlas_reads",
            "Reads by where they were served and blocking queries by outcome: view_hits, "
            "store_fallbacks.<reason>, blocking.started|woken|timed_out, waiters_rejected.",
            ["outcome"], registry=r,
        )  # fmt: skip
        for kind in DRIFT_KINDS:
            self.drift_found.labels(kind)
        for outcome in ("ok", "error", "crash"):
            self.reconcile_runs.labels(outcome)
        self.store = PrometheusStoreMetrics(self)
        self.audit = PrometheusAuditMetrics(self)
        self.mirror = PrometheusMirrorMetrics(self)

    def mirror_state_gauges(self) -> tuple[Gauge, Gauge]:
        """The per-process gauges (connected, leader), made on first use."""
        if self._mirror_connected is None or self._leader is None:
            self._mirror_connected = Gauge(
                "atlas_mirror_connected", "1 while this process's ZooKeeper session is usable.",
                registry=self.registry, multiprocess_mode="liveall",
            )  # fmt: skip
            self._leader = Gauge(
                "atlas_reconcile_leader", "1 while this process leads reconciliation.",
                registry=self.registry, multiprocess_mode="liveall",
            )  # fmt: skip
        return self._mirror_connected, self._leader

    def swallowed_error(self, where: str) -> None:
        """Count an error caught and logged so that a request or thread goes on (thread-safe)."""
        self.swallowed.labels(bounded(where)).inc()

    def read(self, outcome: str, n: int = 1) -> None:
        """Count a read by where it was served, or a blocking query's outcome (thread-safe)."""
        self.reads.labels(bounded(outcome)).inc(n)

    def render(self) -> bytes:
        """The exposition text: every worker's values in multiprocess mode, else this app's."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class PrometheusStoreMetrics:
    """`StoreMetrics` over `AtlasMetrics` (thread-safe)."""

    def __init__(self, m: AtlasMetrics) -> None:
        self._m = m

    def dynamodb_call(self, action: str, seconds: float, error: str | None) -> None:
        """Observe one store action's latency; count it as an error of its kind."""
        label = bounded(action)
        self._m.dynamodb_duration.labels(label).observe(seconds)
        if error is not None:
            self._m.dynamodb_errors.labels(label, bounded(error)).inc()

    def scan_page(self, retries: int) -> None:
        """Count a scan page and the attempts it took."""
        self._m.scan_pages.inc()
        if retries:
            self._m.scan_page_retries.inc(retries)

    def swallowed(self, where: str) -> None:
        """Count an error caught after a stored write (its mirror call)."""
        self._m.swallowed.labels(bounded(where)).inc()


class PrometheusAuditMetrics:
    """`AuditMetrics` over `AtlasMetrics` (thread-safe)."""

    def __init__(self, m: AtlasMetrics) -> None:
        self._m = m

    def queued(self) -> None:
        """Count a queued record."""
        self._m.audit_queued.inc()
        self._m.audit_depth.inc()

    def dropped(self) -> None:
        """Count a dropped record."""
        self._m.audit_dropped.inc()

    def written(self, n: int) -> None:
        """Count written records."""
        self._m.audit_written.inc(n)
        self._m.audit_depth.dec(n)

    def lost(self, n: int) -> None:
        """Count records given up on."""
        self._m.audit_lost.inc(n)
        self._m.audit_depth.dec(n)


class PrometheusMirrorMetrics:
    """`MirrorMetrics` over `AtlasMetrics` (thread-safe)."""

    def __init__(self, m: AtlasMetrics) -> None:
        self._m = m

    def zk_call(self, op: str) -> AbstractContextManager[None]:
        """Time the block; count a ZooKeeper failure escaping it (not a CAS answer)."""
        return self._timed(bounded(op))

    @contextmanager
    def _timed(self, op: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:
            # CONFLICTS are ZooKeeper's answers to a compare-and-set, not failed calls.
            if isinstance(exc, ZK_ERRORS) and not isinstance(exc, CONFLICTS):
                self._m.zk_errors.labels(op, type(exc).__name__).inc()
            raise
        finally:
            self._m.zk_duration.labels(op).observe(time.perf_counter() - t0)

    def counted(self, deltas: Mapping[str, int]) -> None:
        """Add the mirror's counter increments."""
        for name, n in deltas.items():
            counter = self._m.mirror_counters.get(name)
            if counter is not None and n > 0:
                counter.inc(n)

    def state(self, *, connected: bool, dirty: int, lag_s: float, leader: bool) -> None:
        """Write this process's mirror state."""
        connected_g, leader_g = self._m.mirror_state_gauges()
        connected_g.set(1 if connected else 0)
        leader_g.set(1 if leader else 0)
        self._m.mirror_dirty.set(dirty)
        self._m.mirror_lag.set(round(lag_s, 3))

    def reconciled(self, seconds: float, drift: Mapping[str, int], fixed: int) -> None:
        """Count a successful reconcile run, its drift and its fixes."""
        self._m.reconcile_runs.labels("ok").inc()
        self._m.reconcile_duration.observe(seconds)
        for kind, n in drift.items():
            if n and kind in DRIFT_KINDS:
                self._m.drift_found.labels(kind).inc(n)
        if fixed:
            self._m.drift_fixed.inc(fixed)
        self._m.reconcile_last.set(time.time())

    def reconcile_failed(self, kind: str) -> None:
        """Count a failed reconcile run."""
        self._m.reconcile_runs.labels(bounded(kind)).inc()

    def swallowed(self, where: str) -> None:
        """Count an error a background thread caught."""
        self._m.swallowed.labels(bounded(where)).inc()
