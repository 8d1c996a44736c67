"""The in-memory view of a realm, fed by ZooKeeper watches (kazoo's TreeCache pattern).

Threads: the owner thread (`atlas-view`) owns every piece of mutable state: the working copy
of the znodes, the outstanding fetches, the barriers, the epoch. kazoo's threads only post to
it. Readers get immutable `Snapshot`s (`snapshot`), published by the owner. Each public method
says whether it is thread-safe.

What "the view has reached N" means. kazoo reads one session's packets in wire order, and
ZooKeeper sends the notification of a change to a watched node before the reply to any later
request. Watch notifications go to kazoo's callback queue at once; replies (and the view's
fetch results) reach it only through kazoo's completion thread, so the owner relays every
result through the callback queue too: in the owner's queue, every item is then preceded by
every notification that preceded it on the wire. A *barrier* reads `client.last_zxid` (the
zxid of the last reply received: every notification of a change up to it is already in the
callback queue) and posts a marker through the callback queue. When the owner takes the marker,
every such notification was handled and has issued its re-fetch; once every fetch issued before
the marker is answered (a fetch issued while handling another's result inherits its origin),
the view reflects every change up to that zxid: that is the index it publishes. A reader that
needs more (`min_index`) asks for a `sync`, whose reply moves `last_zxid` past what the server
had committed.

Watches: the children of `services/` and of each service node, the data of every service,
instance and config stamp node, the token revocation stamp. Each reconnect, new session or new
client (the mirror replaces one a wiped server refuses) starts a new epoch: everything is
fetched again and the view is not current until that load has passed a barrier and, when a
`truth` is given, been compared with DynamoDB's list of services (a wiped ZooKeeper that the
reconciler has not rebuilt yet shows services missing: those are read from DynamoDB until the
view has them).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import Callback, EventType, WatchedEvent, ZnodeStat

from atlas.contract import Layout
from atlas.registry.records import Instance

from .decode import decode_instance, decode_number, decode_service
from .index import Expectation
from .snapshot import INDEX, SERVICES, ServiceEntry, Snapshot, config_key, instances_key

log = logging.getLogger(__name__)

#: Truth as the view compares itself with it: service name -> (version, config_version).
Truth = Callable[[], Mapping[str, tuple[int, int]]]

PENDING_MAX_S = 60.0  # an unpublished write not seen by then is forgotten if the mirror is clean
RECHECK_S = 1.0  # while some services disagree with DynamoDB, compare again this often
BUMP_RETRIES = 16

_STOP = object()


class TooManyWaiters(Exception):
    """The process already holds its maximum of waiting requests."""


@dataclass
class _Service:
    """The working copy of one service's znodes (owner thread only)."""

    data: bytes | None = None
    stat: ZnodeStat | None = None
    children: set[str] | None = None
    pzxid: int = 0
    # iid -> (mzxid, decoded record or None)
    instances: dict[str, tuple[int, Instance | None]] = field(default_factory=dict)


@dataclass
class _Pending:
    since: float
    checks: list[Expectation]


