"""The fleet's view: every live sidecar's report node, and which of them have applied a service's
latest change (`GET /v1/sidecars`, `GET /v1/services/{name}/convergence`). No Flask.

Reading. `ZkFleet` reads ZooKeeper on demand with the mirror's kazoo client: one
`get_children` of `sidecars/` and one `get` per report node asked for, and for a service a
`sync`, its node, its children and one `exists` per instance node, all pipelined, in windows of
`WINDOW`, bounded by `timeout` in all, and never with a watch (nothing is left registered).
The in-memory view (`atlas.view`) holds each service's index but neither the nodes' times
(needed to say how long a sidecar lags) nor `sidecars/`, which it does not watch; a read here
costs 2 + instances round trips for the service, cheap beside the one per sidecar.

Order. A service's state is read (after a `sync`, so it includes every write acknowledged
anywhere before the request) before the reports. A report only moves forward, so a report read
later can only show more applied: nothing here can call a sidecar converged on a change it has
not applied, and a change made during the request makes a sidecar look lagging at worst.

What "converged" means, and how long a lag is: see `convergence()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from atlas.contract import Layout, SidecarReport, change_index, parse_sidecar_report
from atlas.errors import AtlasError

READ_TIMEOUT_S = 5.0  # one request's ZooKeeper reads, in all
WINDOW = 256  # reads in flight at once


class ZooKeeperNotConfigured(AtlasError):
    """This Atlas has no ZooKeeper (`ATLAS_ZK_HOSTS` unset): sidecars report only there."""

    status = 503
    slug = "zookeeper-not-configured"
    title = "ZooKeeper is not configured"
    headers = {"Retry-After": "60"}


class ZooKeeperUnavailable(AtlasError):
    """ZooKeeper did not answer (no session now, or the reads timed out)."""

    status = 503
    slug = "zookeeper-unavailable"
    title = "ZooKeeper is unavailable"
    headers = {"Retry-After": "2"}


# ------------------------------------------------------------------------------ what is read


@dataclass(frozen=True)
class NodeInfo:
    """A report node's own ZooKeeper stat: who holds it, since when, last written when."""

    created_ms: int  # ctime: when the sidecar's current session created it
    modified_ms: int  # mtime: the report's last write
    version: int  # writes since it was created
    session: int  # ephemeralOwner: the sidecar's session id
    mzxid: int


@dataclass(frozen=True)
class SidecarNode:
    """One live sidecar: its report (None when the node's data is not a report) and its node."""

    host_id: str
    report: SidecarReport | None
    node: NodeInfo
    problem: str | None = None  # why the data is not a report


@dataclass(frozen=True)
class ServiceState:
    """A service's nodes as ZooKeeper has them: the latest change and each node's last one."""

    name: str
    index: int  # change_index over the service node and its instance nodes
    changes: tuple[tuple[int, int], ...]  # (mzxid, mtime ms) of each node, ascending
    instances: int

    def first_change_after(self, applied: int) -> tuple[int, int] | None:
        """(mzxid, mtime ms) of the earliest node change above `applied`, or None."""
        return next((c for c in self.changes if c[0] > applied), None)


class Fleet(Protocol):
    """Reads the sidecars' report nodes and a service's change index (injected into the app)."""

    def check(self) -> None:
        """Raise the 503 the reads would raise now, without reading (no I/O)."""

    def host_ids(self) -> list[str]:
        """Every live sidecar's host id, sorted."""

    def sidecars(self, host_ids: Sequence[str] | None = None) -> list[SidecarNode]:
        """The report nodes of these sidecars (all when None), sorted; gone ones omitted."""

    def service_state(self, name: str) -> ServiceState | None:
        """The service's nodes in ZooKeeper, or None when it has no node there."""


class NullFleet:
    """The fleet of an Atlas without ZooKeeper: every read is a 503 naming the cause."""

    def _refuse(self) -> Any:
        raise ZooKeeperNotConfigured(
            "this Atlas process has no ZooKeeper (ATLAS_ZK_HOSTS is not set): sidecars "
            "publish what they applied only there"
        )

    def check(self) -> None:
        """Refused: no ZooKeeper."""
        self._refuse()

    def host_ids(self) -> list[str]:
        """Refused: no ZooKeeper."""
        return self._refuse()

    def sidecars(self, host_ids: Sequence[str] | None = None) -> list[SidecarNode]:
        """Refused: no ZooKeeper."""
        return self._refuse()

    def service_state(self, name: str) -> ServiceState | None:
        """Refused: no ZooKeeper."""
        return self._refuse()


