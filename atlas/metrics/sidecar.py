"""The sidecar's Prometheus exposition, rendered from its status dict (`Sidecar.status_dict()`).

The sidecar is one process whose loop publishes an immutable status copy after every step, so
a collector that reads that copy at scrape time is exact (no multiprocess mode needed). Wire
it into the sidecar's status server as::

    from atlas.metrics.sidecar import CONTENT_TYPE, render
    body, ctype = render(status(), failure_kinds=FAILURE_KINDS), CONTENT_TYPE

Keys missing from the dict (an older or newer sidecar) are exported as 0, never an error.
No label comes from a service name or an error message: failure kinds are the loop's own
fixed names (anything else is `other`), and lagging services are counted, not named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# (status key, metric name without atlas_sidecar_ and _total, help)
_COUNTERS = (
    ("reloads", "reloads", "HAProxy reloads done."),
    ("runtime_updates", "runtime_updates", "Changes applied through HAProxy's runtime API."),
    ("passes", "passes", "Batches of changes taken from ZooKeeper."),
    ("haproxy_restarts", "haproxy_restarts", "HAProxy restarts after it exited."),
    ("check_failures", "check_failures", "Configs `haproxy -c` refused."),
)
_FLAGS = (
    ("stale", "stale", "1 while HAProxy does not run the latest view."),
    ("in_sync", "in_sync", "1 when HAProxy runs the whole latest view."),
    ("zk_connected", "zk_connected", "1 while the ZooKeeper session is connected."),
    ("reload_required", "reload_required", "1 while a reload waits."),
)
_GAUGES = (
    ("services", "services", "Services HAProxy routes."),
    ("instances", "instances", "Servers HAProxy has."),
    ("applied_index", "applied_index", "ZooKeeper index (zxid) applied up to."),
)


def _num(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value) if isinstance(value, int | float) else 0.0


def _kind(name: Any) -> str:
    return name if isinstance(name, str) and _KIND.match(name) else "other"


class SidecarCollector(Collector):
    """Metrics of one status dict (build one per scrape)."""

    def __init__(self, status: Mapping[str, Any], failure_kinds: Iterable[str] = ()) -> None:
        self.status = status
        self.failure_kinds = tuple(failure_kinds)

    def collect(self) -> Iterator[Metric]:
        """The metric families of the status."""
        st = self.status
        for key, name, doc in _COUNTERS:
            yield CounterMetricFamily(f"atlas_sidecar_{name}", doc, value=_num(st.get(key)))
        failures: dict[str, float] = {k: 0.0 for k in self.failure_kinds}
        raw_failures = st.get("failures")
        for k, v in raw_failures.items() if isinstance(raw_failures, Mapping) else ():
            failures[_kind(k)] = failures.get(_kind(k), 0.0) + _num(v)
        fam = CounterMetricFamily(
            "atlas_sidecar_failures",
            "Faults of the control loop, by kind (each one retried).",
            labels=["kind"],
        )
        for k, v in sorted(failures.items()):
            fam.add_metric([k], v)
        yield fam
        raw_failing = st.get("failing")
        failing = {_kind(k) for k in raw_failing} if isinstance(raw_failing, Mapping) else set()
        gauge = GaugeMetricFamily(
            "atlas_sidecar_failing", "1 while a kind of fault is happening.", labels=["kind"]
        )
        for k in sorted(set(failures) | failing):
            gauge.add_metric([k], 1.0 if k in failing else 0.0)
        yield gauge
        for key, name, doc in _FLAGS:
            yield GaugeMetricFamily(f"atlas_sidecar_{name}", doc, value=float(bool(st.get(key))))
        for key, name, doc in _GAUGES:
            yield GaugeMetricFamily(f"atlas_sidecar_{name}", doc, value=_num(st.get(key)))
        lagging = st.get("lagging")
        yield GaugeMetricFamily(
            "atlas_sidecar_lagging_services",
            "Services whose backends HAProxy does not run in full yet (stale backends).",
            value=float(len(lagging)) if isinstance(lagging, Mapping | list) else 0.0,
        )
        raw_pool = st.get("pool")
        pool: Mapping[str, Any] = raw_pool if isinstance(raw_pool, Mapping) else {}
        spares = GaugeMetricFamily(
            "atlas_sidecar_spare_backends",
            "Spare backends kept for new services, by state.",
            labels=["state"],
        )
        for state in ("free", "used"):
            spares.add_metric([state], _num(pool.get(state)))
        yield spares
        yield CounterMetricFamily(
            "atlas_sidecar_spare_refills",
            "Reloads that refilled the spare backend pool.",
            value=_num(pool.get("refills")),
        )
        last = st.get("last_apply")
        if isinstance(last, int | float) and not isinstance(last, bool) and last > 1e9:
            yield GaugeMetricFamily(
                "atlas_sidecar_last_apply_timestamp_seconds",
                "Unix time of the last change HAProxy took (reload or runtime).",
                value=float(last),
            )


def render(status: Mapping[str, Any], failure_kinds: Iterable[str] = ()) -> bytes:
    """The exposition text of one status dict; `failure_kinds` are exported even at 0."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SidecarCollector(status, failure_kinds))
    return generate_latest(registry)