class ZkView:
    """Services, instances, config stamps and the revocation stamp of one realm, in memory."""

    def __init__(
        self,
        realm: str,
        client: Callable[[], KazooClient],
        *,
        subscribe: Callable[[Callable[[], None]], None] | None = None,
        truth: Truth | None = None,
        dirty: Callable[[], Mapping[str, Any]] | None = None,
        max_waiters: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.layout = Layout(realm)
        # Told of every error the view catches and lives on with (the app counts them).
        self._on_error: Callable[[str], None] = on_error or (lambda where: None)
        self._client_source = client
        self._subscribe = subscribe
        self._truth = truth
        self._dirty = dirty or dict
        self.max_waiters = max_waiters
        self.clock = clock
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Owned by the owner thread.
        self._client: KazooClient | None = None
        self._connected = False
        self._epoch = 0
        self._seq = 0
        self._origins: dict[int, int] = {}  # origin -> fetches outstanding
        self._barriers: list[tuple[int, int]] = []  # (seq taken, zxid) not yet complete
        self._barrier_posted = False
        self._activity = False
        self._want = 0  # the highest index a reader waits for
        self._sync_posted = False
        self._index = 0
        self._loaded = False
        self._verified = False
        self._checking = False
        self._unverified: dict[str, tuple[int, int] | None] = {}
        self._names: set[str] = set()
        self._root_pzxid = 0
        self._work: dict[str, _Service] = {}
        self._stamps: dict[str, tuple[int | None, int]] = {}  # name -> (version, mzxid)
        self._tokens: tuple[int | None, int] = (None, 0)  # (revocations, mzxid)
        self._changed: set[str] = set()
        self._tokens_changed = False
        self._entries: dict[str, ServiceEntry] = {}
        self._behind_since: float | None = None
        self._catchup: set[tuple[str, ...]] = set()
        self._loads = 0
        # Shared with request threads, under _lock.
        self._lock = threading.Lock()
        self._acked = 0
        self._pending: dict[str, _Pending] = {}
        self._waiters: dict[tuple[str, ...], set[threading.Event]] = {}
        self._nwaiters = 0
        self.counters: dict[str, int] = {
            "loads": 0,
            "events": 0,
            "fetches": 0,
            "barriers": 0,
            "syncs": 0,
            "publishes": 0,
            "truth_checks": 0,
            "truth_mismatches": 0,
            "errors": 0,
            "waiters_rejected": 0,
            "revocations_published": 0,
        }
        # Published by the owner; read by anyone.
        self._snapshot: Snapshot | None = None
        self._state = "stopped"
        self._status: dict[str, Any] = {"state": "stopped"}

    # ------------------------------------------------------------------ wiring

    def start(self) -> None:
        """Start the owner thread and attach to the current client. Not thread-safe: once."""
        if self._thread is not None:
            return
        self._state = "connecting"
        if self._subscribe is not None:
            self._subscribe(lambda: self._post(("client",)))
        self._thread = threading.Thread(target=self._own, name="atlas-view", daemon=True)
        self._thread.start()
        self._post(("client",))

    def stop(self) -> None:
        """Stop the owner thread and wake every waiter. Not thread-safe: once."""
        self._stopped = True
        self._tasks.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._state = "stopped"
        self._snapshot = None
        self._wake_all()

    def _post(self, item: Any) -> None:
        self._tasks.put(item)

    # ------------------------------------------------------------------ readers

    @property
    def snapshot(self) -> Snapshot | None:
        """The current snapshot, or None while the view is not current (disconnected,
        loading, not yet compared with DynamoDB). Thread-safe."""
        return self._snapshot if self._state == "current" else None

    @property
    def state(self) -> str:
        """stopped, connecting, loading, verifying, current or disconnected. Thread-safe."""
        return self._state

    @property
    def acked_index(self) -> int:
        """The highest zxid of a write this process acknowledged. Thread-safe."""
        return self._acked

    def status(self) -> dict[str, Any]:
        """The view's state for /v1/info: index, lag behind ZooKeeper, load state. Thread-safe."""
        out = dict(self._status)
        out["state"] = self._state
        client = self._client
        seen = int(getattr(client, "last_zxid", 0) or 0) if client is not None else 0
        index = out.get("index", 0)
        out["zookeeper_zxid_seen"] = seen
        out["lag_zxids"] = max(0, seen - index) if self._state == "current" else None
        since = out.pop("behind_since", None)
        out["behind_s"] = round(self.clock() - since, 3) if since is not None else 0.0
        with self._lock:
            out["waiters"] = self._nwaiters
            out["pending_services"] = len(self._pending)
        out["counters"] = dict(self.counters)
        return out

    def pending(self, service: str) -> bool:
        """True while this process has a write to `service` the view does not show (it was
        not published to ZooKeeper). Thread-safe."""
        return service in self._pending

    def any_pending(self) -> bool:
        """True while this process has any write the view does not show. Thread-safe."""
        return bool(self._pending)

    def revocation_generation(self) -> tuple[int, int] | None:
        """Changes whenever a token is revoked anywhere (or the session changes); None while
        the view is not current, so that token caches fall back to a short TTL. Thread-safe."""
        snap = self.snapshot
        return (snap.epoch, snap.tokens_index) if snap is not None else None

    # --------------------------------------------------------------- the writes

    def note_write(self, zxid: int) -> None:
        """A write this process acknowledges was published at `zxid`. Thread-safe."""
        with self._lock:
            if zxid > self._acked:
                self._acked = zxid

    def note_unpublished(self, service: str, shows: Expectation) -> None:
        """A write to `service` was not published: serve the service from DynamoDB until
        the view shows it (`shows`). Thread-safe."""
        with self._lock:
            p = self._pending.get(service)
            if p is None:
                self._pending[service] = _Pending(self.clock(), [shows])
            else:
                p.since = self.clock()
                p.checks.append(shows)

    def bump_revocations(self) -> int | None:
        """Bump the revocation stamp (`{"revocations": n}`); the zxid that published it, or
        None when ZooKeeper cannot be reached. Thread-safe (runs in the caller's thread)."""
        client = self._client or self._client_source()
        if client is None or client.state != KazooState.CONNECTED:
            return None
        path = self.layout.tokens
        for _ in range(BUMP_RETRIES):
            try:
                data, stat = client.get(path)
            except NoNodeError:
                try:
                    client.create(path, b'{"revocations":1}')
                except NodeExistsError:
                    continue
                found = client.exists(path)
                self.counters["revocations_published"] += 1
                return int(found.mzxid) if found is not None else None
            except Exception:
                log.warning("could not read the revocation stamp", exc_info=True)
                self._on_error("view_revocation_read")
                return None
            n = (decode_number(data, "revocations") or 0) + 1
            try:
                new = client.set(path, b'{"revocations":%d}' % n, version=stat.version)
            except BadVersionError:
                continue
            except Exception:
                log.warning("could not publish a token revocation", exc_info=True)
                self._on_error("view_revocation_publish")
                return None
            self.counters["revocations_published"] += 1
            return int(new.mzxid)
        return None

    # ------------------------------------------------------------------ waiting

    def wait(
        self,
        key: tuple[str, ...],
        ready: Callable[[Snapshot], bool],
        timeout: float,
        need: int = 0,
    ) -> Snapshot | None:
        """Block until the current snapshot satisfies `ready` (returns it), or `timeout`
        passes (returns the current snapshot, or None). `need` is an index the caller wants
        the view to reach: the owner then makes ZooKeeper tell it how far it is.

        Thread-safe. Raises TooManyWaiters past `max_waiters` concurrent waits.
        """
        snap = self.snapshot
        if snap is not None and ready(snap):
            return snap
        if timeout <= 0:
            return snap
        with self._lock:
            if self._nwaiters >= self.max_waiters:
                self.counters["waiters_rejected"] += 1  # under the lock: request threads
                raise TooManyWaiters()
            self._nwaiters += 1
        if need > 0:
            self._post(("want", need))
        deadline = self.clock() + timeout
        try:
            while True:
                event = threading.Event()
                with self._lock:
                    self._waiters.setdefault(key, set()).add(event)
                try:
                    snap = self.snapshot  # again, now that a publish cannot be missed
                    if snap is not None and ready(snap):
                        return snap
                    remaining = deadline - self.clock()
                    if remaining <= 0 or self._stopped:
                        return snap
                    event.wait(remaining)
                finally:
                    with self._lock:
                        waiting = self._waiters.get(key)
                        if waiting is not None:
                            waiting.discard(event)
                            if not waiting:
                                del self._waiters[key]
        finally:
            with self._lock:
                self._nwaiters -= 1

    def _wake(self, keys: Iterable[tuple[str, ...]]) -> None:
        with self._lock:
            events = [e for k in keys for e in self._waiters.get(k, ())]
        for e in events:
            e.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [e for s in self._waiters.values() for e in s]
        for e in events:
            e.set()

    # ------------------------------------------------------------- the owner

    def _own(self) -> None:
        while True:
            items: list[Any] = []
            try:
                items.append(self._tasks.get(timeout=RECHECK_S if self._want_timer() else None))
                while True:
                    items.append(self._tasks.get_nowait())
            except queue.Empty:
                pass
            if any(i is _STOP for i in items):
                self._detach()
                return
            try:
                self._round(items)
            except Exception:  # the owner must outlive any single failure
                self.counters["errors"] += 1
                self._on_error("view_round")
                log.exception("view round failed; reloading")
                self._reload()

    def _want_timer(self) -> bool:
        return bool(self._pending) or bool(self._unverified)

    def run_once(self, items: list[Any]) -> None:
        """Handle posted items as the owner would. Owner thread only (tests drive it)."""
        self._round(items)

    def _round(self, items: list[Any]) -> None:
        for item in items:
            self._seq += 1
            self._handle(item)
        self._complete_barriers()
        self._check_pending()
        if self._unverified and self._loaded and not self._checking:
            self._start_truth_check()
        self._maybe_barrier()

    def _handle(self, item: Any) -> None:
        kind = item[0]
        if kind == "watch":
            self.counters["events"] += 1
            self._activity = True
            self._on_event(item[1])
        elif kind == "result":
            _, epoch, origin, what, path, result = item
            if epoch != self._epoch:
                return
            self._origins[origin] -= 1
            if not self._origins[origin]:
                del self._origins[origin]
            self._activity = True
            self._on_result(origin, what, path, result)
        elif kind == "barrier":
            _, epoch, zxid = item
            if epoch == self._epoch:
                self._barrier_posted = False
                self._barriers.append((self._seq, zxid))
        elif kind == "synced":
            if item[1] == self._epoch:
                self._sync_posted = False
                self._activity = True
                client = self._client
                if client is not None and self._want > int(client.last_zxid or 0):
                    self._want = 0  # not an index of this ZooKeeper: its waiters time out
        elif kind == "want":
            self._want = max(self._want, item[1])
            self._activity = True
        elif kind == "state":
            _, client, state = item
            if client is self._client:
                self._on_state(state)
        elif kind == "client":
            self._check_client()
        elif kind == "truth":
            self._on_truth(item[1], item[2])
        elif kind == "call":
            item[1]()

    # ---------------------------------------------------------- connection

    def _listener(self, client: KazooClient) -> Callable[[str], None]:
        def listener(state: str) -> None:  # kazoo's connection thread: post, never block
            self._post(("state", client, state))

        return listener

    def _check_client(self) -> None:
        client = self._client_source()
        if client is self._client:
            if client is not None and client.state == KazooState.CONNECTED and not self._connected:
                self._on_state(KazooState.CONNECTED)
            return
        self._detach()
        self._client = client
        if client is None:
            return
        self._listen = self._listener(client)
        client.add_listener(self._listen)
        self._on_state(client.state)

    def _detach(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.remove_listener(self._listen)
        self._client = None
        self._not_current("connecting")

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            if not self._connected:
                self._connected = True
                self._reload()
        else:
            self._connected = False
            self._not_current("disconnected")

    def _not_current(self, state: str) -> None:
        if state != "loading":
            self._connected = False
        self._epoch += 1  # results of the old session's fetches are dropped
        self._origins.clear()
        self._barriers.clear()
        self._barrier_posted = self._sync_posted = False
        self._loaded = self._verified = False
        self._set_state(state)

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        was_current = self._state == "current"
        self._state = state
        self._publish_status()
        if was_current or state == "current":
            self._wake_all()  # waiters re-check: they fall back, or are served

    def _reload(self) -> None:
        """Start a new epoch: fetch everything again (owner thread)."""
        self._not_current("loading")
        self._connected = self._client is not None and self._client.state == KazooState.CONNECTED
        if not self._connected:
            self._set_state("disconnected")
            return
        self.counters["loads"] += 1
        self._loads += 1
        self._names = set()
        self._work = {}
        self._stamps = {}
        self._tokens = (None, 0)
        self._entries = {}
        self._changed = set()
        self._unverified = {}
        self._checking = False
        self._want = 0
        origin = self._seq
        self._fetch(origin, "root", self.layout.services)
        self._fetch(origin, "stamps", self.layout.config)
        self._fetch(origin, "tokens", self.layout.tokens)
        self._activity = True

    # -------------------------------------------------------------- fetching

    def _fetch(self, origin: int, what: str, path: str) -> None:
        client = self._client
        if client is None:
            return
        self._origins[origin] = self._origins.get(origin, 0) + 1
        self.counters["fetches"] += 1
        if what in ("root", "stamps", "children"):
            result = client.get_children_async(path, watch=self._on_watch, include_data=True)
        else:
            result = client.get_async(path, watch=self._on_watch)
        epoch = self._epoch
        handler = client.handler

        def relay(r: Any) -> None:  # kazoo's completion thread: through the callback queue
            item = ("result", epoch, origin, what, path, r)
            handler.dispatch_callback(Callback("view", self._post, (item,)))

        result.rawlink(relay)

    def _on_watch(self, event: WatchedEvent) -> None:
        """A watch fired (kazoo's callback thread): post it. One bound method for every
        path, so kazoo's watcher sets hold it once per path."""
        self._post(("watch", event))

    def _split(self, path: str) -> tuple[str, ...] | None:
        services = self.layout.services + "/"
        config = self.layout.config + "/"
        if path.startswith(services):
            return ("services", *path[len(services) :].split("/"))
        if path.startswith(config):
            return ("config", path[len(config) :])
        return None

    def _on_event(self, event: WatchedEvent) -> None:
        origin = self._seq
        path = event.path
        if path == self.layout.services:
            self._fetch(origin, "root", path)
        elif path == self.layout.config:
            self._fetch(origin, "stamps", path)
        elif path == self.layout.tokens:
            self._fetch(origin, "tokens", path)
        else:
            parts = self._split(path)
            if parts is None:
                return
            if parts[0] == "config":
                self._fetch(origin, "stamp", path)
            elif len(parts) == 2:
                if event.type == EventType.CHILD:
                    self._fetch(origin, "children", path)
                elif event.type == EventType.DELETED:
                    self._drop_service(parts[1])
                    self._fetch(origin, "root", self.layout.services)
                else:
                    self._fetch(origin, "service", path)
            elif len(parts) == 3:
                if event.type == EventType.DELETED:
                    self._drop_instance(parts[1], parts[2])
                    self._fetch(origin, "children", self.layout.service(parts[1]))
                else:
                    self._fetch(origin, "instance", path)

    def _drop_service(self, name: str) -> None:
        if self._work.pop(name, None) is not None:
            self._changed.add(name)
        self._names.discard(name)

    def _drop_instance(self, name: str, iid: str) -> None:
        w = self._work.get(name)
        if w is not None and w.instances.pop(iid, None) is not None:
            self._changed.add(name)

    def _on_result(self, origin: int, what: str, path: str, result: Any) -> None:
        try:
            value = result.get_nowait() if hasattr(result, "get_nowait") else result.get()
        except NoNodeError:
            self._on_missing(origin, what, path)
            return
        except Exception as exc:
            # Connection loss and friends: the state listener starts the next epoch. Anything
            # else leaves a hole in the view, which only a new load can fill.
            if self._client is not None and self._client.state == KazooState.CONNECTED:
                log.warning("view fetch of %s failed (%r); reloading", path, exc)
                self.counters["errors"] += 1
                self._on_error("view_fetch")
                self._reload()
            return
        if what == "root":
            children, stat = value
            self._root_pzxid = int(stat.pzxid)
            names = set(children)
            for gone in self._names - names:
                self._drop_service(gone)
            for name in sorted(names - self._names):
                self._work[name] = _Service()
                self._fetch(origin, "service", self.layout.service(name))
                self._fetch(origin, "children", self.layout.service(name))
            self._names = names
        elif what == "stamps":
            children, _ = value
            for gone in set(self._stamps) - set(children):
                del self._stamps[gone]
                self._changed.add(gone)
            for name in children:
                if name not in self._stamps:
                    self._stamps[name] = (None, 0)
                    self._fetch(origin, "stamp", self.layout.config_stamp(name))
        elif what == "exists":
            if value is not None:  # created meanwhile: read it
                kind = {self.layout.services: "root", self.layout.config: "stamps"}
                self._fetch(origin, kind.get(path, "tokens"), path)
        elif what == "tokens":
            data, stat = value
            self._tokens = (decode_number(data, "revocations"), int(stat.mzxid))
            self._tokens_changed = True
        else:
            parts = self._split(path)
            if parts is None:
                return
            if what == "stamp":
                data, stat = value
                self._stamps[parts[1]] = (decode_number(data, "version"), int(stat.mzxid))
                self._changed.add(parts[1])
                return
            w = self._work.get(parts[1])
            if w is None:
                return  # the service is gone meanwhile
            self._changed.add(parts[1])
            if what == "service":
                data, stat = value
                if w.stat is None or stat.mzxid >= w.stat.mzxid:
                    w.data, w.stat = data, stat
            elif what == "children":
                children, stat = value
                w.children = set(children)
                w.pzxid = int(stat.pzxid)
                for gone in set(w.instances) - w.children:
                    del w.instances[gone]
                for iid in sorted(w.children - set(w.instances)):
                    w.instances[iid] = (0, None)
                    self._fetch(origin, "instance", self.layout.instance(parts[1], iid))
            elif what == "instance":
                data, stat = value
                known = w.instances.get(parts[2])
                if known is not None and stat.mzxid >= known[0]:
                    w.instances[parts[2]] = (int(stat.mzxid), decode_instance(parts[1], data))

    def _on_missing(self, origin: int, what: str, path: str) -> None:
        client = self._client
        if what in ("root", "stamps", "tokens"):
            if what == "root":
                for name in list(self._names):
                    self._drop_service(name)
                self._names = set()
            elif what == "stamps":
                self._changed.update(self._stamps)
                self._stamps = {}
            else:
                self._tokens = (None, 0)
                self._tokens_changed = True
            if client is not None:  # watch for its creation
                self._origins[origin] = self._origins.get(origin, 0) + 1
                epoch = self._epoch
                handler = client.handler

                def relay(r: Any) -> None:
                    item = ("result", epoch, origin, "exists", path, r)
                    handler.dispatch_callback(Callback("view", self._post, (item,)))

                client.exists_async(path, watch=self._on_watch).rawlink(relay)
            return
        if what == "exists":
            return
        parts = self._split(path)
        if parts is None:
            return
        if what == "stamp":
            if self._stamps.pop(parts[1], None) is not None:
                self._changed.add(parts[1])
        elif what in ("service", "children"):
            self._drop_service(parts[1])
        elif what == "instance":
            self._drop_instance(parts[1], parts[2])

    # ------------------------------------------------------------- barriers

    def _maybe_barrier(self) -> None:
        client = self._client
        if client is None or not self._connected or self._barrier_posted:
            return
        if self._want > int(client.last_zxid or 0) and not self._sync_posted:
            # ZooKeeper has told us less than a reader waits for: ask it how far it is.
            self._sync_posted = True
            self.counters["syncs"] += 1
            epoch = self._epoch
            handler = client.handler

            def synced(_: Any) -> None:
                handler.dispatch_callback(Callback("view", self._post, (("synced", epoch),)))

            client.sync_async(self.layout.root).rawlink(synced)
        if not self._activity:
            return
        self._activity = False
        self._barrier_posted = True
        self.counters["barriers"] += 1
        # Read the zxid first: every notification up to it is in the callback queue already.
        zxid = int(client.last_zxid or 0)
        item = ("barrier", self._epoch, zxid)
        client.handler.dispatch_callback(Callback("view", self._post, (item,)))
        if self._behind_since is None:
            self._behind_since = self.clock()

    def _complete_barriers(self) -> None:
        if not self._barriers:
            return
        oldest = min(self._origins) if self._origins else None
        done = [(s, z) for s, z in self._barriers if oldest is None or oldest >= s]
        if not done:
            return
        self._barriers = [(s, z) for s, z in self._barriers if not (oldest is None or oldest >= s)]
        zxid = max(z for _, z in done)
        if zxid > self._index or not self._loaded:
            self._index = zxid
        if not self._barriers and not self._barrier_posted:
            self._behind_since = None
        first = not self._loaded
        self._loaded = True
        self._publish()
        if first:
            if self._index < self._acked:
                # ZooKeeper's history restarted below what we acknowledged (a wiped server):
                # the comparison with DynamoDB below stands in for those indexes.
                with self._lock:
                    self._acked = 0
            self._start_truth_check()

    # ----------------------------------------------------------- publishing

    def _build(self, name: str) -> ServiceEntry | None:
        w = self._work.get(name)
        if w is None or w.data is None or w.stat is None:
            return None  # discovered after the index: not part of this state yet
        stamp_version, stamp_zxid = self._stamps.get(name, (None, 0))
        decoded = decode_service(w.data, stamp_version or 0)
        instances: list[Instance] = []
        complete = decoded is not None and w.children is not None and stamp_version is not None
        index = max(int(w.stat.mzxid), w.pzxid)
        for iid in sorted(w.instances):
            mzxid, record = w.instances[iid]
            if mzxid == 0:
                complete = False  # appeared after the index
                continue
            index = max(index, mzxid)
            if record is None or record.id != iid:
                complete = False
                continue
            instances.append(record)
        if decoded is not None and decoded[1] != len(instances):
            complete = False
        return ServiceEntry(
            name=name,
            service=decoded[0] if decoded is not None else None,
            instances=tuple(instances),
            complete=complete,
            index=index,
            service_index=int(w.stat.mzxid),
            config_version=stamp_version,
            config_index=max(stamp_zxid, int(w.stat.czxid)),
            by_id={i.id: i for i in instances},
        )

    def _publish(self) -> None:
        changed = self._changed
        self._changed = set()
        entries = self._entries if not changed else dict(self._entries)
        keys: set[tuple[str, ...]] = {INDEX}
        for name in changed:
            e = self._build(name)
            old = entries.pop(name, None)
            if e is not None:
                entries[name] = e
            keys.add(instances_key(name))
            keys.add(config_key(name))
            if (e is None) != (old is None) or (
                e is not None and old is not None and e.service != old.service
            ):
                keys.add(SERVICES)
        self._entries = entries
        self._check_unverified(entries)
        services_index = max([self._root_pzxid, *(e.service_index for e in entries.values())])
        self._tokens_changed = False
        self.counters["publishes"] += 1
        self._snapshot = Snapshot(
            index=self._index,
            epoch=self._epoch,
            services=entries,
            names=tuple(sorted(entries)),
            services_index=services_index,
            unverified=frozenset(self._unverified) if self._verified else frozenset(entries),
            incomplete=frozenset(n for n, e in entries.items() if not e.complete),
            revocations=self._tokens[0],
            tokens_index=self._tokens[1],
        )
        if self._loaded and (self._verified or self._truth is None):
            self._set_state("current")
        elif self._loaded:
            self._set_state("verifying")
        self._publish_status()
        # A resource whose change is newer than the index is not "reached" yet: wake its
        # waiters again once the index catches up with it.
        snap = self._snapshot
        for key in keys - {INDEX}:
            if snap.resource_index(key) > snap.index:
                self._catchup.add(key)
        ready = {k for k in self._catchup if snap.resource_index(k) <= snap.index}
        self._catchup -= ready
        self._wake(keys | ready)

    def _publish_status(self) -> None:
        snap = self._snapshot
        self._status = {
            "index": snap.index if snap is not None else 0,
            "epoch": self._epoch,
            "services": len(snap.services) if snap is not None else 0,
            "unverified": len(self._unverified),
            "behind_since": self._behind_since,
            "loads": self._loads,
        }

    # --------------------------------------------------- pending writes, truth

    def _check_pending(self) -> None:
        if not self._pending:
            return
        snap = self._snapshot
        dirty = self._dirty()
        now = self.clock()
        with self._lock:
            for name, p in list(self._pending.items()):
                entry = snap.entry(name) if snap is not None and self._loaded else None
                if self._loaded and snap is not None:
                    p.checks = [c for c in p.checks if not c(entry)]
                if not p.checks or (now - p.since > PENDING_MAX_S and name not in dirty):
                    del self._pending[name]

    def _start_truth_check(self) -> None:
        if self._truth is None:
            self._verified = True
            if self._loaded:
                self._set_state("current")
            return
        if self._checking:
            return
        self._checking = True
        self.counters["truth_checks"] += 1
        epoch = self._epoch
        truth = self._truth
        delay = RECHECK_S if self._verified else 0.0

        def check() -> None:
            if delay:
                time.sleep(delay)
            try:
                result: Any = dict(truth())
            except Exception as exc:  # DynamoDB unreachable: try again later
                result = exc
            self._post(("truth", epoch, result))

        threading.Thread(target=check, name="atlas-view-truth", daemon=True).start()

    def _on_truth(self, epoch: int, result: Any) -> None:
        if epoch != self._epoch:
            return
        self._checking = False
        if isinstance(result, Exception):
            log.warning("view: comparing with DynamoDB failed: %r", result)
            self._checking = True
            epoch_now = self._epoch

            def later() -> None:
                time.sleep(RECHECK_S)
                self._post(("call", lambda: self._retry_truth(epoch_now)))

            threading.Thread(target=later, daemon=True).start()
            return
        snap = self._snapshot
        entries = snap.services if snap is not None else {}
        unverified: dict[str, tuple[int, int] | None] = {}
        for name, (version, config_version) in result.items():
            unverified[name] = (version, config_version)
        for name in entries:
            if name not in result:
                unverified[name] = None
        self._unverified = unverified
        self._verified = True
        self._check_unverified(entries)
        if self._unverified:
            self.counters["truth_mismatches"] += 1
            log.warning(
                "view: %d services differ from DynamoDB (ZooKeeper behind, or being rebuilt); "
                "they are read from DynamoDB until the view has them",
                len(self._unverified),
            )
        self._publish()

    def _retry_truth(self, epoch: int) -> None:
        if epoch == self._epoch:
            self._checking = False
            self._start_truth_check()

    def _check_unverified(self, entries: Mapping[str, ServiceEntry]) -> None:
        """Drop the services whose view now shows what DynamoDB had (or newer)."""
        for name, wanted in list(self._unverified.items()):
            e = entries.get(name)
            if wanted is None:
                # Absent from DynamoDB when compared: compare again (it may be new since).
                continue
            if (
                e is not None
                and e.service is not None
                and e.service.version >= wanted[0]
                and (e.config_version or 0) >= wanted[1]
            ):
                del self._unverified[name]