class ZkFleet:
    """Reads with a kazoo client (the mirror's: `client()` is asked on every read, since the
    mirror replaces it). Thread-safe: kazoo clients are, and this keeps no state."""

    def __init__(
        self,
        client: Callable[[], KazooClient | None],
        realm: str,
        timeout: float = READ_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.layout = Layout(realm)
        self.timeout = timeout
        self.clock = clock

    def _connected(self) -> KazooClient:
        client = self._client()
        if client is None or client.state != KazooState.CONNECTED:
            raise ZooKeeperUnavailable(
                "this Atlas process has no ZooKeeper session right now (reconnecting); "
                "retry shortly"
            )
        return client

    def _wait(self, result: Any, deadline: float) -> Any:
        remaining = deadline - self.clock()
        try:
            if remaining <= 0:
                raise KazooTimeoutError()
            return result.get(timeout=remaining)
        except KazooTimeoutError:
            raise ZooKeeperUnavailable(
                f"ZooKeeper did not answer within {self.timeout:g} s; retry shortly"
            ) from None
        except NoNodeError:
            return None
        except KazooException as exc:
            raise ZooKeeperUnavailable(
                f"ZooKeeper failed the read ({type(exc).__name__}); retry shortly"
            ) from None

    def _windowed(
        self, paths: Sequence[str], issue: Callable[[str], Any], deadline: float
    ) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(paths), WINDOW):
            pending = [issue(p) for p in paths[start : start + WINDOW]]
            out.extend(self._wait(r, deadline) for r in pending)
        return out

    def check(self) -> None:
        """503 unless the client has a session now."""
        self._connected()

    def host_ids(self) -> list[str]:
        """Every live sidecar's host id, sorted (one `get_children`, no watch)."""
        client = self._connected()
        deadline = self.clock() + self.timeout
        children = self._wait(client.get_children_async(self.layout.sidecars), deadline)
        return sorted(children or ())

    def sidecars(self, host_ids: Sequence[str] | None = None) -> list[SidecarNode]:
        """The report nodes of these sidecars (all when None), sorted by host id; a node gone
        between the listing and its read is omitted (its sidecar is not live any more)."""
        client = self._connected()
        deadline = self.clock() + self.timeout
        if host_ids is None:
            children = self._wait(client.get_children_async(self.layout.sidecars), deadline)
            host_ids = sorted(children or ())
        ids = sorted(host_ids)
        paths = [self.layout.sidecar(h) for h in ids]
        results = self._windowed(paths, client.get_async, deadline)
        out: list[SidecarNode] = []
        for host_id, got in zip(ids, results, strict=True):
            if got is None:
                continue
            data, stat = got
            out.append(read_node(host_id, data, stat))
        return out

    def service_state(self, name: str) -> ServiceState | None:
        """The service node and its instance nodes' stats, read after a `sync` (so every write
        acknowledged before the call is in them); None when the service has no node."""
        client = self._connected()
        deadline = self.clock() + self.timeout
        path = self.layout.service(name)
        # A session's requests are answered in order: the reads below follow the sync.
        synced = client.sync_async(path)
        listing = client.get_children_async(path, include_data=True)
        self._wait(synced, deadline)
        got = self._wait(listing, deadline)
        if got is None:
            return None
        children, parent = got
        paths = [f"{path}/{c}" for c in sorted(children)]
        stats = [s for s in self._windowed(paths, client.exists_async, deadline) if s is not None]
        return service_state(name, parent, stats)


def read_node(host_id: str, data: bytes | None, stat: Any) -> SidecarNode:
    """A report node as read: its parsed report (or why it is none) and its stat."""
    info = NodeInfo(
        created_ms=int(stat.ctime),
        modified_ms=int(stat.mtime),
        version=int(stat.version),
        session=int(stat.ephemeralOwner),
        mzxid=int(stat.mzxid),
    )
    report = parse_sidecar_report(data, host_id)
    problem = None
    if report is None:
        problem = (
            "the node's data is not a sidecar report (JSON with an integer applied_index): "
            f"{len(data or b'')} bytes"
        )
    return SidecarNode(host_id=host_id, report=report, node=info, problem=problem)


def service_state(name: str, node_stat: Any, instance_stats: Iterable[Any]) -> ServiceState:
    """A ServiceState from the service node's stat (read with its children: its pzxid says
    when one was last added or removed) and its instance nodes' stats."""
    stats = [node_stat, *instance_stats]
    changes = tuple(sorted((int(s.mzxid), int(s.mtime)) for s in stats))
    return ServiceState(
        name=name, index=change_index(stats), changes=changes, instances=len(stats) - 1
    )


# ------------------------------------------------------------------------------- rendering


