"""The ZooKeeper mirror: group-committed CAS on the write path, a pump thread, a client watchdog.

Correctness does not depend on the order in which concurrent writers reach ZooKeeper. Every
mirror commit of a service checks and bumps the service's guard node in the same transaction.
A writer reads the guard's version before its DynamoDB write; its change may commit only if no
commit since then touched its instance (the guard's data says which instances each recent
commit touched, see `atlas.mirror.guard`); otherwise it re-reads the truth and posts again. A
whole-service sync reads the guard first, then DynamoDB, then commits with CAS on what it read.
So the last commit to touch a node always carries a DynamoDB state written or read after every
earlier commit's, and no older state is ever left behind by racing writers, in one process or
many.

Threads (kazoo's TreeCache pattern: one thread owns the state, the others post to it):

- the owner thread (`atlas-mirror`) owns every piece of mutable state of a ZkMirror: the
  client (it alone replaces it), the counters, the dirty marks, the leader flag, the last
  reconcile, the published status. It also commits every instance change: request threads post
  "instance X of service S changed (record, guard version read before the write)" and wait;
  the owner batches what is queued per service into one multi with one guard check+bump;
- the pump thread (`atlas-mirror-pump`) re-syncs services whose mirror write failed, and
  probes a ZooKeeper that refuses our client (a server restarted with a wiped data dir);
- request threads and the reconciler read ZooKeeper and DynamoDB themselves and commit
  whole-service syncs directly (the guard makes that safe); they post what they counted.

Each public method says whether it is thread-safe.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
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
from atlas.mirror.batch import Change, plan_batch
from atlas.mirror.metrics import MirrorMetrics, NullMirrorMetrics
from atlas.mirror.payloads import desired_tree
from atlas.mirror.plan import Op, Plan, diff_subtree
from atlas.registry.records import Instance, Service

log = logging.getLogger(__name__)

MAX_CAS_RETRIES = 8
CONFLICTS = (BadVersionError, NodeExistsError, NoNodeError, NotEmptyError)
ZK_ERRORS = (KazooException, ZookeeperError, KazooTimeoutError, TimeoutError, OSError)
PROBE_AFTER_S = 0.5  # disconnected this long: ask a fresh client whether the server is up
PROBE_EVERY_S = 1.0
PROBE_START_S = 3.0
CONTENDED_S = 1.0  # after losing a multi to another process, read before committing this long


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MirrorConflict(Exception):
    """A CAS lost a race; the caller re-reads and tries again."""


class TruthSource(Protocol):
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
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=1.5, max_delay=0.5),
        command_retry=KazooRetry(max_tries=2, delay=0.05, backoff=2, max_delay=0.5),
    )


@dataclass(frozen=True)
class Prepared:
    """What `prepare_instance` read before the DynamoDB write, in one round trip: on which
    client, the service's guard (data, version), its service node (data, version, children)
    and the instance node (data, version; None when absent)."""

    client: KazooClient
    guard_version: int
    guard_data: bytes
    parent: tuple[bytes, int, int]
    node: tuple[bytes, int] | None


@dataclass(frozen=True)
class Synced:
    """A committed whole-service sync: what it changed, and the zxid that published it."""

    plan: Plan
    zxid: int


class _Outcome(enum.Enum):
    COMMITTED = "committed"  # published at the zxid given
    STALE = "stale"  # a commit touched the instance after the pre-read: re-read the truth
    RESYNC = "resync"  # the service needs a whole-service sync
    DEFERRED = "deferred"  # not mirrored now; marked dirty for the pump thread


@dataclass
class _Posted:
    """An instance change waiting in the owner's queue for its group commit."""

    service: str
    change: Change
    prepared: Prepared
    reply: Future[tuple[_Outcome, int | None]] = field(default_factory=Future)
    conflicts: int = 0


