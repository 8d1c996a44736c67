"""The sidecar loop: snapshot → guard → runtime ops or checked, paced reload → status."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from atlas.sidecar.haproxy import HAProxyError, write_atomic
from atlas.sidecar.model import Snapshot
from atlas.sidecar.plan import guard, plan
from atlas.sidecar.render import RenderOptions, render, server_name
from atlas.sidecar.timing import Backoff, Debouncer, ReloadPacer

log = logging.getLogger("atlas.sidecar")


class Source(Protocol):
    """Where snapshots come from (ZooKeeperSource, or a fake in tests)."""

    @property
    def connected(self) -> bool:
        """True while the source is reachable."""

    @property
    def initialized(self) -> bool:
        """True once a complete view has been read."""

    def set_listener(self, listener: Callable[[], None]) -> None:
        """Register the change callback."""

    def start(self) -> None:
        """Start watching."""

    def stop(self) -> None:
        """Stop watching."""

    def maintain(self) -> None:
        """Periodic housekeeping."""

    def snapshot(self) -> tuple[Snapshot, list[str]]:
        """The current view and warnings."""


class Proxy(Protocol):
    """The HAProxy the sidecar drives (atlas.sidecar.haproxy.HAProxy, or a fake in tests)."""

    config_path: Path

    def start(self, timeout: float = 15.0) -> None:
        """Start HAProxy with config_path."""

    def running(self) -> bool:
        """True while it runs."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it."""

    def admin(self, command: str) -> str:
        """Runtime API command."""

    def check(self, path: Path) -> tuple[bool, str]:
        """Validate a config file."""

    def reload(self, timeout: float = 15.0) -> int:
        """Hitless reload; returns the new worker pid."""


class SidecarFatal(RuntimeError):
    """Something a supervisor must handle (HAProxy keeps dying, cannot start)."""


@dataclass
class Settings:
    """Tunables of the loop."""

    debounce_s: float = 0.05
    debounce_max_s: float = 0.5
    reload_min_interval_s: float = 1.0
    reload_jitter_s: float = 0.5
    empty_grace_s: float = 60.0
    initial_sync_timeout_s: float = 10.0
    tick_s: float = 1.0
    max_restarts: int = 5
    status_file: Path | None = None


@dataclass
class Status:
    """What operators see (JSON)."""

    realm: str
    generation: int = 0
    view_generation: int = 0
    config_hash: str = ""
    last_apply: float | None = None
    reloads: int = 0
    runtime_updates: int = 0
    check_failures: int = 0
    haproxy_restarts: int = 0
    stale: bool = True
    stale_reasons: list[str] = field(default_factory=list)
    zk_connected: bool = False
    in_sync: bool = False
    services: int = 0
    instances: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dict(self.__dict__)
        d["last_apply_iso"] = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_apply))
            if self.last_apply
            else None
        )
        return d


_OK_ANSWERS = ("", "New server registered.", "Server deleted.")