def iso_ms(ms: int | float | None) -> str | None:
    """RFC 3339 UTC with milliseconds of a time in ms since the epoch."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _age_s(now_ms: float, then_ms: int | float) -> float:
    # ZooKeeper's times are its leader's clock; a small skew with ours is not a negative age.
    return round(max(0.0, now_ms - then_ms) / 1000.0, 3)


def sidecar_item(sc: SidecarNode, now_ms: float) -> dict[str, Any]:
    """One entry of GET /v1/sidecars: the report's fields and the node's ZooKeeper facts."""
    node = {
        "session_id": f"0x{sc.node.session:x}",
        "created_at": iso_ms(sc.node.created_ms),
        "session_age_s": _age_s(now_ms, sc.node.created_ms),
        "modified_at": iso_ms(sc.node.modified_ms),
        "report_age_s": _age_s(now_ms, sc.node.modified_ms),
        "writes": sc.node.version,
        "mzxid": sc.node.mzxid,
    }
    if sc.report is None:
        return {"host_id": sc.host_id, "valid": False, "problem": sc.problem, "zookeeper": node}
    body = sc.report.to_dict()
    body["host_id"] = sc.host_id
    return {"valid": True, **body, "zookeeper": node}


def convergence(
    name: str,
    state: ServiceState | None,
    sidecars: Sequence[SidecarNode],
    now_ms: float,
    mirror_pending: bool = False,
) -> dict[str, Any]:
    """The body of GET /v1/services/{name}/convergence (the service exists in DynamoDB).

    A sidecar is *converged* for the service when its report says it has applied the service's
    latest change: `report.has_applied(name, index)`, `index` being `change_index` over the
    service node and its instance nodes (their largest mzxid/pzxid). Otherwise it *lags*;
    a node whose data is no report is *unreadable* (counted, never converged).

    How long it lags: since the earliest change it has not applied, i.e. the mtime of the
    service's node with the smallest mzxid above its applied index (ZooKeeper's commit time of
    that change: the moment the sidecar could first have seen it). That node may have changed
    again since, so this is a lower bound, never an overstatement. The report's own
    `lagging[name].since` is not used for the duration: a sidecar that is stuck (stopped,
    blocked, cut off) writes no report at all, and its `since` is when it began holding the
    service back for its own reasons, on its own clock; it is shown as `reported`.

    `converged` is true only when there is at least one sidecar and all are converged, and the
    service's latest state is in ZooKeeper (`mirrored`, no write of it pending in this
    process's mirror): `state` says which case holds (`converged`, `lagging`, `no-sidecars`,
    `not-mirrored`, `mirror-pending`).
    """
    index = state.index if state is not None else None
    items: list[dict[str, Any]] = []
    counts = {"total": 0, "converged": 0, "lagging": 0, "unreadable": 0}
    for sc in sidecars:
        counts["total"] += 1
        report = sc.report
        if report is None:
            counts["unreadable"] += 1
            items.append(
                {
                    "host_id": sc.host_id,
                    "status": "unreadable",
                    "applied_index": None,
                    "behind_since": None,
                    "behind_s": None,
                    "reported": None,
                    "problem": sc.problem,
                }
            )
            continue
        applied = report.applied_index_of(name)
        done = index is not None and report.has_applied(name, index)
        lag = report.lagging.get(name)
        since_ms: int | None = None
        if not done and state is not None:
            first = state.first_change_after(applied)
            since_ms = first[1] if first is not None else None
        counts["converged" if done else "lagging"] += 1
        items.append(
            {
                "host_id": sc.host_id,
                "status": "converged" if done else "lagging",
                "applied_index": applied,
                "behind_since": iso_ms(since_ms),
                "behind_s": _age_s(now_ms, since_ms) if since_ms is not None else None,
                "reported": {"reason": lag.reason, "since": lag.since} if lag else None,
                "stale": report.stale,
                "report_updated_at": report.updated_at,
            }
        )
    if state is None:
        status = "not-mirrored"
    elif mirror_pending:
        status = "mirror-pending"
    elif counts["total"] == 0:
        status = "no-sidecars"
    elif counts["converged"] == counts["total"]:
        status = "converged"
    else:
        status = "lagging"
    changed_ms = None
    if state is not None:
        changed_ms = next((m for z, m in reversed(state.changes) if z == state.index), None)
    return {
        "service": name,
        "index": index,
        "changed_at": iso_ms(changed_ms),
        "instances": state.instances if state is not None else None,
        "mirrored": state is not None,
        "mirror_pending": mirror_pending,
        "converged": status == "converged",
        "state": status,
        "summary": counts,
        "sidecars": items,
        "checked_at": iso_ms(now_ms),
    }


def page(ids: Sequence[str], limit: int, after: str | None) -> tuple[list[str], str | None]:
    """One page of sorted host ids after `after`, and the last id when more follow."""
    rest = [h for h in ids if after is None or h > after]
    chosen = rest[:limit]
    return chosen, chosen[-1] if len(rest) > limit and chosen else None
