"""The sidecar loop: changes → guard → runtime ops (map, spares, servers) or a checked, paced
reload → report.

One thread owns everything here (the one that calls `boot`, then `run` or `step`): the view,
the desired and running states, the spare pool, the counters. Other threads only post to it:
`poke` (a change arrived), `request_stop` (a signal), the check worker's completion; and they
read `status_dict()`, an immutable copy the loop publishes after each step.

Nothing escapes `run()` but `request_stop()`: every phase of a step catches what it raises,
counts it by kind (`failures`), marks it failing (`failing`, in `/status` and the report node)
and backs off; HAProxy keeps serving its last-known-good config meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from atlas.contract import LaggingService, SidecarReport, split_instance_id
from atlas.sidecar.haproxy import (
    AdminError,
    CheckTimeout,
    HAProxyError,
    ServerState,
    escape_cli,
    filter_state_lines,
    is_ok,
    write_atomic,
)
from atlas.sidecar.model import HealthCheck, Instance, Service, Snapshot
from atlas.sidecar.plan import (
    RuntimeOp,
    addable,
    admin_state,
    empty_ops,
    fill_ops,
    guard_service,
    server_ops,
    structure,
)
from atlas.sidecar.render import (
    RenderOptions,
    is_spare,
    render,
    render_check_map,
    render_map,
    server_name,
    spare_name,
)
from atlas.sidecar.timing import Backoff, Debouncer, ReloadPacer
from atlas.sidecar.watch import ViewChanges

log = logging.getLogger("atlas.sidecar")

SIDECAR_VERSION = "0.1.0"
UNDECIDED_MAX_S = 1.0  # how long a hold decision may wait for a view still being read
INCOMPLETE_WAIT_S = 0.5  # how long to wait for the rest of a view before taking what is there


class ViewSource(Protocol):
    """Where changes come from (`ZooKeeperSource`, or a fake in tests)."""

    @property
    def connected(self) -> bool:
        """True while the source is reachable (thread-safe)."""

    @property
    def initialized(self) -> bool:
        """True once a complete view has been read (thread-safe)."""

    def set_listener(self, listener: Callable[[], None]) -> None:
        """Register the change callback (before start)."""

    def start(self) -> None:
        """Start watching."""

    def stop(self) -> None:
        """Stop watching."""

    def maintain(self) -> None:
        """Periodic housekeeping (loop thread)."""

    def drain(self) -> ViewChanges:
        """The services that changed since the last call (loop thread)."""

    def resync(self) -> None:
        """Read the whole view again (thread-safe)."""

    def publish_report(self, data: bytes) -> None:
        """Publish this sidecar's report (thread-safe, non-blocking)."""

    def report_counters(self) -> dict[str, Any]:
        """Counters of report writes (thread-safe)."""


class Proxy(Protocol):
    """The HAProxy the sidecar drives (atlas.sidecar.haproxy.HAProxy, or a fake in tests)."""

    config_path: Path

    def start(self, timeout: float = 15.0, takeover: int | None = None) -> None:
        """Start HAProxy with config_path."""

    def adopt(self) -> bool:
        """Take over an HAProxy already running from an earlier sidecar."""

    def leftover_pid(self) -> int | None:
        """A live master that could not be adopted."""

    def running(self) -> bool:
        """True while it runs."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it."""

    def forget(self) -> None:
        """Let go of it, leaving it running."""

    @property
    def pid(self) -> int | None:
        """The master's pid."""

    def admin_many(self, commands: Sequence[str]) -> list[str]:
        """Runtime API commands, one answer each."""

    def check(self, path: Path, timeout: float | None = None) -> tuple[bool, str]:
        """Validate a config file (thread-safe)."""

    def reload(self, timeout: float = 15.0) -> int:
        """Hitless reload; returns the new worker pid."""

    def show_proc(self, timeout: float = 5.0) -> tuple[int | None, int, list[int]]:
        """(master reloads, failed reloads, worker pids)."""

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        """The live servers."""

    def show_map(self, path: str) -> dict[str, str]:
        """A live map's entries."""

    def version(self) -> str | None:
        """HAProxy's version."""


class SidecarFatal(RuntimeError):
    """Something only a person can fix at start (no config HAProxy accepts, no HAProxy)."""


@dataclass
class LoopSettings:
    """Tunables of the loop."""

    debounce_s: float = 0.05
    debounce_max_s: float = 0.5
    reload_min_interval_s: float = 1.0
    reload_jitter_s: float = 0.5
    empty_grace_s: float = 60.0
    initial_sync_timeout_s: float = 10.0
    tick_s: float = 1.0
    status_file: Path | None = None
    applied_file: Path | None = None  # what HAProxy runs, for a later sidecar to adopt it
    file_sync_delay_s: float = 1.0  # rewrite the file this long after runtime changes
    check_timeout_s: float = 30.0
    publish_interval_s: float = 1.0  # at most one report node write per interval
    pool_low_water: int | None = None  # refill the spares below this many free (default 1/4)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # A removed server's open requests may finish for this long; then its sessions are cut.
    drain_shutdown_s: float = 60.0


@dataclass
class Failure:
    """A kind of fault that is happening now (cleared by the next success of that kind)."""

    kind: str
    message: str
    since: float
    count: int = 1


@dataclass
class Status:
    """What operators see (JSON); the loop thread's own copy."""

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
    last_error_at: float | None = None
    failures: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    applied_index: int = 0
    adopted: bool = False


_ISO = "%Y-%m-%dT%H:%M:%SZ"


def _iso(t: float | None) -> str | None:
    return time.strftime(_ISO, time.gmtime(t)) if t else None


class InlineExecutor(Executor):
    """Runs submitted work at once in the caller's thread (tests; no background thread)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run fn now; return its finished future."""
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


@dataclass
class _Check:
    """A `haproxy -c` running off the loop, and what to do when it passes."""

    kind: str  # reload | sync
    future: Future[tuple[bool, str]]
    snapshot: Snapshot
    placement: dict[str, str]
    text: str
    candidate: Path
    generation: int
    started: float


