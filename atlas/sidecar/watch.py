"""ZooKeeper side: a read-only tree cache of /atlas/<realm>/services, rebuilt when needed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.recipe.cache import TreeCache, TreeEvent

from atlas.contract import Layout
from atlas.sidecar.model import Snapshot, build_snapshot

log = logging.getLogger("atlas.sidecar.watch")

CONNECTION_RETRY = {"max_tries": -1, "delay": 0.1, "backoff": 1.5, "max_delay": 1.0}


class _ReadOnlyTreeCache(TreeCache):
    """kazoo's TreeCache without the `ensure_path` of its root: a sidecar never writes."""

    def start(self) -> None:
        """Start watching; a missing root is watched with `exists` until it appears."""
        if self._state != self.STATE_LATENT:  # type: ignore[has-type]
            raise RuntimeError("tree cache already started")
        self._state = self.STATE_STARTED
        self._task_thread = self._client.handler.spawn(self._do_background)
        self._client.add_listener(self._session_watcher)
        if self._client.connected:
            self._in_background(self._root.on_created)


class ZooKeeperSource:
    """Watches one realm's services; tells a listener about every change; snapshots on demand.

    When the client stays disconnected longer than `rebuild_after_s` (e.g. a server restarted
    with a wiped data dir refuses the old session forever) the client is recreated.
    """

    def __init__(
        self,
        hosts: str,
        realm: str,
        rebuild_after_s: float = 15.0,
        client_factory: Callable[[str], KazooClient] | None = None,
    ) -> None:
        self.hosts = hosts
        self.path = Layout(realm).services
        self.rebuild_after_s = rebuild_after_s
        self._factory = client_factory or (
            lambda h: KazooClient(hosts=h, connection_retry=CONNECTION_RETRY, timeout=10.0)
        )
        self._listener: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._client: KazooClient | None = None
        self._cache: _ReadOnlyTreeCache | None = None
        self._initialized = False
        self._connected = False
        self._disconnected_since: float | None = time.monotonic()
        self.rebuilds = 0

    def set_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (from a kazoo thread; must not block) on any change or state event."""
        self._listener = listener

    @property
    def connected(self) -> bool:
        """True while the ZooKeeper session is connected."""
        return self._connected

    @property
    def initialized(self) -> bool:
        """True once the cache has read the whole subtree at least once."""
        return self._initialized

    def start(self) -> None:
        """Connect (in the background) and start the cache."""
        with self._lock:
            self._build()

    def _build(self) -> None:
        client = self._factory(self.hosts)
        cache = _ReadOnlyTreeCache(client, self.path)
        self._client, self._cache = client, cache
        self._initialized = False

        def on_state(state: str) -> None:
            if client is not self._client:
                return
            self._connected = state == KazooState.CONNECTED
            if self._connected:
                self._disconnected_since = None
            elif self._disconnected_since is None:
                self._disconnected_since = time.monotonic()
            log.info("zookeeper session %s", state)
            self._listener()

        def on_event(event: Any) -> None:
            if cache is not self._cache:
                return
            if event.event_type == TreeEvent.INITIALIZED:
                self._initialized = True
            self._listener()

        def on_fault(exc: Exception) -> None:
            log.warning("zookeeper cache error: %r", exc)

        client.add_listener(on_state)
        cache.listen(on_event)
        cache.listen_fault(on_fault)
        cache.start()
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
        cache, client = self._cache, self._client
        self._cache = self._client = None
        self._connected = False
        if cache is not None:
            cache.close()
        if client is not None:
            try:
                client.stop()
                client.close()
            except Exception as exc:  # a dead client may fail to stop; it is dropped anyway
                log.debug("closing zookeeper client: %r", exc)

    def stop(self) -> None:
        """Close the cache and the client."""
        with self._lock:
            self._teardown()

    def snapshot(self) -> tuple[Snapshot, list[str]]:
        """Read the cached subtree into an immutable snapshot (+ warnings about garbage nodes)."""
        cache = self._cache
        if cache is None:
            return Snapshot(), []
        for _ in range(20):
            try:
                return build_snapshot(self._raw(cache))
            except RuntimeError:
                # The cache's worker thread mutated a dict while we walked it; read again.
                time.sleep(0.001)
        return build_snapshot(self._raw(cache))

    def _raw(self, cache: TreeCache) -> dict[str, tuple[bytes | None, dict[str, bytes | None]]]:
        raw: dict[str, tuple[bytes | None, dict[str, bytes | None]]] = {}
        for name in cache.get_children(self.path, default=frozenset()):
            spath = f"{self.path}/{name}"
            node = cache.get_data(spath)
            children: dict[str, bytes | None] = {}
            for child in cache.get_children(spath, default=frozenset()):
                cnode = cache.get_data(f"{spath}/{child}")
                if cnode is not None:  # not read yet: appears with its data on the next event
                    children[child] = cnode.data
            raw[name] = (node.data if node is not None else None, children)
        return raw