class Sidecar:
    """Keeps one HAProxy in step with one realm's services."""

    def __init__(
        self,
        source: Source,
        proxy: Proxy,
        options: RenderOptions,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        render_fn: Callable[[Snapshot, RenderOptions], str] = render,
    ) -> None:
        self.source = source
        self.proxy = proxy
        self.options = options
        self.settings = settings or Settings()
        self.clock = clock
        self.wall = wall
        self.render_fn = render_fn
        s = self.settings
        self.debouncer = Debouncer(s.debounce_s, s.debounce_max_s)
        self.pacer = ReloadPacer(s.reload_min_interval_s, s.reload_jitter_s, rng)
        self.backoff = Backoff()
        self.status = Status(realm=options.realm)
        self.view: Snapshot | None = None
        self.desired: Snapshot | None = None  # after the last-known-good guard
        self.running: Snapshot | None = None  # what HAProxy runs; None = unknown
        self._held_since: dict[str, float] = {}
        self._warnings: frozenset[str] = frozenset()
        self._retry_at: float | None = None
        self._file_dirty = False
        self._restarts: list[float] = []
        self._draining: set[tuple[str, str]] = set()  # (backend, server) awaiting `del server`
        self._cond = threading.Condition()
        self._stop = False
        self._status_lock = threading.Lock()
        source.set_listener(self.poke)

    # -- events ----------------------------------------------------------------------------

    def poke(self) -> None:
        """A change happened (called from the watcher's thread)."""
        with self._cond:
            self.debouncer.poke(self.clock())
            self._cond.notify()

    def request_stop(self) -> None:
        """Ask run() to return."""
        with self._cond:
            self._stop = True
            self._cond.notify()

    # -- lifecycle ---------------------------------------------------------------------------

    def boot(self) -> None:
        """Connect, wait briefly for a first view, write a checked config, start HAProxy."""
        self.source.start()
        deadline = self.clock() + self.settings.initial_sync_timeout_s
        while not self.source.initialized and self.clock() < deadline:
            time.sleep(0.02)
        path = self.proxy.config_path
        if self.source.initialized:
            with self._cond:
                self.debouncer.clear()
            self._take_view()
            start_with = self.desired or Snapshot()
        elif path.exists() and self.proxy.check(path)[0]:
            log.warning("zookeeper not ready: starting haproxy with the last config on disk")
            start_with = None
        else:
            log.warning("zookeeper not ready: starting haproxy with no service")
            start_with = Snapshot()
        if start_with is not None:
            text = self.render_fn(start_with, self.options)
            if not self._write_checked(text):
                start_with = Snapshot()
                text = render(start_with, self.options)
                if not self._write_checked(text):
                    raise SidecarFatal(f"cannot produce a valid config: {self.status.last_error}")
        self.proxy.start()
        self.running = start_with
        self._mark_applied()
        self._update_status()

    def run(self) -> None:
        """Loop until request_stop(); raise SidecarFatal for what a supervisor must handle."""
        while True:
            wait = self.step()
            with self._cond:
                if self._stop:
                    return
                if self.debouncer.pending and self.source.connected:
                    wait = min(wait, self._until_debounce())
                self._cond.wait(timeout=max(0.0, wait))
                if self._stop:
                    return

    def shutdown(self) -> None:
        """Stop watching and stop HAProxy."""
        self.source.stop()
        self.proxy.stop()

    def _until_debounce(self) -> float:
        d = self.debouncer.deadline()
        return self.settings.tick_s if d is None else max(0.0, d - self.clock())

    # -- one iteration -------------------------------------------------------------------------

    def step(self) -> float:
        """Do whatever is due now; return how long to sleep at most before the next step."""
        now = self.clock()
        self.source.maintain()
        self._supervise(now)
        if self.source.connected and self.source.initialized:
            with self._cond:
                due = self.debouncer.take(now)
            if due:
                self._take_view()
        if self.desired is not None and self.source.connected:
            self._apply(now)
        if self._draining:
            self._retry_draining()
        self._update_status()
        return self._next_wait(now)

    def _take_view(self) -> None:
        view, warnings = self.source.snapshot()
        new = frozenset(warnings)
        for w in sorted(new - self._warnings):
            log.warning("ignoring: %s", w)
        self._warnings = new
        self.view = view
        self.status.view_generation += 1
        g = guard(self.desired, view, self.clock(), self._held_since, self.settings.empty_grace_s)
        for name in sorted(set(g.held) - set(self._held_since)):
            log.warning("service %s suddenly has no instance: keeping its last-known-good", name)
        self._held_since = g.held_since
        self.desired = g.snapshot

    def _next_wait(self, now: float) -> float:
        waits = [self.settings.tick_s]
        if self._held_since:
            waits.append(self.settings.tick_s)
        if self._retry_at is not None:
            waits.append(self._retry_at - now)
        if self.running != self.desired and self.source.connected:
            nxt = self.pacer.next_allowed()
            if nxt is not None:
                waits.append(nxt - now)
        return max(0.001, min(waits))

    # -- supervision ---------------------------------------------------------------------------

    def _supervise(self, now: float) -> None:
        if self.proxy.running():
            return
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        if len(self._restarts) > self.settings.max_restarts:
            raise SidecarFatal("haproxy keeps exiting; giving up")
        log.error("haproxy exited: restarting it with the last checked config")
        self.status.haproxy_restarts += 1
        try:
            self.proxy.start()
        except HAProxyError as exc:
            self.status.last_error = str(exc)
            return
        self.running = None  # unknown runtime state: the next apply reloads from the file
        self._draining.clear()

    # -- apply ---------------------------------------------------------------------------------

    def _apply(self, now: float) -> None:
        desired = self.desired
        assert desired is not None
        if self._held_since:
            # Re-run the guard so an expired hold is released even without a new event.
            view = self.view or desired
            g = guard(desired, view, now, self._held_since, self.settings.empty_grace_s)
            self._held_since, desired = g.held_since, g.snapshot
            self.desired = desired
        if self.running == desired and not self._file_dirty:
            return
        if self._retry_at is not None and now < self._retry_at:
            return
        p = plan(self.running, desired)
        if p.ops:
            if self._run_ops(p.ops):
                self.running = p.after_runtime
                self.status.runtime_updates += len(p.ops)
                self._file_dirty = True
                self._mark_applied()
            else:
                self.running = None
        if self.running != desired and self.pacer.ready(now):
            self._reload(desired, now)
            return
        if self._file_dirty and self.running is not None:
            # Runtime changes are in; keep the file in step (a pending reload rewrites it anyway).
            if self._write_checked(self.render_fn(self.running, self.options)):
                self._file_dirty = False
                self.backoff.success()
                self._retry_at = None
            else:
                self._retry_at = now + self.backoff.failure()

    def _admin(self, cmd: str) -> str:
        try:
            return self.proxy.admin(cmd).strip()
        except OSError as exc:
            return f"socket error: {exc}"

    def _retry_draining(self) -> None:
        """Delete servers that were busy when their instance went away (no reload needed)."""
        for backend, server in sorted(self._draining):
            wanted = self.desired.get(backend) if self.desired is not None else None
            if wanted is not None and any(server_name(i) == server for i in wanted.instances):
                self._draining.discard((backend, server))  # wanted again: never delete it
                continue
            answer = self._admin(f"del server {backend}/{server}")
            if answer in _OK_ANSWERS or "No such server" in answer or "No such backend" in answer:
                self._draining.discard((backend, server))
                log.info("runtime delete %s/%s (drained)", backend, server)

    def _run_ops(self, ops: tuple[Any, ...]) -> bool:
        for op in ops:
            if op.kind == "add" and (op.backend, op.server) in self._draining:
                self._retry_draining()
                if (op.backend, op.server) in self._draining:
                    # Still there: the reload re-creates it cleanly; stop trying to delete it.
                    self._draining.discard((op.backend, op.server))
                    return False
            for cmd in op.commands:
                answer = self._admin(cmd)
                if op.kind == "delete" and cmd.startswith("del ") and "connections" in answer:
                    # Disabled already, so it takes no new traffic; idle keep-alive connections
                    # keep it from being deleted. Drain, delete later, and do not reload for it.
                    self._admin(f"shutdown sessions server {op.backend}/{op.server}")
                    self._draining.add((op.backend, op.server))
                    continue
                if answer not in _OK_ANSWERS:
                    log.warning(
                        "runtime command %r answered %r: falling back to a reload", cmd, answer
                    )
                    return False
            log.info("runtime %s %s/%s", op.kind, op.backend, op.server)
        return True

    def _reload(self, desired: Snapshot, now: float) -> None:
        try:
            text = self.render_fn(desired, self.options)
        except Exception as exc:  # a render bug must not take the running config down
            log.exception("render failed")
            self._fail(now, f"render failed: {exc!r}")
            return
        if not self._write_checked(text):
            self._retry_at = now + self.backoff.failure()
            return
        try:
            pid = self.proxy.reload()
        except (HAProxyError, OSError) as exc:
            self._fail(now, f"reload failed: {exc}")
            self.running = None
            return
        self.pacer.record(now)
        self.backoff.success()
        self._retry_at = None
        self._file_dirty = False
        self._draining.clear()
        self.running = desired
        self.status.reloads += 1
        self._mark_applied()
        log.info(
            "reloaded haproxy (worker %s): %d services, %d instances",
            pid,
            len(desired.services),
            desired.instance_count(),
        )

    def _fail(self, now: float, message: str) -> None:
        log.error("%s; keeping the running config, will retry", message)
        self.status.last_error = message
        self._retry_at = now + self.backoff.failure()

    def _write_checked(self, text: str) -> bool:
        """Write the config only if it differs, and only once `haproxy -c` accepts it."""
        path = self.proxy.config_path
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        try:
            if path.read_text() == text:
                self.status.config_hash = digest
                return True
        except OSError:
            pass
        candidate = path.with_name(path.name + ".candidate")
        write_atomic(candidate, text)
        ok, output = self.proxy.check(candidate)
        if not ok:
            self.status.check_failures += 1
            self.status.last_error = f"haproxy -c rejected the new config: {output[-2000:]}"
            log.error("%s", self.status.last_error)
            return False
        candidate.replace(path)
        self.status.config_hash = digest
        return True

    def _mark_applied(self) -> None:
        self.status.generation += 1
        self.status.last_apply = self.wall()
        self.status.last_error = None

    # -- status --------------------------------------------------------------------------------

    def _update_status(self) -> None:
        st = self.status
        reasons = []
        if not self.source.connected:
            reasons.append("zookeeper unreachable: serving the last-known-good config")
        if self._held_since:
            reasons.append(
                "holding last-known-good instances of: " + ", ".join(sorted(self._held_since))
            )
        if self.running is not None and self.desired is not None and self.running != self.desired:
            reasons.append("changes pending")
        if not st.config_hash:
            with contextlib.suppress(OSError):
                st.config_hash = hashlib.sha256(self.proxy.config_path.read_bytes()).hexdigest()[
                    :16
                ]
        before = (st.stale, st.stale_reasons)
        st.stale_reasons = reasons
        st.stale = bool(reasons) or self.desired is None
        st.zk_connected = self.source.connected
        st.in_sync = self.running is not None and self.running == self.desired
        ref = self.running or self.desired or Snapshot()
        st.services = len(ref.services)
        st.instances = ref.instance_count()
        if before != (st.stale, st.stale_reasons) and st.stale:
            log.warning("stale: %s", "; ".join(reasons) or "no view yet")
        self._write_status_file()

    def status_dict(self) -> dict[str, Any]:
        """A copy of the status, JSON-ready."""
        with self._status_lock:
            return self.status.as_dict()

    def _write_status_file(self) -> None:
        path = self.settings.status_file
        if path is None:
            return
        text = json.dumps(self.status_dict(), indent=2, sort_keys=True) + "\n"
        try:
            if path.exists() and path.read_text() == text:
                return
            write_atomic(path, text)
        except OSError as exc:
            log.debug("status file: %r", exc)