class Sidecar:
    """Keeps one HAProxy in step with one realm's services.

    Thread-safety: `poke`, `request_stop` and `status_dict` may be called from any thread;
    everything else belongs to the loop thread.
    """

    def __init__(
        self,
        source: ViewSource,
        proxy: Proxy,
        options: RenderOptions,
        settings: LoopSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        render_fn: Callable[[Snapshot, RenderOptions], str] = render,
        executor: Executor | None = None,
        host_id: str | None = None,
    ) -> None:
        self.source = source
        self.proxy = proxy
        self.options = options
        self.settings = s = settings or LoopSettings()
        self.clock = clock
        self.wall = wall
        self.render_fn = render_fn
        self.host_id = host_id
        self.map_mode = options.map_mode
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="atlas-check")
        self.debouncer = Debouncer(s.debounce_s, s.debounce_max_s)
        self.pacer = ReloadPacer(s.reload_min_interval_s, s.reload_jitter_s, rng)
        self._backoffs: dict[str, Backoff] = {}
        self._retry: dict[str, float] = {}  # backoff key -> earliest next attempt
        self._restart_backoff = Backoff(s.backoff_initial_s, s.backoff_max_s)
        self.status = Status(realm=options.realm)
        self.started_at = wall()
        # The view (from the source), what to apply (after the guard), what HAProxy runs.
        self.view: dict[str, Service] = {}
        self.desired: dict[str, Service] = {}
        self._running: dict[str, Service] | None = None  # None: unknown, a reload fixes it
        self._have_view = False
        self._placement: dict[str, str] = {}  # service -> spare backend it runs in
        self._backends: dict[str, tuple[object, ...]] = {}  # own backends HAProxy has
        self._spares_free: list[str] = []
        self._spares_total = 0
        self._refills = 0
        self._last_refill: float | None = None
        self._held: dict[str, float] = {}
        # Services that would be held, seen in a view still being read: decided once it is
        # complete (the rest of their change, e.g. the count on their node, is on its way).
        self._undecided: dict[str, float] = {}
        self._deliberate: set[str] = set()
        self._dirty: set[str] = set()  # services to plan on the next apply
        self._pending: set[str] = set()  # services whose running state is not the desired one
        self._reload_reasons: dict[str, str] = {}  # why a reload is wanted
        self._svc_index: dict[str, int] = {}  # index of the view each service was applied at
        self._view_index: int | None = None  # watermark of the last complete view taken
        self._lag_since: dict[str, float] = {}
        self._warnings: dict[str, frozenset[str]] = {}
        self._restart_at: float | None = None
        self._file_dirty_at: float | None = None
        self._file_generation = 0
        self._check: _Check | None = None
        # (backend, server) out of traffic, awaiting `del server` -> since when (loop clock)
        self._draining: dict[tuple[str, str], float] = {}
        self.failing: dict[str, Failure] = {}
        self._master_reloads: int | None = None
        self._published_key: bytes | None = None
        self._next_publish = 0.0
        self._cond = threading.Condition()
        self._stop = False
        self._woken = False
        self._poked = False
        # A view still being read: wait for its last answer (a poke), at most until then.
        self._incomplete_until: float | None = None
        self._status_copy: dict[str, Any] = {}
        source.set_listener(self.poke)

    # -- events (any thread) ------------------------------------------------------------------

    def poke(self) -> None:
        """A change happened (called from the watcher's thread)."""
        with self._cond:
            self.debouncer.poke(self.clock())
            self._woken = self._poked = True
            self._cond.notify()

    def _wake(self, _: object = None) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify()

    def request_stop(self) -> None:
        """Ask run() to return (thread-safe)."""
        with self._cond:
            self._stop = True
            self._cond.notify()

    def status_dict(self) -> dict[str, Any]:
        """The status as of the last step, JSON-ready (thread-safe: an immutable copy)."""
        return self._status_copy

    @property
    def running(self) -> Snapshot | None:
        """What HAProxy runs, as a snapshot (None: unknown)."""
        return None if self._running is None else Snapshot(tuple(self._running.values()))

    # -- lifecycle ---------------------------------------------------------------------------

    def boot(self) -> None:
        """Connect, wait briefly for a first view, then adopt the running HAProxy or start one.

        Raises SidecarFatal only when no HAProxy can be started at all.
        """
        self.source.start()
        deadline = self.clock() + self.settings.initial_sync_timeout_s
        while not self.source.initialized and self.clock() < deadline:
            time.sleep(0.02)
        adopted = self.proxy.adopt()
        if adopted:
            self.status.adopted = True
            self._running = self._reconstruct()
            log.info(
                "adopted haproxy (master %s): %s",
                self.proxy.pid,
                "running state read back, no reload needed"
                if self._running is not None
                else "running state unknown, replacing its config with a hitless reload",
            )
            if self._running is not None:
                # What it runs is the last-known-good: a wiped tree does not empty it at once.
                self.desired = dict(self._running)
                self._dirty.update(self._running)
        if self.source.initialized:
            with self._cond:
                self.debouncer.clear()
            self._take_changes(self.clock())
        if not adopted:
            self._start_fresh()
        if self._have_view and self.source.connected:
            self._guarded("apply", self._apply, self.clock())
        self._update_status(self.clock())

    def _start_fresh(self) -> None:
        path = self.proxy.config_path
        start_with: Snapshot | None
        if self._have_view:
            start_with = Snapshot(tuple(self.desired.values()))
        elif path.exists() and self._check_now(path):
            log.warning("zookeeper not ready: starting haproxy with the last config on disk")
            start_with = None
        else:
            log.warning("zookeeper not ready: starting haproxy with no service")
            start_with = Snapshot()
        if start_with is not None:
            ok = self._write_files_checked(start_with, self.render_fn)
            if not ok:
                start_with = Snapshot()
                if not self._write_files_checked(start_with, render):
                    raise SidecarFatal(f"cannot produce a valid config: {self.status.last_error}")
        # A state file left by an earlier HAProxy would bring back states of another time.
        if self.options.server_state_file:
            with contextlib.suppress(OSError):
                Path(self.options.server_state_file).unlink()
        leftover = self.proxy.leftover_pid()
        try:
            self.proxy.start(takeover=leftover)
        except (HAProxyError, OSError) as exc:
            raise SidecarFatal(f"cannot start haproxy: {exc}") from exc
        self._after_start(start_with)

    def _after_start(self, start_with: Snapshot | None) -> None:
        self._placement = {}
        self._reset_pool()
        self._draining.clear()
        self._master_reloads = self._show_reloads()
        if start_with is None:
            self._running = None
            self._backends = {}
        else:
            # The config has no drain state: those are set at runtime right after.
            self._running = {s.name: _undrained(s) for s in start_with.services}
            self._backends = {s.name: structure(s) for s in start_with.services}
            self._dirty.update(self._running)
            self._mark_applied()
            self._write_applied()

    def run(self) -> None:
        """Loop until request_stop(). Nothing else ends it: faults are counted and retried."""
        while True:
            wait = self.step()
            with self._cond:
                if self._stop:
                    return
                waiting = self._incomplete_until is not None and not self._poked
                if self.debouncer.pending and self.source.connected and not waiting:
                    wait = min(wait, self._until_debounce())
                if not self._woken:
                    self._cond.wait(timeout=max(0.0, wait))
                self._woken = False
                if self._stop:
                    return

    def shutdown(self, stop_haproxy: bool = True) -> None:
        """Stop watching; stop HAProxy only when asked (an explicit stop), else leave it serving."""
        with contextlib.suppress(Exception):
            self.source.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if stop_haproxy:
            self.proxy.stop()
        else:
            log.info("leaving haproxy (master %s) running for the next sidecar", self.proxy.pid)
            self.proxy.forget()

    def _until_debounce(self) -> float:
        d = self.debouncer.deadline()
        return self.settings.tick_s if d is None else max(0.0, d - self.clock())

    # -- faults ------------------------------------------------------------------------------

    def _fail(self, kind: str, message: str) -> None:
        """Count a fault of `kind` and mark it failing (the loop keeps going)."""
        st = self.status
        st.failures[kind] = st.failures.get(kind, 0) + 1
        st.last_error = f"{kind}: {message}"[:2000]
        st.last_error_at = self.wall()
        current = self.failing.get(kind)
        if current is None:
            log.error("%s failing: %s", kind, message[:2000])
            self.failing[kind] = Failure(kind, message[:2000], self.wall())
        else:
            current.count += 1
            current.message = message[:2000]

    def _ok(self, *kinds: str) -> None:
        for kind in kinds:
            if self.failing.pop(kind, None) is not None:
                log.info("%s recovered", kind)
        if not self.failing:
            self.status.last_error = None

    def _due(self, key: str, now: float) -> bool:
        at = self._retry.get(key)
        return at is None or now >= at

    def _back_off(self, key: str, now: float) -> None:
        backoff = self._backoffs.setdefault(
            key, Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        )
        self._retry[key] = now + backoff.failure()

    def _succeeded(self, key: str) -> None:
        if self._retry.pop(key, None) is not None:
            self._backoffs[key].success()

    def _guarded(self, phase: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run one phase of a step; an exception is counted as `loop_<phase>`, backed off."""
        kind = f"loop_{phase}"
        now = self.clock()
        if not self._due(kind, now):
            return
        try:
            fn(*args)
        except Exception as exc:  # nothing escapes the loop: count, back off, retry
            log.exception("%s raised", phase)
            self._fail(kind, repr(exc))
            self._back_off(kind, now)
            if phase == "view":
                self.source.resync()  # what was drained may be lost: read everything again
            return
        if kind in self._retry:
            self._succeeded(kind)
            self._ok(kind)

    # -- one iteration -----------------------------------------------------------------------

    def step(self) -> float:
        """Do whatever is due now; return how long to sleep at most before the next step."""
        now = self.clock()
        self._guarded("zookeeper", self.source.maintain)
        self._guarded("supervise", self._supervise, now)
        self._guarded("check", self._poll_check, now)
        if self.source.connected and self.source.initialized and self._due("loop_view", now):
            with self._cond:
                until = self._incomplete_until
                waiting = until is not None and now < until and not self._poked
                self._poked = False
                due = not waiting and self.debouncer.take(now)
            if due:
                self._guarded("view", self._take_changes, now)
        if self._held or self._undecided:
            self._guarded("hold", self._reguard_held, now)
        if self._have_view and self.source.connected:
            self._guarded("apply", self._apply, now)
        if self._draining:
            self._guarded("runtime", self._retry_draining)
        self._guarded("file_sync", self._maybe_sync_file, now)
        self._guarded("publish", self._maybe_publish, now)
        self._guarded("status", self._update_status, now)
        return self._next_wait(now)

    def _take_changes(self, now: float) -> None:
        changes = self.source.drain()
        if changes.incomplete:
            # The rest of a transaction is a read away: its answer pokes us (at once, as the
            # leading edge of a burst), or the source takes what it has once this passes.
            with self._cond:
                self.debouncer.untake()
            self._incomplete_until = now + INCOMPLETE_WAIT_S
            return
        self._incomplete_until = None
        complete = changes.index is not None
        self.status.passes += 1
        self.status.view_generation += 1
        if complete and not self._have_view:
            # The first complete view: what HAProxy runs but the view lacks went away while
            # no sidecar was looking (through the guard: a wiped tree is held).
            for name in set(self.desired) - set(self.view) - set(changes.services):
                changes.services[name] = None
        self._have_view = self._have_view or complete
        by_service: dict[str, set[str]] = {}
        for w in changes.warnings:
            by_service.setdefault(w.split("'")[1] if "'" in w else "", set()).add(w)
        for name, svc in changes.services.items():
            fresh = frozenset(by_service.get(name, ()))
            for w in sorted(fresh - self._warnings.get(name, frozenset())):
                log.warning("ignoring: %s", w)
            if fresh:
                self._warnings[name] = fresh
            else:
                self._warnings.pop(name, None)
            if svc is None:
                self.view.pop(name, None)
            else:
                self.view[name] = svc
            if name in changes.deliberate:
                self._deliberate.add(name)
            self._guard(name, now, complete)
        if complete:
            self._view_index = changes.index
            for name in list(self._undecided):
                self._guard(name, now)

    def _guard(self, name: str, now: float, complete: bool = True) -> None:
        before = self.desired.get(name)
        kept, since = guard_service(
            before, self.view.get(name), now, self._held.get(name),
            self.settings.empty_grace_s, name in self._deliberate,
        )  # fmt: skip
        if since is not None and name not in self._held:
            first = self._undecided.setdefault(name, now)
            if not complete and now - first < UNDECIDED_MAX_S:
                return  # decide on the complete view (milliseconds away)
        self._undecided.pop(name, None)
        if since is None:
            self._held.pop(name, None)
        elif name not in self._held:
            log.warning("service %s suddenly has no instance: keeping its last-known-good", name)
            self._held[name] = since
        if kept is None:
            self.desired.pop(name, None)
            self._deliberate.discard(name)
        else:
            self.desired[name] = kept
            if name in self.view:
                self._deliberate.discard(name)
        self._dirty.add(name)

    def _reguard_held(self, now: float) -> None:
        for name in list(self._held):
            self._guard(name, now)
        for name, first in list(self._undecided.items()):
            if now - first >= UNDECIDED_MAX_S:
                self._guard(name, now)

    def _next_wait(self, now: float) -> float:
        waits = [self.settings.tick_s]
        waits.extend(at - now for at in self._retry.values())
        if self._incomplete_until is not None:
            waits.append(self._incomplete_until - now)
        if self._restart_at is not None:
            waits.append(self._restart_at - now)
        if self._reload_reasons and self.source.connected and self._check is None:
            nxt = self.pacer.next_allowed()
            if nxt is not None:
                waits.append(nxt - now)
        if self._file_dirty_at is not None and self._check is None:
            waits.append(self._file_dirty_at + self.settings.file_sync_delay_s - now)
        if self.host_id is not None and self._next_publish > now:
            waits.append(self._next_publish - now)
        return max(0.001, min(waits))

    # -- supervision -------------------------------------------------------------------------

    def _supervise(self, now: float) -> None:
        if self.proxy.running():
            self._restart_at = None
            return
        if self._restart_at is not None and now < self._restart_at:
            return
        if "haproxy_start" not in self.failing:
            self._fail("haproxy_exit", "haproxy exited: restarting it with the last checked config")
        self.status.haproxy_restarts += 1
        try:
            self.proxy.start()
        except (HAProxyError, OSError) as exc:
            self._fail("haproxy_start", str(exc))
            self._restart_at = now + self._restart_backoff.failure()
            return
        self._ok("haproxy_exit", "haproxy_start")
        self._restart_backoff.success()
        self._restart_at = None
        # Unknown runtime state (and the file may lag the runtime API): reload from a render.
        self._after_start(None)
        self._want_reload("haproxy was restarted")

    # -- apply -------------------------------------------------------------------------------

    def _want_reload(self, reason: str) -> None:
        self._reload_reasons.setdefault(reason.split(":")[0], reason)

    def _apply(self, now: float) -> None:
        if self._running is None:
            self._want_reload("haproxy's running state is unknown")
        elif self._dirty and self._due("runtime", now):
            self._apply_runtime(now)
        self._maybe_refill()
        if (
            self._reload_reasons
            and self._check is None
            and self.pacer.ready(now)
            and self._due("reload", now)
        ):
            self._start_reload(now)

    def _apply_runtime(self, now: float) -> None:
        assert self._running is not None
        running = self._running
        ops: list[RuntimeOp] = []
        changes: list[Callable[[], None]] = []
        dirty = sorted(self._dirty)
        spares = list(self._spares_free)
        try:
            for name in dirty:
                self._plan_one(name, running, ops, changes)
            ok = self._run_ops(ops) if ops else True
        except BaseException:
            self._spares_free = spares  # nothing was placed: the pass is retried whole
            raise
        self._dirty.difference_update(dirty)
        if ops:
            if not ok:
                self._running = None
                self._back_off("runtime", now)
                self._want_reload("a runtime command failed")
                return
            self._succeeded("runtime")
            self.status.runtime_updates += len(ops)
            if self._file_dirty_at is None:
                self._file_dirty_at = now
            self._file_generation += 1
        for change in changes:
            change()
        self._ok("runtime")
        if ops:
            self._mark_applied()
            self._update_status(now)

    def _plan_one(
        self,
        name: str,
        running: dict[str, Service],
        ops: list[RuntimeOp],
        changes: list[Callable[[], None]],
    ) -> None:
        """Plan one service: append its runtime ops, and the state changes to commit after."""
        want, have = self.desired.get(name), running.get(name)
        if want == have:
            self._settled(name)
            return
        backend = self._placement.get(name, name)
        if want is None:
            assert have is not None
            if not self.map_mode:
                self._lagging(name, f"service {name} removed: waiting for a reload")
                return
            ops.append(self._map_op("del", name))
            ops.extend(empty_ops(backend, have))

            def removed() -> None:
                running.pop(name, None)
                self._placement.pop(name, None)
                self._settled(name)

            changes.append(removed)
            return
        if have is not None and self._fits(backend, have, want):
            p = server_ops(backend, have, want)
            if p is not None:
                ops.extend(p.ops)
                after = p.after

                def updated() -> None:
                    running[name] = after
                    if after == want:
                        self._settled(name)
                    else:
                        self._lagging(name, f"service {name}: slow start change waits for a reload")

                changes.append(updated)
                return
        # A new service, or one whose backend cannot take the change: a fresh backend.
        if not self.map_mode:
            self._lagging(name, f"service {name}: new structure, waiting for a reload")
            return
        if not all(addable(i) for i in want.instances):
            self._lagging(name, f"service {name}: a hostname instance needs a reload")
            return
        target = self._own_backend_free(name, want, running) or self._take_spare()
        if target is None:
            self._lagging(name, f"service {name}: no spare backend left, waiting for a reload")
            return
        if is_spare(target) and want.health_check is not None:
            ops.append(self._check_map_op(target, want.health_check))
        ops.extend(fill_ops(target, want))
        ops.append(self._map_op("set" if have is not None else "add", name, target))
        if have is not None:
            ops.extend(empty_ops(backend, have))

        def placed() -> None:
            running[name] = want
            if is_spare(target):
                self._placement[name] = target
            else:
                self._placement.pop(name, None)
            self._settled(name)

        changes.append(placed)

    def _fits(self, backend: str, have: Service, want: Service) -> bool:
        if is_spare(backend):
            return have.health_check == want.health_check
        return structure(have) == structure(want)

    def _own_backend_free(
        self, name: str, want: Service, running: dict[str, Service]
    ) -> str | None:
        """The service's own backend, when HAProxy has it empty and with the right structure."""
        if self._backends.get(name) != structure(want) or name in running:
            return None
        if any(b == name for b, _ in self._draining):
            return None  # old servers still leaving it
        return name

    def _take_spare(self) -> str | None:
        return self._spares_free.pop(0) if self._spares_free else None

    def _map_op(self, verb: str, name: str, backend: str | None = None) -> RuntimeOp:
        path = self.options.map_file
        cmd = f"{verb} map {path} {name}" + (f" {backend}" if backend else "")
        return RuntimeOp("map", backend or "", name, (cmd,))

    def _check_map_op(self, spare: str, hc: HealthCheck) -> RuntimeOp:
        path = self.options.check_map_file
        return RuntimeOp("map", spare, "", (f"add map {path} {spare} {escape_cli(hc.path)}",))

    def _settled(self, name: str) -> None:
        """HAProxy runs the desired state of `name` (the held one, while it is held)."""
        self._pending.discard(name)
        if name in self._held:
            return  # applied, but not what the view says: it keeps lagging
        self._lag_since.pop(name, None)
        view = self.view.get(name)
        if view is not None:
            self._svc_index[name] = view.index
        else:
            self._svc_index.pop(name, None)

    def _lagging(self, name: str, reason: str) -> None:
        """`name` waits for a reload to be applied."""
        self._pending.add(name)
        self._lag_since.setdefault(name, self.wall())
        self._want_reload(reason)

    def _run_ops(self, ops: list[RuntimeOp]) -> bool:
        if any(op.kind == "add" and (op.backend, op.server) in self._draining for op in ops):
            self._retry_draining()
            ops = [
                self._revive(op) if (op.backend, op.server) in self._draining else op for op in ops
            ]
        commands = [cmd for op in ops for cmd in op.commands]
        try:
            answers = self.proxy.admin_many(commands)
        except (AdminError, OSError) as exc:
            self._fail("runtime", f"runtime API unreachable: {exc}")
            return False
        i = 0
        drained = False
        ok = True
        for op in ops:
            for cmd in op.commands:
                answer = answers[i].strip()
                i += 1
                if op.kind == "delete" and cmd.startswith("del ") and "connections" in answer:
                    # Out of traffic already (disabled); open requests and idle keep-alive
                    # connections keep it from being deleted. Let them finish and delete it
                    # later (what is left after drain_shutdown_s is cut); no reload for it.
                    self._draining.setdefault((op.backend, op.server), self.clock())
                    drained = True
                    continue
                if not is_ok(answer):
                    log.warning(
                        "runtime command %r answered %r: falling back to a reload", cmd, answer
                    )
                    self._fail("runtime", f"{cmd!r} answered {answer[:200]!r}")
                    ok = False
            if ok:
                log.info("runtime %s %s/%s", op.kind, op.backend, op.server)
        if drained and self.settings.drain_shutdown_s <= 0:
            self._retry_draining()
        return ok

    def _revive(self, op: RuntimeOp) -> RuntimeOp:
        """An `add` of a server still there (draining): put it back as the add wants it."""
        del self._draining[(op.backend, op.server)]
        b_s = f"{op.backend}/{op.server}"
        words = op.commands[0].split()  # add server b/s addr:port id N weight W ...
        addr, _, port = words[3].rpartition(":")
        state = "ready" if any(c.startswith("enable server") for c in op.commands) else "maint"
        if any(c.endswith("state drain") for c in op.commands):
            state = "drain"
        return RuntimeOp(
            "state",
            op.backend,
            op.server,
            (
                f"set server {b_s} addr {addr.strip('[]')} port {port}",
                f"set weight {b_s} {words[words.index('weight') + 1]}",
                f"set server {b_s} state {state}",
            ),
        )

    def _retry_draining(self) -> None:
        """Delete servers that were busy when their instance went away (no reload needed);
        past drain_shutdown_s, cut what still holds them first."""
        for backend, server in list(self._draining):
            svc = self._service_in(backend)
            want = self.desired.get(svc) if svc is not None else None
            if want is not None and any(server_name(i) == server for i in want.instances):
                del self._draining[(backend, server)]  # wanted again: never delete it
        if not self._draining:
            return
        now = self.clock()
        pairs = sorted(self._draining)
        overdue = [
            f"shutdown sessions server {b}/{s}"
            for (b, s), since in sorted(self._draining.items())
            if now - since >= self.settings.drain_shutdown_s
        ]
        try:
            answers = self.proxy.admin_many(overdue + [f"del server {b}/{s}" for b, s in pairs])
        except (AdminError, OSError) as exc:
            self._fail("runtime", f"runtime API unreachable: {exc}")
            return
        for (backend, server), answer in zip(pairs, answers[len(overdue) :], strict=True):
            if is_ok(answer) or "No such server" in answer or "No such backend" in answer:
                del self._draining[(backend, server)]
                log.info("runtime delete %s/%s (drained)", backend, server)

    def _service_in(self, backend: str) -> str | None:
        """The service a backend serves now (or would, for its own backend)."""
        if is_spare(backend):
            return next((n for n, b in self._placement.items() if b == backend), None)
        return None if backend in self._placement else backend

    # -- the spare pool ----------------------------------------------------------------------

    def _reset_pool(self) -> None:
        self._spares_total = self.options.spares if self.map_mode else 0
        self._spares_free = [spare_name(i) for i in range(self._spares_total)]

    def _low_water(self) -> int:
        if self.settings.pool_low_water is not None:
            return self.settings.pool_low_water
        return max(1, self._spares_total // 4)

    def _maybe_refill(self) -> None:
        free = len(self._spares_free)
        if self._spares_total and self._running is not None and free < self._low_water():
            self._want_reload(f"refill: {free} of {self._spares_total} spare backends left")

    # -- reload ------------------------------------------------------------------------------

    def _start_reload(self, now: float) -> None:
        snapshot = Snapshot(tuple(self.desired.values()))
        try:
            text = self.render_fn(snapshot, self.options)
        except Exception as exc:  # a render bug must not take the running config down
            log.exception("render failed")
            self._fail("render", repr(exc))
            self._back_off("reload", now)
            return
        self._ok("render")
        self._submit_check("reload", snapshot, {}, text, now)

    def _submit_check(
        self, kind: str, snapshot: Snapshot, placement: dict[str, str], text: str, now: float
    ) -> None:
        path = self.proxy.config_path
        candidate = path.with_name(path.name + ".candidate")
        try:
            self._write_maps(snapshot, placement, only_missing=True)
            write_atomic(candidate, text)
        except OSError as exc:
            self._fail("config_write", f"writing {candidate}: {exc}")
            self._back_off(_key(kind), now)
            return
        self._ok("config_write")
        future = self.executor.submit(self.proxy.check, candidate, self.settings.check_timeout_s)
        self._check = _Check(
            kind, future, snapshot, placement, text, candidate, self._file_generation, now
        )
        future.add_done_callback(self._wake)
        self._poll_check(now)

    def _poll_check(self, now: float) -> None:
        check = self._check
        if check is None or not check.future.done():
            return
        self._check = None
        key = _key(check.kind)
        try:
            ok, output = check.future.result()
        except CheckTimeout as exc:
            self._fail("check_timeout", str(exc))
            self._back_off(key, now)
            return
        except Exception as exc:
            self._fail("check", f"haproxy -c could not run: {exc!r}")
            self._back_off(key, now)
            return
        self._ok("check_timeout")
        if not ok:
            self.status.check_failures += 1
            self._fail("check", f"haproxy -c rejected the new config: {output[-2000:]}")
            self._back_off(key, now)
            return
        self._ok("check")
        if check.kind == "reload":
            self._commit_reload(check, now)
        else:
            self._commit_sync(check, now)

    def _commit_reload(self, check: _Check, now: float) -> None:
        snapshot = check.snapshot
        restored = self._save_server_state(snapshot)
        try:
            self._write_maps(snapshot, {})
            check.candidate.replace(self.proxy.config_path)
        except OSError as exc:
            self._fail("config_write", f"installing the new config: {exc}")
            self._back_off("reload", now)
            return
        self.status.config_hash = _digest(check.text)
        try:
            pid = self.proxy.reload()
        except (HAProxyError, OSError) as exc:
            self._fail("reload", str(exc))
            self._back_off("reload", now)
            self._running = None
            return
        self._ok("reload", "config_write", "runtime")
        self.pacer.record(now)
        self._succeeded("reload")
        self._succeeded("runtime")
        self.status.reloads += 1
        if any(r.startswith("refill") for r in self._reload_reasons.values()):
            self._refills += 1
            self._last_refill = self.wall()
        self._reload_reasons.clear()
        self._master_reloads = self._show_reloads()
        self._draining.clear()
        self._placement = {}
        self._reset_pool()
        self._backends = {s.name: structure(s) for s in snapshot.services}
        self._running = {
            s.name: s.with_instances(
                tuple(
                    i if (s.name, server_name(i)) in restored else replace(i, drain=False)
                    for i in s.instances
                )
            )
            for s in snapshot.services
        }
        self._file_dirty_at = None
        self._dirty.update(self._running.keys() | self.desired.keys())
        self._pending.clear()
        self._mark_applied()
        self._write_applied()
        self._apply_runtime(now)  # what changed while the check ran, and drain states
        log.info(
            "reloaded haproxy (worker %s): %d services, %d instances",
            pid,
            len(snapshot.services),
            snapshot.instance_count(),
        )
        self._update_status(now)  # readers see the reload as soon as it serves

    def _save_server_state(self, snapshot: Snapshot) -> set[tuple[str, str]]:
        """Dump the servers' states for the new worker, keeping only those that agree with the
        new config (a server it changes takes its value); returns the servers kept."""
        path = self.options.server_state_file
        if not path:
            return set()
        keep: set[tuple[str, str]] = set()
        try:
            states = self.proxy.servers_state()
            wanted = {(s.name, server_name(i)): i for s in snapshot.services for i in s.instances}
            for st in states:
                inst = wanted.get((st.backend, st.server))
                if inst is not None and _agrees(st, inst):
                    keep.add((st.backend, st.server))
            dump = "1\n# be_id be_name srv_id srv_name\n" + "\n".join(
                st.line for st in states if (st.backend, st.server) in keep
            )
            write_atomic(Path(path), filter_state_lines(dump, keep))
            self._ok("state_file")
            return keep
        except (OSError, HAProxyError) as exc:
            self._fail("state_file", f"server states not carried over: {exc}")
            with contextlib.suppress(OSError):
                Path(path).unlink()  # better none than an old one
            return set()

    # -- the file, kept in step with runtime changes -------------------------------------------

    def _maybe_sync_file(self, now: float) -> None:
        due = self._file_dirty_at
        if due is None or self._running is None or self._check is not None:
            return
        if now < due + self.settings.file_sync_delay_s or not self._due("file", now):
            return
        snapshot = Snapshot(tuple(self._running.values()))
        placement = dict(self._placement)
        if placement:
            text = render(snapshot, self.options, placement)
        else:
            text = self.render_fn(snapshot, self.options)
        self._submit_check("sync", snapshot, placement, text, now)

    def _commit_sync(self, check: _Check, now: float) -> None:
        try:
            self._write_maps(check.snapshot, check.placement)
            check.candidate.replace(self.proxy.config_path)
        except OSError as exc:
            self._fail("config_write", f"installing the synced config: {exc}")
            self._back_off("file", now)
            return
        self._ok("config_write")
        self._succeeded("file")
        self.status.config_hash = _digest(check.text)
        if check.generation == self._file_generation:
            self._file_dirty_at = None
        self._write_applied()

    def _write_maps(
        self, snapshot: Snapshot, placement: dict[str, str], only_missing: bool = False
    ) -> None:
        for path, text in (
            (self.options.map_file, render_map(snapshot, placement)),
            (self.options.check_map_file, render_check_map(snapshot, placement)),
        ):
            if path and not (only_missing and Path(path).exists()):
                write_atomic(Path(path), text)

    def _write_files_checked(
        self, snapshot: Snapshot, render_fn: Callable[[Snapshot, RenderOptions], str]
    ) -> bool:
        """At start: write the maps and a config `haproxy -c` accepts (synchronously)."""
        try:
            text = render_fn(snapshot, self.options)
            self._write_maps(snapshot, {})
            path = self.proxy.config_path
            candidate = path.with_name(path.name + ".candidate")
            write_atomic(candidate, text)
            if not self._check_now(candidate):
                return False
            candidate.replace(path)
        except Exception as exc:
            self._fail("config_write", repr(exc))
            return False
        self.status.config_hash = _digest(text)
        return True

    def _check_now(self, path: Path) -> bool:
        try:
            ok, output = self.proxy.check(path, self.settings.check_timeout_s)
        except HAProxyError as exc:
            self._fail("check_timeout", str(exc))
            return False
        if not ok:
            self.status.check_failures += 1
            self._fail("check", f"haproxy -c rejected the new config: {output[-2000:]}")
        return ok

    # -- adoption ------------------------------------------------------------------------------

    def _show_reloads(self) -> int | None:
        try:
            return self.proxy.show_proc(timeout=2.0)[0]
        except (OSError, HAProxyError):
            return None

    def _write_applied(self) -> None:
        """Record what HAProxy runs, so a later sidecar can adopt it without a reload."""
        path = self.settings.applied_file
        if path is None or self._running is None:
            return
        record = {
            "version": 1,
            "master_pid": self.proxy.pid,
            "master_reloads": self._master_reloads,
            "spares_free": self._spares_free,
            "spares_total": self._spares_total,
            "backends": {b: _hc_json(s[1]) for b, s in self._backends.items()},
            "placement": self._placement,
            "services": {
                name: {
                    "health_check": _hc_json(svc.health_check),
                    "slow_start": {i.key: i.slow_start_s for i in svc.instances if i.slow_start_s},
                    # server names that are not the instance id (IPv6 brackets replaced)
                    "keys": {
                        server_name(i): i.key for i in svc.instances if server_name(i) != i.key
                    },
                }
                for name, svc in self._running.items()
            },
        }
        try:
            write_atomic(path, json.dumps(record, sort_keys=True) + "\n", fsync=False)
        except OSError as exc:
            self._fail("state_file", f"writing {path}: {exc}")

    def _reconstruct(self) -> dict[str, Service] | None:
        """Read back what an adopted HAProxy runs; None when it cannot be trusted."""
        path = self.settings.applied_file
        if path is None or not self.map_mode:
            return None
        try:
            record = json.loads(path.read_text())
            live_reloads = self._show_reloads()
            if record.get("master_pid") != self.proxy.pid or (
                record.get("master_reloads") != live_reloads
            ):
                log.warning("haproxy was reloaded by someone else: its state is unknown")
                return None
            routes = self.proxy.show_map(str(self.options.map_file))
            states = self.proxy.servers_state()
        except (OSError, ValueError, HAProxyError) as exc:
            log.warning("cannot read back the adopted haproxy: %r", exc)
            return None
        by_backend: dict[str, list[ServerState]] = {}
        for st in states:
            by_backend.setdefault(st.backend, []).append(st)
        services: dict[str, Service] = {}
        meta = record.get("services", {})
        for name, backend in routes.items():
            info = meta.get(name)
            if info is None:
                return None  # routed but unknown to the record: do not guess
            hc = _hc_parse(info.get("health_check"))
            slow = info.get("slow_start", {})
            keys = info.get("keys", {})
            instances = []
            for st in by_backend.get(backend, []):
                inst = _instance_from_state(st, keys.get(st.server, st.server), slow)
                if inst is None:
                    return None
                instances.append(inst)
            services[name] = Service(name, hc).with_instances(tuple(instances))
        self._placement = {n: b for n, b in routes.items() if is_spare(b)}
        self._backends = {b: (b, _hc_parse(h)) for b, h in record.get("backends", {}).items()}
        used = set(self._placement.values())
        self._spares_total = int(record.get("spares_total", 0))
        self._spares_free = [s for s in record.get("spares_free", []) if s not in used]
        self._master_reloads = live_reloads
        return services

    # -- status and report -------------------------------------------------------------------

    def _mark_applied(self) -> None:
        self.status.generation += 1
        self.status.last_apply = self.wall()

    def _applied_index(self) -> int:
        """The watermark reported: the last complete view, once nothing but `lagging` waits."""
        if self._view_index is not None and not self._dirty:
            self.status.applied_index = max(self.status.applied_index, self._view_index)
        return self.status.applied_index

    def _lagging_services(self) -> dict[str, LaggingService]:
        out: dict[str, LaggingService] = {}
        names = set(self._pending) | set(self._held)
        if self._running is None:
            names |= set(self.desired)
        for name in sorted(names):
            if name in self._held:
                reason = "holding last-known-good instances (suddenly empty)"
            elif self._running is None:
                reason = "haproxy's running state is unknown: waiting for a reload"
            elif f"service {name}" in self._reload_reasons:
                reason = self._reload_reasons[f"service {name}"]
            else:
                reason = "waiting for a reload"
            out[name] = LaggingService(
                applied_index=self._svc_index.get(name, 0),
                reason=reason,
                since=_iso(self._lag_since.get(name) or self._held_wall(name)),
            )
        return out

    def _held_wall(self, name: str) -> float | None:
        since = self._held.get(name)
        return None if since is None else self.wall() - (self.clock() - since)

    def report(self) -> SidecarReport:
        """What this sidecar has applied (the data of its node under `sidecars/`)."""
        st = self.status
        return SidecarReport(
            host_id=self.host_id or "",
            realm=self.options.realm,
            applied_index=self._applied_index(),
            lagging=self._lagging_services(),
            stale=st.stale,
            stale_reasons=tuple(st.stale_reasons),
            reloads=st.reloads,
            runtime_updates=st.runtime_updates,
            last_error=st.last_error,
            last_error_at=_iso(st.last_error_at),
            failures=dict(st.failures),
            haproxy_version=self._haproxy_version(),
            sidecar_version=SIDECAR_VERSION,
            services=st.services,
            instances=st.instances,
            started_at=_iso(self.started_at),
        )

    def _haproxy_version(self) -> str | None:
        try:
            return self.proxy.version()
        except (OSError, HAProxyError):
            return None

    def _maybe_publish(self, now: float) -> None:
        if self.host_id is None or not self.source.connected or now < self._next_publish:
            return
        report = self.report()
        key = report.to_json()
        if key == self._published_key:
            return
        self.source.publish_report(replace(report, updated_at=_iso(self.wall())).to_json())
        self._published_key = key
        self._next_publish = now + self.settings.publish_interval_s

    def _update_status(self, now: float) -> None:
        st = self.status
        reasons = []
        if not self.source.connected:
            reasons.append("zookeeper unreachable: serving the last-known-good config")
        if self._held:
            reasons.append("holding last-known-good instances of: " + ", ".join(sorted(self._held)))
        if self._running is not None and (self._pending or self._dirty):
            reasons.append("changes pending")
        for reason in sorted(self._reload_reasons.values()):
            reasons.append(f"reload required: {reason}")
        for kind in sorted(self.failing):
            reasons.append(f"failing: {kind}")
        if not st.config_hash:
            with contextlib.suppress(OSError):
                st.config_hash = _digest(self.proxy.config_path.read_text())
        before = (st.stale, st.stale_reasons)
        st.stale_reasons = reasons
        st.stale = bool(reasons) or not self._have_view
        st.zk_connected = self.source.connected
        st.in_sync = (
            self._running is not None
            and not self._pending
            and not self._dirty
            and not self._reload_reasons
            and self._have_view
        )
        if self._running is not None:
            st.services = len(self._running)
            st.instances = sum(len(s.instances) for s in self._running.values())
        if before != (st.stale, st.stale_reasons) and st.stale:
            log.warning("stale: %s", "; ".join(reasons) or "no view yet")
        copy = self._status_snapshot()
        self._status_copy = copy
        self._write_status_file(copy)

    def _status_snapshot(self) -> dict[str, Any]:
        st = self.status
        d: dict[str, Any] = {k: v for k, v in st.__dict__.items() if k != "failures"}
        d["failures"] = dict(st.failures)
        d["stale_reasons"] = list(st.stale_reasons)
        d["last_apply_iso"] = _iso(st.last_apply)
        d["last_error_at"] = _iso(st.last_error_at)
        d["failing"] = {
            k: {"message": f.message, "since": _iso(f.since), "count": f.count}
            for k, f in sorted(self.failing.items())
        }
        d["reload_required"] = sorted(self._reload_reasons.values())
        d["applied_index"] = self._applied_index()
        d["lagging"] = {
            n: {"applied_index": lag.applied_index, "reason": lag.reason, "since": lag.since}
            for n, lag in self._lagging_services().items()
        }
        d["pool"] = {
            "size": self._spares_total,
            "free": len(self._spares_free),
            "used": self._spares_total - len(self._spares_free),
            "low_water": self._low_water() if self._spares_total else 0,
            "placed": dict(sorted(self._placement.items())),
            "refills": self._refills,
            "last_refill": _iso(self._last_refill),
        }
        d["haproxy"] = {
            "pid": self.proxy.pid,
            "adopted": st.adopted,
            "reloads_by_master": self._master_reloads,
        }
        check = self._check
        d["check"] = (
            None
            if check is None
            else {"kind": check.kind, "running_s": round(self.clock() - check.started, 3)}
        )
        d["host_id"] = self.host_id
        d["report"] = self.source.report_counters() if self.host_id else {}
        return d

    def _write_status_file(self, status: dict[str, Any]) -> None:
        path = self.settings.status_file
        if path is None:
            return
        text = json.dumps(status, indent=2, sort_keys=True) + "\n"
        try:
            if path.exists() and path.read_text() == text:
                return
            write_atomic(path, text, fsync=False)
        except OSError as exc:
            self._fail("status_file", f"writing {path}: {exc}")
            return
        if "status_file" in self.failing:
            self._ok("status_file")


# ----------------------------------------------------------------------------- helpers


def _key(check_kind: str) -> str:
    """The backoff key of a check's kind."""
    return "reload" if check_kind == "reload" else "file"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _undrained(service: Service) -> Service:
    if not any(i.drain for i in service.instances):
        return service
    return service.with_instances(tuple(replace(i, drain=False) for i in service.instances))


def _agrees(state: ServerState, inst: Instance) -> bool:
    """True when a live server is what the new config says of it (so its state may carry over)."""
    addr, _, port = inst.target.rpartition(":")
    return (
        state.maint == (admin_state(inst) == "maint")
        and state.drain == (admin_state(inst) == "drain")
        and state.weight == inst.weight
        and state.address == addr.strip("[]")
        and state.port == int(port)
    )


def _hc_json(hc: object) -> dict[str, Any] | None:
    if not isinstance(hc, HealthCheck):
        return None
    return {"path": hc.path, "interval_ms": hc.interval_ms, "timeout_ms": hc.timeout_ms}


def _hc_parse(value: object) -> HealthCheck | None:
    if not isinstance(value, dict):
        return None
    return HealthCheck(str(value["path"]), int(value["interval_ms"]), int(value["timeout_ms"]))


def _instance_from_state(state: ServerState, key: str, slow: dict[str, int]) -> Instance | None:
    parsed = split_instance_id(key)
    if parsed is None:
        return None
    host, port = parsed
    return Instance(
        host=host,
        port=port,
        enabled=not state.maint,
        weight=state.weight,
        address="" if state.address == host else state.address,
        drain=state.drain and not state.maint,
        slow_start_s=int(slow.get(key, 0)),
    )
