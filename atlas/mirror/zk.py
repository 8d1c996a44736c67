"""The ZooKeeper mirror: per-key CAS sync on the write path, a dirty-set pump, and a client watchdog.

Correctness does not depend on the order in which concurrent writers reach ZooKeeper: every
sync reads the znodes first (remembering their ZooKeeper versions), then reads the truth from
DynamoDB, then writes with compare-and-set on those versions in one transaction. A writer whose
view went stale loses the CAS and retries from a fresh read, so the last sync to commit always
carries a DynamoDB state read after every earlier commit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    RuntimeInconsistency,
    ZookeeperError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from atlas.contract import Layout
from atlas.errors import AtlasError
from atlas.mirror.payloads import desired_tree, dumps, instance_payload
from atlas.mirror.plan import Op, Plan, plan
from atlas.registry.records import Instance, Service

log = logging.getLogger(__name__)

MAX_CAS_RETRIES = 8
CONFLICTS = (BadVersionError, NodeExistsError, NoNodeError, NotEmptyError)
ZK_ERRORS = (KazooException, ZookeeperError, KazooTimeoutError, TimeoutError, OSError)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MirrorConflict(Exception):
    """A CAS lost a race; the caller re-reads and tries again."""


class Source(Protocol):
    """What the mirror reads from the truth (implemented by atlas.registry.Registry)."""

    def find_service(self, name: str) -> Service | None:
        """The service as stored now, or None."""

    def find_instance(self, service: str, iid: str) -> Instance | None:
        """The instance as stored now, or None."""

    def all_instances(self, service: str) -> list[Instance]:
        """Every instance of one service."""

    def scan_services(self) -> list[Service]:
        """Every service."""

    def iter_instances(self) -> Iterator[Instance]:
        """Every instance, streamed in scan order."""


def make_client(hosts: str, timeout: float) -> KazooClient:
    """A kazoo client that reconnects fast and retries commands briefly."""
    return KazooClient(
        hosts=hosts,
        timeout=timeout,
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=1.5, max_delay=1.0),
        command_retry=KazooRetry(max_tries=2, delay=0.05, backoff=2, max_delay=0.5),
    )


class ZkMirror:
    """Mirrors DynamoDB's truth into `/atlas/<realm>` and keeps it mirrored."""

    def __init__(
        self,
        hosts: str,
        realm: str,
        timeout: float = 10.0,
        client_factory: Callable[[str, float], KazooClient] = make_client,
        clock: Callable[[], float] = time.time,
        recreate_after: float | None = None,
    ) -> None:
        self.hosts = hosts
        self.layout = Layout(realm)
        self.timeout = timeout
        self.client_factory = client_factory
        self.clock = clock
        # A server restarted with a wiped data dir refuses a client that has seen a newer zxid,
        # forever; only a fresh client gets in. So a client that cannot connect is replaced.
        self.recreate_after = recreate_after if recreate_after is not None else 2 * timeout
        self.source: Source | None = None
        self.client: KazooClient = client_factory(hosts, timeout)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        # service -> generation of its latest failed mirror write; a sync clears a mark only
        # if no newer failure re-marked it meanwhile.
        self.dirty: dict[str, int] = {}
        self._dirty_gen = 0
        self._disconnected_since: float | None = clock()
        self._ensured_roots = False
        self._started = False
        self.counters: dict[str, int] = {
            "syncs": 0,
            "sync_failures": 0,
            "cas_retries": 0,
            "client_recreated": 0,
            "reconciles": 0,
            "drift_found_total": 0,
            "drift_fixed_total": 0,
        }
        self.last_reconcile: dict[str, Any] | None = None
        self.leader = False
        self.last_error: str | None = None
        self.on_connect: list[Callable[[], None]] = []
        self.client.add_listener(self._on_state)

    # ----------------------------------------------------------------- wiring

    def bind(self, source: Source) -> None:
        """Give the mirror the truth it mirrors (the registry)."""
        self.source = source

    def start(self, background: bool = True) -> None:
        """Connect (without blocking on it) and start the pump and watchdog threads."""
        self._started = True
        self.client.start_async()
        if background:
            t = threading.Thread(target=self._pump, name="atlas-mirror-pump", daemon=True)
            t.start()
            self._threads.append(t)

    def connect(self, timeout: float = 15.0) -> None:
        """Block until connected (for one-shot tools and tests)."""
        deadline = time.monotonic() + timeout
        if not self._started:
            self._started = True
            self.client.start_async()
        while self.client.state != KazooState.CONNECTED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ZooKeeper session with {self.hosts} in {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop threads and close the session."""
        self._stopped.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            try:
                self.client.stop()
                self.client.close()
            except ZK_ERRORS:
                pass

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._disconnected_since = None
            self._ensured_roots = False
            self._wake.set()
            for callback in self.on_connect:
                callback()
        elif self._disconnected_since is None:
            self._disconnected_since = self.clock()

    @property
    def connected(self) -> bool:
        """True while the session is usable."""
        return bool(self.client.state == KazooState.CONNECTED)

    def _recreate_client(self) -> None:
        with self._lock:
            old = self.client
            log.warning(
                "ZooKeeper session unusable for %.1fs; creating a new client", self.recreate_after
            )
            try:
                old.remove_listener(self._on_state)
                old.stop()
                old.close()
            except ZK_ERRORS:
                pass
            self.client = self.client_factory(self.hosts, self.timeout)
            self.client.add_listener(self._on_state)
            self._disconnected_since = self.clock()
            self.counters["client_recreated"] += 1
            self.client.start_async()

    def watchdog_tick(self) -> None:
        """Replace a client that has been unable to connect for too long."""
        since = self._disconnected_since
        if since is not None and self.clock() - since > self.recreate_after:
            self._recreate_client()

    # ------------------------------------------------------- the write path

    def _safely(self, name: str, fn: Callable[[], Any]) -> None:
        if not self.connected or self.source is None:
            self._mark_dirty(name)
            return
        try:
            fn()
            self.counters["syncs"] += 1
        except (*ZK_ERRORS, MirrorConflict, AtlasError) as exc:
            self.counters["sync_failures"] += 1
            self.last_error = f"{exc!r}"[:300]
            log.warning("mirror of %r deferred: %s", name, self.last_error)
            self._mark_dirty(name)

    def _mark_dirty(self, name: str) -> None:
        with self._lock:
            self._dirty_gen += 1
            self.dirty[name] = self._dirty_gen
        self._wake.set()

    def _clear_dirty(self, marks: dict[str, int]) -> None:
        with self._lock:
            for name, gen in marks.items():
                if self.dirty.get(name) == gen:
                    del self.dirty[name]

    def put_service(self, service: Service) -> None:
        """Mirror a created or changed service (its whole subtree, atomically)."""
        self._safely(service.name, lambda: self.sync_service(service.name))

    def delete_service(self, name: str) -> None:
        """Mirror a deleted service (removes the subtree atomically)."""
        self._safely(name, lambda: self.sync_service(name))

    def prepare_instance(self, service: str, iid: str) -> Any:
        """Read the instance znode, its service node and the service's guard before the write."""
        if not self.connected:
            return None
        client = self.client
        svc_path = self.layout.service(service)
        path = self.layout.instance(service, iid)
        try:
            # The guard first: one session's requests are served in order, so any commit that
            # lands after this read fails our CAS, whatever it did to the nodes read after it.
            guard_read = client.get_async(self.layout.guard(service))
            parent = client.get_async(svc_path)
            seen = self._read(client, [path])
            try:
                _, guard_stat = guard_read.get(timeout=self.timeout)
                svc_data, svc_stat = parent.get(timeout=self.timeout)
            except NoNodeError:
                return None  # the whole service must be (re)built: no shortcut
        except ZK_ERRORS:
            return None
        guard = (b"", guard_stat.version)
        return (client, seen, guard[1], (svc_data, svc_stat.version, svc_stat.numChildren))

    def instance_changed(
        self, service: str, iid: str, record: Instance | None, prepared: Any
    ) -> None:
        """Compare-and-set the znode from the written record, else fall back to a full sync."""

        def apply() -> None:
            if prepared is not None and prepared[0] is self.client:
                client, actual, guard, parent = prepared
                path = self.layout.instance(service, iid)
                desired = {path: instance_payload(record)} if record is not None else {}
                ops = [*plan(desired, actual).ops, *self._guard_ops(service, guard)]
                patchable, count_op = self._count_op(
                    service, parent, path in actual, record is not None
                )
                if patchable:
                    try:
                        self._commit(client, ops + ([count_op] if count_op else []))
                        return
                    except MirrorConflict:
                        self.counters["cas_retries"] += 1
            self.sync_instance(service, iid)

        self._safely(service, apply)

    def _count_op(
        self, service: str, parent: tuple[bytes, int, int], existed: bool, exists: bool
    ) -> tuple[bool, Op | None]:
        """The service node update that keeps its `instances` count (None: unchanged).

        Not patchable when the node's data is not what Atlas wrote: take the full sync.
        """
        if existed == exists:
            return True, None
        data, version, children = parent
        try:
            obj = json.loads(data or b"null")
        except (TypeError, ValueError):
            return False, None
        count = obj.get("instances") if isinstance(obj, dict) else None
        if isinstance(count, bool) or count != children:
            return False, None
        obj["instances"] = children + (1 if exists else -1)
        return True, Op("set", self.layout.service(service), dumps(obj), version)

    # -------------------------------------------------------------- syncing

    def _ensure_roots(self, client: KazooClient) -> None:
        if not self._ensured_roots:
            client.ensure_path(self.layout.services)
            client.ensure_path(self.layout.config)
            client.ensure_path(self.layout.guards)
            self._ensured_roots = True

    def _guard_ops(self, name: str, version: int | None) -> list[Op]:
        """Check-and-bump the service's guard (create it the first time).

        Every commit writes the guard, so of two writers that read the same state only one
        can commit, even when the other has nothing else to change (a delete of a node that
        is not there yet) -- the case per-node versions cannot see. Guards are never
        deleted: a deleted guard would forget the version a stale writer must fail against.
        """
        path = self.layout.guard(name)
        return [Op("create", path)] if version is None else [Op("set", path, b"", version)]

    def _read(self, client: KazooClient, paths: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        asyncs = [(p, client.get_async(p)) for p in paths]
        out: dict[str, tuple[bytes, int]] = {}
        for path, result in asyncs:
            try:
                data, stat = result.get(timeout=self.timeout)
            except NoNodeError:
                continue
            out[path] = (data, stat.version)
        return out

    def _read_subtree(
        self, client: KazooClient, name: str
    ) -> tuple[dict[str, tuple[bytes, int]], int | None]:
        """The service's mirrored nodes, and its guard's version (None: no guard)."""
        svc_path = self.layout.service(name)
        guard = self.layout.guard(name)
        # The guard first: anything committed after this read bumps it and fails our CAS.
        seen = self._read(client, [guard])
        try:
            children = client.get_children(svc_path)
        except NoNodeError:
            children = []
        paths = [svc_path, self.layout.config_stamp(name)]
        paths += [f"{svc_path}/{c}" for c in children]
        actual = self._read(client, paths)
        if svc_path not in actual and children:
            raise MirrorConflict(f"{svc_path} vanished while reading")
        return actual, seen[guard][1] if guard in seen else None

    @staticmethod
    def _transaction(client: KazooClient, ops: Sequence[Op]) -> Any:
        tx = client.transaction()
        for op in ops:
            if op.kind == "create":
                tx.create(op.path, op.data)
            elif op.kind == "set":
                tx.set_data(op.path, op.data, version=op.version)
            else:
                tx.delete(op.path, version=op.version)
        return tx

    def _commit(self, client: KazooClient, ops: Sequence[Op]) -> None:
        if not ops:
            return
        results = self._transaction(client, ops).commit()
        failures = [r for r in results if isinstance(r, Exception)]
        # In a failed multi, ZooKeeper marks the ops before the failing one RolledBack and
        # those after it RuntimeInconsistency: only the one in between says why.
        real = [r for r in failures if not isinstance(r, RolledBackError | RuntimeInconsistency)]
        if real:
            if all(isinstance(r, CONFLICTS) for r in real):
                raise MirrorConflict(", ".join(type(r).__name__ for r in real))
            raise real[0]

    def sync_service(self, name: str) -> Plan:
        """Make one service's subtree (node, instances, config stamp) equal DynamoDB's."""
        assert self.source is not None
        for _ in range(MAX_CAS_RETRIES):
            client = self.client
            self._ensure_roots(client)
            actual, guard = self._read_subtree(client, name)
            svc = self.source.find_service(name)
            desired = desired_tree(self.layout, svc, self.source.all_instances(name)) if svc else {}
            p = plan(desired, actual)
            try:
                self._commit(client, [*p.ops, *self._guard_ops(name, guard)])
                return p
            except MirrorConflict:
                self.counters["cas_retries"] += 1
                self._ensured_roots = False
        raise MirrorConflict(f"service {name!r} kept changing while mirroring")

    def sync_instance(self, service: str, iid: str) -> Plan:
        """Make one instance node equal DynamoDB's (the whole service if its node is missing)."""
        assert self.source is not None
        for _ in range(MAX_CAS_RETRIES):
            client = self.client
            path = self.layout.instance(service, iid)
            guard_path = self.layout.guard(service)
            seen = self._read(client, [guard_path, path])
            guard = seen.pop(guard_path, None)
            if guard is None or client.exists(self.layout.service(service)) is None:
                return self.sync_service(service)
            inst = self.source.find_instance(service, iid)
            desired = {path: instance_payload(inst)} if inst else {}
            p = plan(desired, seen)
            if p.missing or p.extra:
                return self.sync_service(service)  # the service node's count changes too
            try:
                self._commit(client, [*p.ops, *self._guard_ops(service, guard[1])])
                return p
            except MirrorConflict:
                self.counters["cas_retries"] += 1
        raise MirrorConflict(f"instance {iid} of {service!r} kept changing while mirroring")

    # ----------------------------------------------------------- reconciling

    def _read_tree(
        self, client: KazooClient
    ) -> tuple[dict[str, dict[str, tuple[bytes, int]]], dict[str, int]]:
        """Every mirrored node grouped by service, and every guard's version."""
        self._ensured_roots = False  # someone may have deleted the roots: check every time
        self._ensure_roots(client)
        # Guards first: a commit after this read fails our CAS instead of being overwritten.
        guard_paths = {self.layout.guard(n): n for n in client.get_children(self.layout.guards)}
        guards = {guard_paths[p]: v[1] for p, v in self._read(client, guard_paths).items()}
        names = set(client.get_children(self.layout.services))
        stamps = set(client.get_children(self.layout.config))
        child_lists = {n: client.get_children_async(self.layout.service(n)) for n in names}
        paths: list[str] = []
        owner: dict[str, str] = {}
        for n in names:
            try:
                kids = child_lists[n].get(timeout=self.timeout)
            except NoNodeError:
                kids = []
            for p in [self.layout.service(n)] + [f"{self.layout.service(n)}/{k}" for k in kids]:
                paths.append(p)
                owner[p] = n
        for n in stamps:
            p = self.layout.config_stamp(n)
            paths.append(p)
            owner[p] = n
        grouped: dict[str, dict[str, tuple[bytes, int]]] = {n: {} for n in names | stamps}
        for path, value in self._read(client, paths).items():
            grouped[owner[path]][path] = value
        return grouped, guards

    def reconcile(self) -> dict[str, Any]:
        """Compare all of DynamoDB with all of ZooKeeper and fix every difference."""
        assert self.source is not None
        started = self.clock()
        client = self.client
        with self._lock:
            dirty_before = dict(self.dirty)
        # ZooKeeper first, then DynamoDB: a write that lands in between bumps a znode version
        # and our CAS fails, so a stale DynamoDB read can never overwrite a newer znode.
        actual, guards = self._read_tree(client)
        services = {s.name: s for s in self.source.scan_services()}
        found = {"missing": 0, "stale": 0, "extra": 0}
        pending: list[tuple[str, Plan, Any]] = []

        def submit(name: str, p: Plan) -> None:
            if not p.ops and (name in guards or name not in services):
                return  # nothing drifted, and a live service has its guard
            found["missing"] += p.missing
            found["stale"] += p.stale
            found["extra"] += p.extra
            ops = [*p.ops, *self._guard_ops(name, guards.get(name))]
            pending.append((name, p, self._transaction(client, ops).commit_async()))

        def diff(name: str, instances: list[Instance]) -> Plan:
            svc = services.get(name)
            desired = desired_tree(self.layout, svc, instances) if svc else {}
            return plan(desired, actual.get(name, {}))

        # Stream the instance scan and commit a service's transaction as soon as its items are
        # complete, so ZooKeeper writes overlap the scan. A scan returns one partition key's
        # items together; a plan that deletes waits for the end of the scan anyway, and a
        # service that shows up twice is re-synced on its own, so no live node is ever
        # removed on a partial view.
        seen: set[str] = set()
        reopened: set[str] = set()
        deferred: dict[str, Plan] = {}
        current: str | None = None
        group: list[Instance] = []

        def close(name: str | None, instances: list[Instance]) -> None:
            if name is None:
                return
            if name in seen:
                reopened.add(name)
                return
            seen.add(name)
            p = diff(name, instances)
            if p.extra:
                deferred[name] = p
            else:
                submit(name, p)

        for inst in self.source.iter_instances():
            if inst.service != current:
                close(current, group)
                current, group = inst.service, []
            group.append(inst)
        close(current, group)
        for name, p in deferred.items():
            if name not in reopened:
                submit(name, p)
        for name in sorted((set(services) | set(actual)) - seen):
            submit(name, diff(name, []))
        fixed = 0
        retry: list[str] = []
        for name, p, result in pending:
            results = result.get(timeout=max(self.timeout, 30.0))
            if any(isinstance(r, Exception) for r in results):
                retry.append(name)
            else:
                fixed += len(p.ops)
        for name in retry + sorted(reopened):  # raced, junk under a node, or split by the scan
            try:
                p = self.sync_service(name)
            except MirrorConflict:
                self._drop_junk(client, name)
                p = self.sync_service(name)
            fixed += len(p.ops)
            if name in reopened:
                found["missing"] += p.missing
                found["stale"] += p.stale
                found["extra"] += p.extra
        drift = sum(found.values())
        self._clear_dirty(dirty_before)
        self.counters["reconciles"] += 1
        self.counters["drift_found_total"] += drift
        self.counters["drift_fixed_total"] += fixed
        self.last_reconcile = {
            "at": _iso(started),
            "duration_s": round(self.clock() - started, 3),
            "services": len(services),
            "drift_found": found,
            "drift_fixed": fixed,
        }
        log.info("reconciled %d services: drift %s, fixed %d", len(services), found, fixed)
        return self.last_reconcile

    def _drop_junk(self, client: KazooClient, name: str) -> None:
        # Children under an instance node are not ours and block deletes; remove them.
        svc_path = self.layout.service(name)
        try:
            for child in client.get_children(svc_path):
                for junk in client.get_children(f"{svc_path}/{child}"):
                    client.delete(f"{svc_path}/{child}/{junk}", recursive=True)
        except NoNodeError:
            pass

    # -------------------------------------------------------------- background

    def drain_dirty(self) -> int:
        """Re-sync every service whose mirror write failed; return how many succeeded."""
        with self._lock:
            todo = dict(self.dirty)
        done = 0
        for name, gen in sorted(todo.items()):
            if not self.connected or self.source is None:
                break
            try:
                self.sync_service(name)
            except (*ZK_ERRORS, MirrorConflict, AtlasError) as exc:
                self.last_error = f"{exc!r}"[:300]
                continue
            self._clear_dirty({name: gen})
            done += 1
        return done

    def _pump(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self.watchdog_tick()
                if self.dirty and self.connected:
                    self.drain_dirty()
            except Exception:  # the pump must outlive any single failure
                log.exception("mirror pump error")

    def status(self) -> dict[str, Any]:
        """Mirror state for /v1/info and /readyz."""
        return {
            "configured": True,
            "hosts": self.hosts,
            "root": self.layout.root,
            "connected": self.connected,
            "state": str(self.client.state),
            "lagging": bool(self.dirty) or not self.connected,
            "dirty_services": len(self.dirty),
            "leader": self.leader,
            "last_reconcile": self.last_reconcile,
            "last_error": self.last_error,
            **self.counters,
        }
