"""ZooKeeper side: a watch of `/atlas/<realm>/services` that yields per-service changes, and the
sidecar's ephemeral report node under `sidecars/`.

One owner per piece of state, as in kazoo's TreeCache:

- kazoo's callback thread runs every watch callback and every read completion (completions are
  re-dispatched onto it, so they stay in the order the server sent them) and owns the watch
  bookkeeping (`_Watch`): which paths are watched, how many reads are outstanding;
- the sidecar loop thread owns the tree of node data (`ZooKeeperSource.drain`): it applies what
  the callback thread posted to a queue, re-parses only the services that changed, and returns
  them;
- the publisher thread owns the report node (`_Publisher`).

Every read re-arms a one-shot watch on what it read, so an event costs one read of the node
that changed. After any disconnection kazoo forgets its watches: the subtree is read again and
the children lists say what went away meanwhile.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import Callback, EventType, WatchedEvent

from atlas.contract import Layout, is_service_name
from atlas.sidecar.model import (
    HealthCheck,
    Instance,
    Service,
    parse_instance,
    parse_service_node,
)

log = logging.getLogger("atlas.sidecar.watch")

CONNECTION_RETRY = {"max_tries": -1, "delay": 0.1, "backoff": 1.5, "max_delay": 1.0}


@dataclass
class ViewChanges:
    """What changed in the view since the last `drain()`."""

    services: dict[str, Service | None] = field(default_factory=dict)  # None: gone
    deliberate: set[str] = field(default_factory=set)  # gone on purpose (its guard was bumped)
    # The watermark when the view is complete (every change up to it is in), else None.
    index: int | None = None
    warnings: list[str] = field(default_factory=list)
    resynced: bool = False  # the subtree was read again (a new session or client)
    incomplete: bool = False  # reads are outstanding: nothing was taken, ask again soon


class _RawService:
    """The data of one service node and of its instance nodes (loop thread only)."""

    __slots__ = ("children", "instances", "listed", "meta", "read", "zxid")

    def __init__(self) -> None:
        self.zxid = 0  # max(mzxid, pzxid) of the service node
        self.read = False  # its data has been read at least once
        self.listed = False  # its children have been listed at least once
        self.meta: tuple[HealthCheck | None, int | None, list[str]] = (None, None, [])
        self.children: dict[str, int] = {}  # listed instance node -> mzxid (0: not read yet)
        # Parsed once per change of their node: a change re-parses one instance, not all.
        self.instances: dict[str, tuple[Instance | None, str | None]] = {}

    def index(self) -> int:
        """The index of the latest change seen of this service."""
        return max([self.zxid, *self.children.values()])


class _Watch:
    """The watch bookkeeping of one client; every method runs on kazoo's callback thread."""

    def __init__(
        self, client: KazooClient, layout: Layout, post: Callable[[tuple[Any, ...]], None]
    ) -> None:
        self.client = client
        self.layout = layout
        self.root = layout.services
        self.post = post
        self.outstanding = 0
        self.generation = 0  # bumped by every (re)read of the whole subtree
        self.services: dict[str, int] = {}  # watched service -> generation of its last read
        self.instances: dict[str, set[str]] = {}  # watched service -> watched instance names
        self.children_gen: dict[str, int] = {}  # service -> generation of its last full read
        self.closed = False

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) on the callback thread (thread-safe)."""
        self.client.handler.dispatch_callback(Callback("atlas", fn, args))

    # -- reads -------------------------------------------------------------------------------

    def _read(self, op: str, path: str, *extra: Any) -> None:
        if self.closed:
            return
        self.outstanding += 1
        gen = self.generation
        if op == "get":
            result = self.client.get_async(path, watch=self.on_watch)
        elif op == "children":
            result = self.client.get_children_async(path, watch=self.on_watch, include_data=True)
        elif op == "exists":
            result = self.client.exists_async(path, watch=self.on_watch)
        else:  # "guard": one read, no watch
            result = self.client.get_async(path)

        def done(r: Any) -> None:  # on the completion thread: back onto the callback thread
            self.call(self._done, op, path, gen, r, *extra)

        result.rawlink(done)

    def _done(self, op: str, path: str, gen: int, result: Any, *extra: Any) -> None:
        self.outstanding -= 1
        try:
            if not self.closed:
                self._handle(op, path, gen, result, *extra)
        finally:
            if self.outstanding == 0 and not self.closed:
                self.post(("quiet",))

    def _handle(self, op: str, path: str, gen: int, result: Any, *extra: Any) -> None:
        try:
            value = result.get_nowait()
        except NoNodeError:
            value = None
            missing = True
        except Exception as exc:  # connection loss, session expiry: a resync follows
            log.debug("zookeeper read %s %s failed: %r", op, path, exc)
            if op == "guard":
                self.post(("service_gone", extra[0], None))
            return
        else:
            missing = False
        if op == "guard":
            self.post(("service_gone", extra[0], None if missing else value[1].mzxid))
        elif op == "exists":
            if value is not None:
                self._read("children", self.root)
        elif path == self.root:
            if missing:
                self._root_gone()
            else:
                self._root_children(value[0], value[1], gen)
        elif op == "children":
            if not missing:
                self._service_children(path, value[0], value[1], gen)
        elif missing:
            self._gone(path)
        else:
            self.post(("node", path, value[0], value[1]))

    def _root_children(self, names: list[str], stat: Any, gen: int) -> None:
        self.post(("children", self.root, list(names), stat.pzxid))
        listed = set(names)
        for name in [n for n in self.services if n not in listed]:
            self._service_gone(name)
        for name in names:
            if self.services.get(name, -1) < gen:
                # New, or not read since the subtree was last read again: (re)read it all.
                self.services[name] = gen
                self.instances.setdefault(name, set())
                path = f"{self.root}/{name}"
                self._read("get", path)
                self._read("children", path)

    def _service_children(self, path: str, names: list[str], stat: Any, gen: int) -> None:
        name = path[len(self.root) + 1 :]
        watched = self.instances.get(name)
        if watched is None:
            return  # the service went away meanwhile
        self.post(("children", path, list(names), stat.pzxid))
        # The first list of a generation re-reads every instance (their watches are gone);
        # later ones read only the new instances.
        full = self.children_gen.get(name, -1) < gen
        if full:
            self.children_gen[name] = gen
        watched.intersection_update(names)
        for child in names:
            if full or child not in watched:
                watched.add(child)
                self._read("get", f"{path}/{child}")

    def _root_gone(self) -> None:
        self.post(("gone", self.root))
        for name in list(self.services):
            self._service_gone(name)
        self._read("exists", self.root)

    def _service_gone(self, name: str) -> None:
        if self.services.pop(name, None) is None:
            return
        self.instances.pop(name, None)
        self.children_gen.pop(name, None)
        # Deleted on purpose (its guard bumped in the same transaction) or a wipe? Ask the
        # guard; the loop hears of the service's end together with the answer.
        self._read("guard", self.layout.guard(name), name)

    def _gone(self, path: str) -> None:
        rel = path[len(self.root) + 1 :].split("/")
        if len(rel) == 1:
            self._service_gone(rel[0])
        elif len(rel) == 2:
            watched = self.instances.get(rel[0])
            if watched is not None:
                watched.discard(rel[1])
                # Read the parent: its pzxid is the index of this change, and the answer comes
                # after every other notification of the same transaction (see `drain`).
                self._read("children", f"{self.root}/{rel[0]}")
            self.post(("gone", path))

    # -- events ------------------------------------------------------------------------------

    def on_watch(self, event: WatchedEvent) -> None:
        """A one-shot watch fired (on the callback thread)."""
        if self.closed or event.type == EventType.NONE or event.path is None:
            return  # NONE: kazoo dropping its watches on a disconnection (a resync follows)
        path = event.path
        if path == self.root:
            if event.type == EventType.DELETED:
                self._root_gone()
            elif event.type in (EventType.CHILD, EventType.CREATED):
                self._read("children", self.root)
            return
        rel = path[len(self.root) + 1 :].split("/")
        if event.type == EventType.DELETED:
            self._gone(path)
        elif event.type == EventType.CHANGED:
            if rel[0] in self.services:
                self._read("get", path)
        elif event.type == EventType.CHILD and len(rel) == 1 and rel[0] in self.services:
            self._read("children", path)

    def resync(self) -> None:
        """(Re)read the whole subtree with fresh watches (on start and after a disconnection)."""
        if self.closed:
            return
        self.generation += 1
        self.post(("resync",))
        self._read("children", self.root)

    def close(self) -> None:
        """Stop issuing reads (thread-safe enough: a flag read by the callback thread)."""
        self.closed = True


class _Publisher:
    """Keeps one ephemeral node holding the latest report; runs on its own thread.

    `offer()` (any thread) replaces the report to write; the thread creates the node (again
    after a session loss), or sets it, with blocking kazoo calls that never hold up the loop.
    """

    def __init__(self, source: ZooKeeperSource, path: str) -> None:
        self.source = source
        self.path = path
        self._cond = threading.Condition()
        self._data: bytes | None = None
        self._dirty = False
        self._session: int | None = None  # session id the node was created in
        self._stop = False
        self.writes = 0
        self.errors = 0
        self.takeovers = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="atlas-sidecar-report", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def offer(self, data: bytes) -> None:
        """Publish `data` as soon as possible (thread-safe, never blocks on ZooKeeper)."""
        with self._cond:
            self._data = data
            self._dirty = True
            self._cond.notify()

    def session_changed(self) -> None:
        """The client connected (maybe in a new session): write again (thread-safe)."""
        with self._cond:
            self._dirty = self._data is not None
            self._cond.notify()

    def stop(self) -> None:
        """Stop the thread (the node goes with the session)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def counters(self) -> dict[str, Any]:
        """Writes, errors and takeovers so far (thread-safe)."""
        with self._cond:
            return {
                "writes": self.writes,
                "errors": self.errors,
                "takeovers": self.takeovers,
                "last_error": self.last_error,
            }

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._dirty:
                    self._cond.wait(timeout=5.0)
                if self._stop:
                    return
                data, self._dirty = self._data, False
            if data is None:
                continue
            try:
                self._write(data)
            except Exception as exc:  # counted; retried on the next offer or session change
                with self._cond:
                    self.errors += 1
                    self.last_error = repr(exc)
                    self._dirty = True
                log.debug("report node %s: %r", self.path, exc)
                time.sleep(0.5)

    def _write(self, data: bytes) -> None:
        client = self.source.client()
        if client is None or not client.connected:
            raise ConnectionError("zookeeper not connected")
        session = client.client_id[0] if client.client_id else None
        if self._session is not None and self._session == session:
            try:
                client.set(self.path, data)
                self._count()
                return
            except NoNodeError:
                pass  # deleted by someone: create it again
        try:
            client.create(self.path, data, ephemeral=True, makepath=True)
        except NodeExistsError:
            _, stat = client.get(self.path)
            if stat.ephemeralOwner != session:
                # Left by an earlier session of this host id (a restarted sidecar whose old
                # session has not expired yet), or a second sidecar with the same host id.
                log.warning("report node %s belonged to another session: replacing it", self.path)
                with self._cond:
                    self.takeovers += 1
                client.delete(self.path, version=stat.version)
                client.create(self.path, data, ephemeral=True, makepath=True)
            else:
                client.set(self.path, data)
        self._session = session
        self._count()

    def _count(self) -> None:
        with self._cond:
            self.writes += 1