_STOP = object()


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
        probe_factory: Callable[[str], KazooClient] | None = None,
        metrics: MirrorMetrics | None = None,
    ) -> None:
        self.hosts = hosts
        self.metrics: MirrorMetrics = metrics or NullMirrorMetrics()
        self.layout = Layout(realm)
        self.timeout = timeout
        self.client_factory = client_factory
        self.probe_factory = probe_factory or make_probe_client
        self.clock = clock
        # A server restarted with a wiped data dir refuses a client that has seen a newer zxid,
        # forever; only a fresh client gets in. The pump thread's probe finds that out within
        # a second; as a backstop, a client that cannot connect for this long is replaced.
        self.recreate_after = recreate_after if recreate_after is not None else 2 * timeout
        self.source: TruthSource | None = None
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._pump_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._owner: threading.Thread | None = None
        self._started = False
        self._connect_listeners: list[Callable[[], None]] = []  # the owner's
        # Owned by the owner thread from here on.
        self._client: KazooClient = client_factory(hosts, timeout)
        self._listener = self._listen_to(self._client)
        self._pending: dict[str, list[_Posted]] = {}
        # service -> (client, guard version) of our last group commit to it
        self._guard_seen: dict[str, tuple[KazooClient, int]] = {}
        # service -> until when other writers' commits make our pre-reads a poor bet
        self._contended: dict[str, float] = {}
        # service -> generation of its latest failed mirror write; a sync clears a mark only
        # if no newer failure re-marked it meanwhile.
        self._dirty: dict[str, int] = {}
        self._dirty_since: dict[str, float] = {}  # service -> when its oldest open mark was set
        self._dirty_gen = 0
        self._disconnected_since: float | None = clock()
        self._counters: dict[str, int] = {
            "syncs": 0,
            "sync_failures": 0,
            "resync_failures": 0,
            "cas_retries": 0,
            "stale_retries": 0,
            "group_commits": 0,
            "grouped_changes": 0,
            "client_recreated": 0,
            "client_refused": 0,
            "reconciles": 0,
            "drift_found_total": 0,
            "drift_fixed_total": 0,
        }
        self._last_reconcile: dict[str, Any] | None = None
        self._leader = False
        self._last_error: str | None = None
        self._published: dict[str, Any] = {}
        self._exported = dict(self._counters)  # the counters as last handed to `metrics`
        self._publish()

    # ----------------------------------------------------------------- wiring

    def bind(self, source: TruthSource) -> None:
        """Give the mirror the truth it mirrors (the registry). Not thread-safe: before start."""
        self.source = source

    def add_connect_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the owner thread; it must not block) whenever a session is
        established. Thread-safe (posts to the owner), before or after start."""
        self._in_owner(functools.partial(self._connect_listeners.append, callback))

    def start(self, background: bool = True) -> None:
        """Connect (without blocking on it) and start the owner and pump threads.

        Not thread-safe; call once, after any fork. `background=False` starts no threads (tests
        then drive the owner's loop with `run_once`).
        """
        if self._started:
            return
        self._started = True
        self._client.start_async()
        if background:
            self._owner = threading.Thread(target=self._own, name="atlas-mirror", daemon=True)
            pump = threading.Thread(target=self._pump, name="atlas-mirror-pump", daemon=True)
            self._threads = [self._owner, pump]
            for t in self._threads:
                t.start()

    def wait_connected(self, timeout: float) -> bool:
        """Block until the session is connected or `timeout` passes; True if connected.
        Thread-safe."""
        deadline = time.monotonic() + timeout
        while not self.connected:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def connect(self, timeout: float = 15.0) -> None:
        """Start if needed and block until connected (one-shot tools and tests). Not thread-safe."""
        self.start()
        if not self.wait_connected(timeout):
            raise TimeoutError(f"no ZooKeeper session with {self.hosts} in {timeout}s")

    def stop(self) -> None:
        """Stop the threads (changes still queued are deferred) and close the session.

        Not thread-safe; call once.
        """
        self._stopped.set()
        self._pump_wake.set()
        for t in self._threads[1:]:  # the pump thread first: it may still post a client
            t.join(timeout=10)
        self._tasks.put(_STOP)
        if self._owner is not None:
            self._owner.join(timeout=10)
        if self._owner is None or not self._owner.is_alive():
            _close_quietly(self._client)

    @property
    def client(self) -> KazooClient:
        """The current kazoo client (the owner thread replaces it). Thread-safe to read."""
        return self._client

    @property
    def connected(self) -> bool:
        """True while the current session is usable. Thread-safe."""
        return bool(self._client.state == KazooState.CONNECTED)

    @property
    def dirty(self) -> dict[str, int]:
        """Services whose mirror is behind, as last published by the owner. Thread-safe."""
        return dict(self._published["dirty"])

    @property
    def counters(self) -> dict[str, int]:
        """The counters as last published by the owner. Thread-safe."""
        return dict(self._published["counters"])

    def set_leader(self, leading: bool) -> None:
        """Record whether this process leads reconciliation. Thread-safe (posts to the owner)."""
        self._in_owner(lambda: setattr(self, "_leader", leading))

    def status(self) -> dict[str, Any]:
        """Mirror state for /v1/info and /readyz. Thread-safe (reads what the owner published)."""
        snap = self._published
        connected = self.connected
        return {
            "configured": True,
            "hosts": self.hosts,
            "root": self.layout.root,
            "connected": connected,
            "state": str(self._client.state),
            "lagging": bool(snap["dirty"]) or not connected,
            "dirty_services": len(snap["dirty"]),
            "leader": snap["leader"],
            "last_reconcile": snap["last_reconcile"],
            "last_error": snap["last_error"],
            **snap["counters"],
        }

    # ------------------------------------------------------------ the owner

    def _in_owner(self, fn: Callable[[], None]) -> None:
        """Run fn on the owner thread, after what is already queued. Thread-safe."""
        self._tasks.put(fn)

    def _owner_running(self) -> bool:
        return self._owner is not None and self._owner.is_alive() and not self._stopped.is_set()

    def _own(self) -> None:
        while self.run_once(timeout=0.25):
            pass

    def run_once(self, timeout: float = 0.0) -> bool:
        """One round of the owner's loop: run what was posted (waiting up to `timeout` for the
        first item), group-commit the queued changes, tick the watchdog, publish the status.

        Owner thread only (a test that started the mirror without threads may call it).
        Returns False once stopped.
        """
        items: list[Any] = []
        try:
            items.append(self._tasks.get(timeout=0 if self._pending else timeout))
            while True:
                items.append(self._tasks.get_nowait())
        except queue.Empty:
            pass
        for item in items:
            if item is _STOP:
                self._shutdown()
                return False
            if isinstance(item, _Posted):
                self._pending.setdefault(item.service, []).append(item)
                continue
            try:
                item()
            except Exception:  # the owner must outlive any single failure
                self.metrics.swallowed("mirror_task")
                log.exception("mirror task failed")
        try:
            if self._pending:
                self._commit_round()
            self.watchdog_tick()
        except Exception:
            self.metrics.swallowed("mirror_round")
            log.exception("mirror owner round failed")
        self._publish()
        return True

    def _publish(self) -> None:
        """Owner thread only: publish the status, and hand the news to `metrics`."""
        if self._started:
            self._export()
        self._published = {
            "dirty": dict(self._dirty),
            "counters": dict(self._counters),
            "leader": self._leader,
            "last_reconcile": self._last_reconcile,
            "last_error": self._last_error,
            "disconnected_since": self._disconnected_since,
        }

    def _export(self) -> None:
        deltas = {k: v - self._exported.get(k, 0) for k, v in self._counters.items()}
        deltas = {k: d for k, d in deltas.items() if d}
        if deltas:
            self.metrics.counted(deltas)
            self._exported = dict(self._counters)
        behind = list(self._dirty_since.values())
        if self._disconnected_since is not None:
            behind.append(self._disconnected_since)
        self.metrics.state(
            connected=self._client.state == KazooState.CONNECTED,
            dirty=len(self._dirty),
            lag_s=max(0.0, self.clock() - min(behind)) if behind else 0.0,
            leader=self._leader,
        )

    def _shutdown(self) -> None:
        for posted in self._pending.values():
            for p in posted:
                _reply(p, _Outcome.DEFERRED)
        self._pending = {}
        while True:
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Posted):
                _reply(item, _Outcome.DEFERRED)
        self._client.remove_listener(self._listener)
        _close_quietly(self._client)

    def _listen_to(self, client: KazooClient) -> Callable[[str], None]:
        def listener(state: str) -> None:  # on kazoo's thread: post, never block
            self._in_owner(lambda: self._state_changed(client, state))

        client.add_listener(listener)
        return listener

    def _state_changed(self, client: KazooClient, state: str) -> None:
        if client is not self._client:
            return
        if state == KazooState.CONNECTED:
            self._disconnected_since = None
            with contextlib.suppress(*ZK_ERRORS):
                self._ensure_roots(client)
            for callback in self._connect_listeners:
                try:
                    callback()
                except Exception:
                    self.metrics.swallowed("mirror_connect_listener")
                    log.exception("mirror connect listener failed")
        elif self._disconnected_since is None:
            self._disconnected_since = self.clock()
        self._pump_wake.set()

    def _bump(self, counter: str, n: int = 1) -> None:
        self._counters[counter] += n

    def _mark_dirty(self, name: str, reason: object | None = None) -> None:
        """Owner thread only."""
        self._dirty_gen += 1
        self._dirty[name] = self._dirty_gen
        self._dirty_since.setdefault(name, self.clock())
        if reason is not None:
            self._counters["sync_failures"] += 1
            self._last_error = f"{reason!r}"[:300]
            log.warning("mirror of %r deferred: %s", name, self._last_error)
        self._pump_wake.set()

    def _note_error(self, exc: BaseException, counter: str | None = None) -> None:
        """Owner thread only."""
        self._last_error = f"{exc!r}"[:300]
        if counter is not None:
            self._counters[counter] += 1

    def _clear_dirty(self, marks: dict[str, int]) -> None:
        """Owner thread only."""
        for name, gen in marks.items():
            if self._dirty.get(name) == gen:
                del self._dirty[name]
                self._dirty_since.pop(name, None)

    def _replace_client(self, new: KazooClient, why: str) -> None:
        """Owner thread only: make `new` (started or not) the client, and close the old one."""
        old = self._client
        log.warning("replacing the ZooKeeper client: %s", why)
        old.remove_listener(self._listener)
        self._client = new
        self._listener = self._listen_to(new)
        self._guard_seen.clear()
        self._contended.clear()
        self._counters["client_recreated"] += 1
        self._disconnected_since = self.clock()
        if new.state == KazooState.LOST:
            new.start_async()
        elif new.state == KazooState.CONNECTED:
            self._state_changed(new, KazooState.CONNECTED)  # it connected before we listened
        # Closing joins kazoo's connection thread, which may sit in a connect attempt for a
        # while: not on the owner thread.
        threading.Thread(target=_close_quietly, args=(old,), name="atlas-mirror-close",
                         daemon=True).start()  # fmt: skip

    def watchdog_tick(self) -> None:
        """Replace a client that has been unable to connect for `recreate_after` seconds.

        Owner thread only (a test without threads may call it).
        """
        since = self._disconnected_since
        if since is not None and self.clock() - since > self.recreate_after:
            self._replace_client(
                self.client_factory(self.hosts, self.timeout),
                f"session unusable for {self.recreate_after:.1f}s",
            )

    # ------------------------------------------------------- the write path

    def _truth(self) -> TruthSource:
        if self.source is None:
            raise MirrorConflict("the mirror has no truth bound")
        return self.source

    def _defer(self, name: str, reason: object) -> None:
        """Mark a service dirty from any thread; waits (briefly) until the owner has it, so
        that a write that returns has its lag reported."""
        done: Future[None] = Future()

        def mark() -> None:
            self._mark_dirty(name, reason)
            done.set_result(None)

        self._in_owner(mark)
        if self._owner_running():
            with contextlib.suppress(FutureTimeout):
                done.result(timeout=self.timeout)

    def _sync_or_defer(self, name: str) -> int | None:
        """Sync one whole service now, or mark it dirty; the zxid that published it, or None."""
        if not self.connected or self.source is None:
            self._defer(name, None if self.source is not None else "no truth bound")
            return None
        try:
            synced = self.sync_service(name)
        except (*ZK_ERRORS, MirrorConflict, AtlasError) as exc:
            self._defer(name, exc)
            return None
        self._in_owner(lambda: self._bump("syncs"))
        return synced.zxid

    def put_service(self, service: Service) -> int | None:
        """Mirror a created or changed service (its whole subtree, atomically).

        Thread-safe; returns the zxid that published it, or None when deferred.
        """
        return self._sync_or_defer(service.name)

    def delete_service(self, name: str) -> int | None:
        """Mirror a deleted service (removes the subtree atomically).

        Thread-safe; returns the zxid that published it, or None when deferred.
        """
        return self._sync_or_defer(name)

    def prepare_instance(self, service: str, iid: str) -> Prepared | None:
        """Read the service's guard, its node and the instance node before the DynamoDB
        write (None: the service must be synced whole, or ZooKeeper is not there).

        Thread-safe: reads only, pipelined in one round trip, guard first.
        """
        client = self._client
        if client.state != KazooState.CONNECTED:
            return None
        try:
            with self.metrics.zk_call("prepare"):
                # The guard first: one session's requests are served in order, so any commit
                # that lands after this read moves the guard, whatever it did to the nodes
                # read after.
                guard = client.get_async(self.layout.guard(service))
                parent = client.get_async(self.layout.service(service))
                node = client.get_async(self.layout.instance(service, iid))
                guard_data, guard_stat = guard.get(timeout=self.timeout)
                parent_data, parent_stat = parent.get(timeout=self.timeout)
                try:
                    node_data, node_stat = node.get(timeout=self.timeout)
                    seen: tuple[bytes, int] | None = (node_data, node_stat.version)
                except NoNodeError:
                    seen = None
        except NoNodeError:
            return None  # no guard or no service node: the whole service must be (re)built
        except ZK_ERRORS:
            return None
        return Prepared(
            client,
            guard_stat.version,
            guard_data,
            (parent_data, parent_stat.version, parent_stat.numChildren),
            seen,
        )

    def instance_changed(
        self, service: str, iid: str, record: Instance | None, prepared: Any
    ) -> int | None:
        """Publish an instance written (record) or detached (None), grouped with the service's
        other queued changes; returns the zxid that published it, or None when deferred.

        Thread-safe: blocks the calling thread until its change is committed (or deferred to
        the pump thread). A change whose pre-read went stale re-reads the truth and retries.
        """
        if self.source is None:
            self._defer(service, "no truth bound")
            return None
        for _ in range(MAX_CAS_RETRIES):
            if not isinstance(prepared, Prepared):
                return self._sync_or_defer(service)
            outcome, zxid = self._submit(
                service, Change(iid, record, prepared.guard_version), prepared
            )
            if outcome is _Outcome.COMMITTED:
                return zxid
            if outcome is _Outcome.DEFERRED:
                return None
            if outcome is _Outcome.RESYNC:
                return self._sync_or_defer(service)
            # Another commit touched this instance after our pre-read: our record may be
            # older than what it published. Pre-read again, then take the truth as it is now.
            self._in_owner(lambda: self._bump("stale_retries"))
            prepared = self.prepare_instance(service, iid)
            try:
                record = self.source.find_instance(service, iid)
            except AtlasError as exc:
                self._defer(service, exc)
                return None
        self._defer(service, MirrorConflict(f"instance {iid} of {service!r} kept changing"))
        return None

    def _submit(
        self, service: str, change: Change, prepared: Prepared
    ) -> tuple[_Outcome, int | None]:
        if not self._owner_running():
            self._defer(service, "the mirror is not running")
            return _Outcome.DEFERRED, None
        posted = _Posted(service, change, prepared)
        self._tasks.put(posted)
        try:
            return posted.reply.result(timeout=2 * self.timeout + 1)
        except FutureTimeout:
            self._defer(service, "no commit in time")
            return _Outcome.DEFERRED, None

    def _commit_round(self) -> None:
        """Owner thread: one group commit per service with queued changes, pipelined."""
        batches, self._pending = self._pending, {}
        client = self._client
        live: dict[str, list[_Posted]] = {}
        for service, posted in batches.items():
            for p in posted:
                if p.prepared.client is not client:
                    _reply(p, _Outcome.STALE)  # read on another session: read again
                else:
                    live.setdefault(service, []).append(p)
        if not live:
            return
        if client.state != KazooState.CONNECTED:
            for service, posted in live.items():
                self._defer_posted(service, posted, None)
            return
        views = {
            service: self._batch_view(client, service, posted) for service, posted in live.items()
        }
        commits = []
        for service, posted in live.items():
            try:
                with self.metrics.zk_call("batch_read"):
                    guard, parent, nodes = _collect(views[service][0], self.timeout)
            except ZK_ERRORS as exc:
                self._defer_posted(service, posted, exc)
                continue
            if guard is None:
                for p in posted:
                    _reply(p, _Outcome.RESYNC)
                continue
            bp = plan_batch(self.layout, service, [p.change for p in posted], guard, parent, nodes)
            for n in bp.stale:
                _reply(posted[n], _Outcome.STALE)
            for n in bp.resync:
                _reply(posted[n], _Outcome.RESYNC)
            if bp.commit:
                result = self._transaction(client, bp.ops).commit_async()
                commits.append((service, [posted[n] for n in bp.commit], result))
        for service, committed, result in commits:
            try:
                with self.metrics.zk_call("group_commit"):
                    results = _checked(result.get(timeout=self.timeout))
            except MirrorConflict:
                # A commit landed between our view and our multi: read again, plan again.
                self._counters["cas_retries"] += 1
                if views[service][1]:  # others write this service too: read first a while
                    self._contended[service] = time.monotonic() + CONTENDED_S
                for p in committed:
                    p.conflicts += 1
                    if p.conflicts >= MAX_CAS_RETRIES:
                        self._defer_posted(service, [p], MirrorConflict("guard kept moving"))
                    else:
                        self._pending.setdefault(service, []).append(p)
                continue
            except ZK_ERRORS as exc:
                self._defer_posted(service, committed, exc)
                continue
            guard_stat = results[-1]
            self._guard_seen[service] = (client, int(guard_stat.version))
            self._counters["group_commits"] += 1
            self._counters["grouped_changes"] += len(committed)
            self._counters["syncs"] += len(committed)
            for p in committed:
                _reply(p, _Outcome.COMMITTED, int(guard_stat.mzxid))

    def _defer_posted(self, service: str, posted: Iterable[_Posted], reason: object) -> None:
        self._mark_dirty(service, reason)
        for p in posted:
            _reply(p, _Outcome.DEFERRED)

    def _batch_view(
        self, client: KazooClient, service: str, posted: Sequence[_Posted]
    ) -> tuple[Any, bool]:
        """What the batch is planned against, and whether it is the writers' own pre-reads.

        The pre-reads (no extra round trip) when nothing is known to have moved since the
        freshest of them: no retry yet, our last commit to the service is not newer, and no
        other process lost us a multi on it lately. Else a fresh read, pipelined (`_collect`
        waits for it). A stale view costs one failed multi: the guard's CAS catches it.
        """
        freshest = max(posted, key=lambda p: p.prepared.guard_version).prepared
        seen = self._guard_seen.get(service)
        moved = seen is not None and seen[0] is client and seen[1] > freshest.guard_version
        contended = self._contended.get(service, 0.0) > time.monotonic()
        if not contended:
            self._contended.pop(service, None)
        if not moved and not contended and all(p.conflicts == 0 for p in posted):
            nodes: dict[str, tuple[bytes, int]] = {}
            for p in sorted(posted, key=lambda p: p.prepared.guard_version):
                path = self.layout.instance(service, p.change.iid)
                if p.prepared.node is not None:
                    nodes[path] = p.prepared.node
                else:
                    nodes.pop(path, None)
            return ((freshest.guard_data, freshest.guard_version), freshest.parent, nodes), True
        # The guard first: one session's requests are served in order, so any commit that
        # lands after this read fails our CAS, whatever it did to the nodes read after it.
        guard = client.get_async(self.layout.guard(service))
        parent = client.get_async(self.layout.service(service))
        paths = {self.layout.instance(service, p.change.iid) for p in posted}
        return (guard, parent, {path: client.get_async(path) for path in sorted(paths)}), False

    # -------------------------------------------------------------- syncing

    def _ensure_roots(self, client: KazooClient) -> None:
        # Every call here is bounded: a request queued on a client that never reconnects
        # (a wiped server) would otherwise block its thread until the client is closed.
        roots = (self.layout.services, self.layout.config, self.layout.guards)
        with self.metrics.zk_call("ensure_roots"):
            for result in [client.ensure_path_async(root) for root in roots]:
                result.get(timeout=self.timeout)

    def _children(self, client: KazooClient, path: str) -> list[str]:
        with self.metrics.zk_call("get_children"):
            result: list[str] = client.get_children_async(path).get(timeout=self.timeout)
        return result

    def _guard_ops(self, name: str, version: int | None) -> list[Op]:
        """Check-and-bump the service's guard (create it the first time), vouching for nothing.

        Every commit writes the guard, so of two writers that read the same state only one
        can commit, even when the other has nothing else to change (a delete of a node that
        is not there yet) -- the case per-node versions cannot see. Guards are never
        deleted: a deleted guard would forget the version a stale writer must fail against.
        The empty data says "this commit may have touched anything" (see atlas.mirror.guard);
        the set after a create makes the multi's last result the guard's stat (its zxid).
        """
        path = self.layout.guard(name)
        if version is None:
            return [Op("create", path), Op("set", path, b"", 0)]
        return [Op("set", path, b"", version)]

    def _read(self, client: KazooClient, paths: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        out: dict[str, tuple[bytes, int]] = {}
        with self.metrics.zk_call("get"):
            asyncs = [(p, client.get_async(p)) for p in paths]
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
            children = self._children(client, svc_path)
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

    def _commit(self, client: KazooClient, ops: Sequence[Op]) -> list[Any]:
        with self.metrics.zk_call("multi"):
            tx = self._transaction(client, ops)
            return _checked(tx.commit_async().get(timeout=self.timeout))

    def sync_service(self, name: str) -> Synced:
        """Make one service's subtree (node, instances, config stamp) equal DynamoDB's.

        Thread-safe: reads ZooKeeper (guard first), then DynamoDB, then commits with CAS on
        what it read, retrying from a fresh read when it loses a race.
        """
        truth = self._truth()
        for attempt in range(MAX_CAS_RETRIES):
            client = self._client
            if attempt:
                self._ensure_roots(client)  # a conflict may be a missing root
            actual, guard = self._read_subtree(client, name)
            svc = truth.find_service(name)
            desired = desired_tree(self.layout, svc, truth.all_instances(name)) if svc else {}
            p = diff_subtree(desired, actual)
            try:
                results = self._commit(client, [*p.ops, *self._guard_ops(name, guard)])
                return Synced(p, int(results[-1].mzxid))
            except MirrorConflict:
                self._in_owner(lambda: self._bump("cas_retries"))
        raise MirrorConflict(f"service {name!r} kept changing while mirroring")

    # ----------------------------------------------------------- reconciling

    def _read_tree(
        self, client: KazooClient
    ) -> tuple[dict[str, dict[str, tuple[bytes, int]]], dict[str, int]]:
        """Every mirrored node grouped by service, and every guard's version."""
        self._ensure_roots(client)  # someone may have deleted the roots: check every time
        # Guards first: a commit after this read fails our CAS instead of being overwritten.
        guard_paths = {self.layout.guard(n): n for n in self._children(client, self.layout.guards)}
        guards = {guard_paths[p]: v[1] for p, v in self._read(client, guard_paths).items()}
        names = set(self._children(client, self.layout.services))
        stamps = set(self._children(client, self.layout.config))
        child_lists = {n: client.get_children_async(self.layout.service(n)) for n in names}
        paths: list[str] = []
        owner: dict[str, str] = {}
        for n in names:
            try:
                with self.metrics.zk_call("get_children"):
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
        """Compare all of DynamoDB with all of ZooKeeper and fix every difference.

        Thread-safe (the reconciler's thread or a one-shot tool); returns the report and posts
        it, with the counters, to the owner.
        """
        truth = self._truth()
        started = self.clock()
        client = self._client
        dirty_before = self.dirty
        # ZooKeeper first, then DynamoDB: a write that lands in between bumps a guard and our
        # CAS fails, so a stale DynamoDB read can never overwrite a newer znode.
        actual, guards = self._read_tree(client)
        services = {s.name: s for s in truth.scan_services()}
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
            return diff_subtree(desired, actual.get(name, {}))

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

        for inst in truth.iter_instances():
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
            with self.metrics.zk_call("multi"):
                results = result.get(timeout=max(self.timeout, 30.0))
            if any(isinstance(r, Exception) for r in results):
                retry.append(name)
            else:
                fixed += len(p.ops)
        for name in retry + sorted(reopened):  # raced, junk under a node, or split by the scan
            try:
                p = self.sync_service(name).plan
            except MirrorConflict:
                self._drop_junk(client, name)
                p = self.sync_service(name).plan
            fixed += len(p.ops)
            if name in reopened:
                found["missing"] += p.missing
                found["stale"] += p.stale
                found["extra"] += p.extra
        drift = sum(found.values())
        report = {
            "at": _iso(started),
            "duration_s": round(self.clock() - started, 3),
            "services": len(services),
            "drift_found": found,
            "drift_fixed": fixed,
        }

        self.metrics.reconciled(self.clock() - started, found, fixed)

        def record() -> None:
            self._clear_dirty(dirty_before)
            self._counters["reconciles"] += 1
            self._counters["drift_found_total"] += drift
            self._counters["drift_fixed_total"] += fixed
            self._last_reconcile = report

        self._in_owner(record)
        log.info("reconciled %d services: drift %s, fixed %d", len(services), found, fixed)
        return report

    def _drop_junk(self, client: KazooClient, name: str) -> None:
        # Children under an instance node are not ours and block deletes; remove them.
        svc_path = self.layout.service(name)
        try:
            for child in self._children(client, svc_path):
                for junk in self._children(client, f"{svc_path}/{child}"):
                    client.delete(f"{svc_path}/{child}/{junk}", recursive=True)
        except NoNodeError:
            pass

    # ---------------------------------------------------------- the repairs

    def _pump(self) -> None:
        last_probe = 0.0
        while not self._stopped.is_set():
            self._pump_wake.wait(timeout=0.5)
            self._pump_wake.clear()
            if self._stopped.is_set():
                return
            try:
                if not self.connected:
                    if time.monotonic() - last_probe >= PROBE_EVERY_S:
                        last_probe = time.monotonic()
                        self.probe()
                elif self.source is not None and self._published["dirty"]:
                    self.drain_dirty()
            except Exception:  # the pump thread must outlive any single failure
                self.metrics.swallowed("mirror_pump")
                log.exception("mirror repair error")

    def drain_dirty(self) -> int:
        """Re-sync every service whose mirror write failed; return how many succeeded.

        Thread-safe (the pump thread calls it); posts the cleared marks to the owner.
        """
        done = 0
        for name, gen in sorted(self.dirty.items()):
            if not self.connected or self.source is None:
                break
            try:
                self.sync_service(name)
            except (*ZK_ERRORS, MirrorConflict, AtlasError) as exc:
                self._in_owner(functools.partial(self._note_error, exc, "resync_failures"))
                continue
            self._in_owner(functools.partial(self._clear_dirty, {name: gen}))
            done += 1
        return done

    def probe(self) -> bool:
        """While our client cannot connect, ask a throwaway client whether the server is up
        but refuses ours: a server restarted with a wiped data dir refuses, forever, a client
        that has seen a newer zxid than its own. If so, have the owner replace our client
        with a fresh one (which gets in), and return True.

        Thread-safe, but blocking (a few seconds at most): the pump thread calls it.
        """
        client = self._client
        since = self._published["disconnected_since"]
        if client.state == KazooState.CONNECTED or since is None:
            return False
        if self.clock() - since < PROBE_AFTER_S:
            return False
        # A short session: a connect attempt that gets no answer (seen on a server that has
        # just opened its port) is retried after a second, not after a whole session timeout.
        fresh = self.probe_factory(self.hosts)
        try:
            with self.metrics.zk_call("probe"):
                fresh.start(timeout=PROBE_START_S)
                fresh.exists_async("/").get(timeout=self.timeout)  # any reply carries its zxid
            theirs = int(fresh.last_zxid or 0)
        except ZK_ERRORS:
            return False
        finally:
            _close_quietly(fresh)
        ours = int(client.last_zxid or 0)
        if client.state == KazooState.CONNECTED or ours <= theirs:
            return False  # ours can get in (or already did): keep its session

        def swap() -> None:
            if self._client is client and client.state != KazooState.CONNECTED:
                self._counters["client_refused"] += 1
                self._replace_client(
                    self.client_factory(self.hosts, self.timeout),
                    f"the server is at zxid {theirs:#x}, behind the {ours:#x} our client has "
                    "seen: it refuses that client (a wiped data dir?)",
                )

        self._in_owner(swap)
        return True