class ZooKeeperSource:
    """Watches one realm's services and hands the loop the services that changed.

    When the client stays disconnected longer than `rebuild_after_s` (e.g. a server restarted
    with a wiped data dir refuses the old session forever) the client is recreated.

    Thread-safety: `connected`, `initialized`, `client()`, `publish_report()` and `set_listener()`
    (before `start`) may be called from any thread; `start`, `stop`, `maintain` and `drain`
    belong to the loop thread.
    """

    def __init__(
        self,
        hosts: str,
        realm: str,
        rebuild_after_s: float = 15.0,
        client_factory: Callable[[str], KazooClient] | None = None,
        host_id: str | None = None,
        session_timeout_s: float = 10.0,
    ) -> None:
        self.hosts = hosts
        self.layout = Layout(realm)
        self.path = self.layout.services
        self.rebuild_after_s = rebuild_after_s
        self._factory = client_factory or (
            lambda h: KazooClient(
                hosts=h, connection_retry=CONNECTION_RETRY, timeout=session_timeout_s
            )
        )
        self._listener: Callable[[], None] = lambda: None
        self._lock = threading.Lock()  # guards _client/_watch swaps (start, stop, maintain)
        self._client: KazooClient | None = None
        self._watch: _Watch | None = None
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._post_lock = threading.Lock()  # orders posts and their counts
        self._posted = 0  # items posted so far
        self._quiet_at = 0  # items posted up to the last "quiet" one
        self._taken = 0  # items drained so far (loop thread)
        self._initialized = False
        self._connected = False
        self._disconnected_since: float | None = time.monotonic()
        self.rebuilds = 0
        self.reads_applied = 0
        # Loop thread only: the tree and the watermark.
        self._tree: dict[str, _RawService] = {}
        self._root_pzxid = 0
        self._max_index = 0
        self._resyncing = False
        self._incomplete_since: float | None = None
        self._publisher = (
            _Publisher(self, self.layout.sidecar(host_id)) if host_id is not None else None
        )

    # -- any thread --------------------------------------------------------------------------

    def set_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (from a kazoo thread; must not block) on any change or state event."""
        self._listener = listener

    @property
    def connected(self) -> bool:
        """True while the ZooKeeper session is connected."""
        return self._connected

    @property
    def initialized(self) -> bool:
        """True once the whole subtree has been read at least once."""
        return self._initialized

    def client(self) -> KazooClient | None:
        """The current client (it changes when rebuilt)."""
        return self._client

    def resync(self) -> None:
        """Read the whole subtree again (thread-safe; after the loop lost what it drained)."""
        watch = self._watch
        if watch is not None:
            watch.call(watch.resync)

    def publish_report(self, data: bytes) -> None:
        """Write `data` to this sidecar's ephemeral report node (non-blocking, latest wins)."""
        if self._publisher is not None:
            self._publisher.offer(data)

    def report_counters(self) -> dict[str, Any]:
        """The report node's write counters."""
        return self._publisher.counters() if self._publisher is not None else {}

    # -- lifecycle (loop thread) ----------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background) and start watching."""
        with self._lock:
            self._build()
        if self._publisher is not None:
            self._publisher.start()

    def _post(self, client: KazooClient, item: tuple[Any, ...]) -> None:
        if client is not self._client:
            return
        with self._post_lock:
            self._inbox.append(item)
            self._posted += 1
            first = self._posted == self._quiet_at + 1
            if item[0] == "quiet":
                # Every read asked has been answered: a complete view waits in the queue.
                self._quiet_at = self._posted
                self._initialized = True
        if first or item[0] == "quiet":
            # The loop takes views up to a "quiet" item: wake it for those, and once for the
            # first item after one (so it can take an endless stream after a while).
            self._listener()

    def _build(self) -> None:
        client = self._factory(self.hosts)
        watch = _Watch(client, self.layout, lambda item: self._post(client, item))
        self._client, self._watch = client, watch

        def on_state(state: str) -> None:  # kazoo's connection thread: must not block
            if client is not self._client:
                return
            self._connected = state == KazooState.CONNECTED
            if self._connected:
                self._disconnected_since = None
                # kazoo forgot every watch when the connection dropped: read everything again.
                watch.call(watch.resync)
                if self._publisher is not None:
                    self._publisher.session_changed()
            elif self._disconnected_since is None:
                self._disconnected_since = time.monotonic()
            log.info("zookeeper session %s", state)
            self._listener()

        client.add_listener(on_state)
        client.start_async()

    def maintain(self) -> None:
        """Recreate the client after a long disconnection (call periodically)."""
        since = self._disconnected_since
        if since is None or time.monotonic() - since < self.rebuild_after_s:
            return
        log.warning(
            "zookeeper unreachable for %.0fs: recreating the client (session may be unusable)",
            time.monotonic() - since,
        )
        with self._lock:
            self._teardown()
            self._disconnected_since = time.monotonic()
            self.rebuilds += 1
            self._build()

    def _teardown(self) -> None:
        watch, client = self._watch, self._client
        self._watch = self._client = None
        self._connected = False
        if watch is not None:
            watch.close()
        if client is not None:
            try:
                client.stop()
                client.close()
            except Exception as exc:  # a dead client may fail to stop; it is dropped anyway
                log.debug("closing zookeeper client: %r", exc)

    def stop(self) -> None:
        """Stop publishing, close the client (its ephemeral node goes with the session)."""
        if self._publisher is not None:
            self._publisher.stop()
        with self._lock:
            self._teardown()

    # -- the tree (loop thread) --------------------------------------------------------------

    def drain(self, max_incomplete_s: float = 0.5) -> ViewChanges:
        """Apply what the watch posted, up to the last moment every read was answered; return
        the services that changed, parsed.

        Every event leads to a read, and the answer to a read comes after every notification
        the server sent before it, those of the same transaction included: so a view taken
        where nothing is outstanding never shows half a transaction (an instance detached but
        its service's count not yet lowered). Should reads never all be answered (endless
        churn), everything is taken after `max_incomplete_s`.
        """
        changes = ViewChanges()
        dirty: set[str] = set()
        quiet = False
        root = self.path
        with self._post_lock:
            posted, quiet_at = self._posted, self._quiet_at
        take = quiet_at - self._taken
        now = time.monotonic()
        if take <= 0 and posted > self._taken:
            if self._incomplete_since is None:
                self._incomplete_since = now
            if now - self._incomplete_since < max_incomplete_s:
                changes.incomplete = True
                return changes
            take = posted - self._taken
        else:
            self._incomplete_since = None
        self._taken += max(0, take)
        for _ in range(take):
            item = self._inbox.popleft()
            kind = item[0]
            quiet = False
            if kind == "quiet":
                quiet = True
                continue
            if kind == "resync":
                changes.resynced = self._resyncing = True
                continue
            self.reads_applied += 1
            if kind == "service_gone":
                name, guard_mzxid = item[1], item[2]
                raw = self._tree.pop(name, None)
                if raw is not None:
                    dirty.add(name)
                    if guard_mzxid is not None and guard_mzxid > raw.index():
                        changes.deliberate.add(name)
                continue
            path = item[1]
            if path == root:
                if kind == "gone":
                    dirty.update(self._tree)
                    self._tree.clear()
                elif kind == "children":
                    self._root_pzxid = max(self._root_pzxid, item[3])
                    if self._resyncing:
                        # The first list after a resync: what is missing went away while we
                        # were not watching (a new client may never tell it apart).
                        self._resyncing = False
                        listed = set(item[2])
                        for name in [n for n in self._tree if n not in listed]:
                            del self._tree[name]
                            dirty.add(name)
                    # Otherwise a missing service is removed by its `service_gone`, which
                    # follows with its guard's answer.
                    for name in item[2]:
                        self._tree.setdefault(name, _RawService())
                continue
            rel = path[len(root) + 1 :].split("/")
            raw = self._tree.get(rel[0])
            if raw is None:
                continue  # a late answer about a service that went away
            dirty.add(rel[0])
            if len(rel) == 1:
                if kind == "node":
                    raw.meta, raw.read = parse_service_node(rel[0], item[2]), True
                    raw.zxid = max(raw.zxid, item[3].mzxid, item[3].pzxid)
                elif kind == "children":
                    raw.zxid = max(raw.zxid, item[3])
                    raw.listed = True
                    listed = set(item[2])
                    for child in [c for c in raw.children if c not in listed]:
                        del raw.children[child]
                        raw.instances.pop(child, None)
                    for child in item[2]:
                        raw.children.setdefault(child, 0)
            elif len(rel) == 2:
                if kind == "node":
                    raw.children[rel[1]] = item[3].mzxid
                    raw.instances[rel[1]] = parse_instance(rel[1], item[2])
                elif kind == "gone":
                    raw.children.pop(rel[1], None)
                    raw.instances.pop(rel[1], None)
        for name in dirty:
            raw = self._tree.get(name)
            if raw is None or not (raw.read and raw.listed):
                changes.services[name] = None  # gone, or not read yet: not in the view
                continue
            index = raw.index()
            self._max_index = max(self._max_index, index)
            if not is_service_name(name):
                changes.warnings.append(f"service node {name!r}: not a valid service name, ignored")
                changes.services[name] = None
                continue
            health, declared, warnings = raw.meta
            changes.warnings.extend(warnings)
            instances = []
            # A child not read yet appears with its data on its own answer.
            for inst, warning in raw.instances.values():
                if warning:
                    changes.warnings.append(f"service {name!r}: {warning}")
                if inst is not None:
                    instances.append(inst)
            service = Service(name, health, declared=declared, index=index)
            changes.services[name] = service.with_instances(tuple(instances))
        self._max_index = max(self._max_index, self._root_pzxid)
        if quiet:
            # Everything asked has been answered, in the server's order: the tree is the
            # server's subtree as of its last answer, so every change up to the largest index
            # in it is in.
            changes.index = self._max_index
        return changes