# The probe's own reconnect chatter says nothing the main client's does not: errors only.
probe_log = logging.getLogger("atlas.mirror.probe")
probe_log.setLevel(logging.ERROR)


def make_probe_client(hosts: str) -> KazooClient:
    """A throwaway kazoo client with a short session, for `ZkMirror.probe`."""
    return KazooClient(
        hosts=hosts,
        timeout=1.0,
        logger=probe_log,
        connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_delay=0.25),
        command_retry=KazooRetry(max_tries=1, delay=0.05),
    )


def _reply(posted: _Posted, outcome: _Outcome, zxid: int | None = None) -> None:
    if not posted.reply.done():
        posted.reply.set_result((outcome, zxid))


def _collect(
    view: Any, timeout: float
) -> tuple[tuple[bytes, int] | None, tuple[bytes, int, int] | None, dict[str, tuple[bytes, int]]]:
    """A batch view as (guard, parent, nodes): as given, or waited for when it was read."""
    guard_read, parent_read, node_reads = view
    if isinstance(guard_read, tuple):
        return view
    guard: tuple[bytes, int] | None = None
    parent: tuple[bytes, int, int] | None = None
    nodes: dict[str, tuple[bytes, int]] = {}
    try:
        data, stat = guard_read.get(timeout=timeout)
        guard = (data, stat.version)
    except NoNodeError:
        pass
    try:
        data, stat = parent_read.get(timeout=timeout)
        parent = (data, stat.version, stat.numChildren)
    except NoNodeError:
        pass
    for path, result in node_reads.items():
        try:
            data, stat = result.get(timeout=timeout)
        except NoNodeError:
            continue
        nodes[path] = (data, stat.version)
    return guard, parent, nodes


def _checked(results: list[Any]) -> list[Any]:
    """A multi's results, or the reason it failed (MirrorConflict when it lost a race)."""
    failures = [r for r in results if isinstance(r, Exception)]
    # In a failed multi, ZooKeeper marks the ops before the failing one RolledBack and
    # those after it RuntimeInconsistency: only the one in between says why.
    real = [r for r in failures if not isinstance(r, RolledBackError | RuntimeInconsistency)]
    if real:
        if all(isinstance(r, CONFLICTS) for r in real):
            raise MirrorConflict(", ".join(type(r).__name__ for r in real))
        raise real[0]
    return results


def _close_quietly(client: KazooClient) -> None:
    with contextlib.suppress(*ZK_ERRORS):
        client.stop()
        client.close()
