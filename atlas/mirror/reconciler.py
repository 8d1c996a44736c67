"""The reconciler: one leader per realm (a kazoo Lock) compares DynamoDB with ZooKeeper."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import CancelledError, LockTimeout, NodeExistsError, NoNodeError
from kazoo.recipe.lock import Lock

from atlas.contract import Layout
from atlas.errors import AtlasError
from atlas.mirror.zk import ZK_ERRORS, MirrorConflict, ZkMirror

log = logging.getLogger(__name__)

#: A contender node of kazoo's Lock: `<uuid>__lock__<sequence>`, ordered by the sequence.
_CONTENDER_RE = re.compile(r"__lock__(-?\d{10})$")
#: What the leader publishes of a reconcile report: numbers and times only.
PUBLISHED_FIELDS = ("at", "duration_s", "services", "drift_found", "drift_fixed")


class LeaderTask(Protocol):
    """Periodic work that only the leader does (e.g. atlas.registry.expiry.ExpirySweep).

    It must be safe if, for a moment during a handover, two processes run it at once (the
    expiry sweep's writes are conditional on the versions it read).
    """

    name: str
    interval_s: float

    def run_once(self) -> Any:
        """Do one round of the work; errors are counted and logged by the reconciler."""


class Reconciler:
    """Runs `mirror.reconcile()` while this process leads: at election, on every new session,
    periodically.

    Leadership is kazoo's Lock recipe (what its Election wraps), acquired with a bounded wait
    so that a contender whose client was replaced (a wiped server, an expired session) never
    stays blocked on the old one: it contends again on the mirror's current client.
    """

    def __init__(
        self,
        mirror: ZkMirror,
        interval: float = 60.0,
        identifier: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        contend_s: float = 5.0,
        tasks: Sequence[LeaderTask] = (),
    ) -> None:
        self.mirror = mirror
        self.interval = interval
        self.identifier = identifier or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.contend_s = contend_s
        self._stopped = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        # Leader tasks run on threads of their own, beside reconcile() (which may take long on
        # a large realm), while `_leading` is set.
        self.tasks = list(tasks)
        self._leading = threading.Event()
        self._task_threads: list[threading.Thread] = []
        self._task_lock = threading.Lock()
        self.task_counters: dict[str, dict[str, int]] = {
            t.name: {"runs": 0, "failures": 0} for t in self.tasks
        }
        # The contender in progress, and the client it contends on (set by our thread only).
        self._lock: Lock | None = None
        self._lock_client: KazooClient | None = None
        self.reconciles = 0  # reconciles this process ran as leader (published with the report)
        self.publish_failures = 0  # reports that could not be published (each is logged)
        mirror.add_connect_listener(self._on_connect)

    def start(self) -> None:
        """Contend for leadership in a background thread. Not thread-safe; call once."""
        self._thread = threading.Thread(target=self._run, name="atlas-reconciler", daemon=True)
        self._thread.start()
        for task in self.tasks:
            t = threading.Thread(
                target=self._run_task, args=(task,), name=f"atlas-{task.name}", daemon=True
            )
            t.start()
            self._task_threads.append(t)

    def stop(self) -> None:
        """Stop contending (and leading). Not thread-safe; call once."""
        self._stopped.set()
        self._kick.set()
        lock = self._lock
        if lock is not None:
            lock.cancel()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for t in self._task_threads:
            t.join(timeout=10)

    @property
    def leading(self) -> bool:
        """True while this process leads. Thread-safe."""
        return self._leading.is_set()

    def _task_count(self, task: LeaderTask, counter: str) -> None:
        with self._task_lock:
            self.task_counters[task.name][counter] += 1

    def _run_task(self, task: LeaderTask) -> None:
        # A leader task's own thread: run it every interval while leading; nothing escapes.
        while not self._stopped.is_set():
            if not self._leading.wait(timeout=0.5):
                continue
            try:
                task.run_once()
                self._task_count(task, "runs")
            except Exception as exc:
                self._task_count(task, "failures")
                self.mirror.metrics.swallowed(f"leader_task_{task.name}")
                if isinstance(exc, (*ZK_ERRORS, AtlasError)):
                    log.warning("leader task %s failed, retrying: %r", task.name, exc)
                else:
                    log.exception("leader task %s crashed, retrying", task.name)
            self._stopped.wait(task.interval_s)

    def trigger(self) -> None:
        """Ask the leader (if this process is it) to reconcile now. Thread-safe."""
        self._kick.set()

    def _on_connect(self) -> None:
        # On the mirror's owner thread, for every new session: reconcile now (a wiped or
        # restarted server needs it), and stop waiting on a client that was replaced.
        self._kick.set()
        lock = self._lock
        if lock is not None and self._lock_client is not self.mirror.client:
            lock.cancel()

    def _run(self) -> None:
        while not self._stopped.is_set():
            if not self.mirror.connected:
                self._stopped.wait(0.1)
                continue
            client = self.mirror.client
            lock = self._lock
            if lock is None or self._lock_client is not client or lock.cancelled:
                # One contender per client: its predecessor watch is registered once, however
                # many bounded waits it takes.
                lock = client.Lock(self.mirror.layout.election, self.identifier)
                self._lock, self._lock_client = lock, client
            try:
                if lock.acquire(timeout=self.contend_s):
                    try:
                        self._lead(client)
                    finally:
                        self._release(lock)
            except (LockTimeout, CancelledError):
                continue  # someone else leads, or our client was replaced: contend again
            except ZK_ERRORS as exc:
                self.mirror.metrics.swallowed("reconciler_contend")
                log.info("reconciler contention interrupted: %r", exc)
                self._stopped.wait(0.2)
            except Exception:  # the thread must outlive any single failure
                self.mirror.metrics.swallowed("reconciler")
                log.exception("reconciler error; contending again shortly")
                self._stopped.wait(1.0)

    def _release(self, lock: Lock) -> None:
        try:
            lock.release()
        except ZK_ERRORS as exc:  # the session that held it is gone, and the lock node with it
            self.mirror.metrics.swallowed("reconciler_release")
            log.info("reconciler lock release failed: %r", exc)

    def _still_leading(self, client: KazooClient, session: int | None) -> bool:
        # A new session (the old one expired) means our lock node is gone: step down.
        return (
            not self._stopped.is_set()
            and self.mirror.connected
            and self.mirror.client is client
            and _session_id(client) == session
        )

    def _lead(self, client: KazooClient) -> None:
        session = _session_id(client)
        self.mirror.set_leader(True)
        self._leading.set()
        log.info("this process (%s) now leads reconciliation", self.identifier)
        try:
            next_run = 0.0
            while self._still_leading(client, session):
                if self._kick.is_set() or self.clock() >= next_run:
                    self._kick.clear()
                    try:
                        report = self.mirror.reconcile()
                        next_run = self.clock() + self.interval
                        self._publish(client, report)
                    except (*ZK_ERRORS, MirrorConflict, AtlasError) as exc:
                        self.mirror.metrics.reconcile_failed("error")
                        log.warning("reconcile failed, retrying soon: %r", exc)
                        next_run = self.clock() + min(self.interval, 1.0)
                    except Exception:
                        self.mirror.metrics.reconcile_failed("crash")
                        log.exception("reconcile crashed, retrying soon")
                        next_run = self.clock() + min(self.interval, 5.0)
                self._kick.wait(timeout=0.25)
        finally:
            self._leading.clear()
            self.mirror.set_leader(False)

    def _publish(self, client: KazooClient, report: dict[str, Any]) -> None:
        """Put the report's numbers on `Layout.reconciled`, where every process reads them."""
        self.reconciles += 1
        data = {k: report[k] for k in PUBLISHED_FIELDS if k in report}
        data["reconciles"] = self.reconciles
        raw = json.dumps(data, sort_keys=True).encode()
        path = self.mirror.layout.reconciled
        timeout = self.mirror.timeout
        try:
            try:
                client.set_async(path, raw).get(timeout=timeout)
            except NoNodeError:
                with contextlib.suppress(NodeExistsError):
                    client.create_async(path, raw, makepath=True).get(timeout=timeout)
        except ZK_ERRORS as exc:
            # The report is a courtesy: the next reconcile publishes again.
            self.publish_failures += 1
            log.info("could not publish the reconcile report: %r", exc)


def realm_view(client: KazooClient, layout: Layout, timeout: float) -> dict[str, Any]:
    """The realm's reconciler as ZooKeeper holds it, the same for every process that asks: who
    leads (the first contender of the election), who contends, the leader's last report.

    Thread-safe; every call is bounded by `timeout`. Raises ZooKeeper's errors.
    """
    client.sync_async(layout.root).get(timeout=timeout)
    try:
        children = client.get_children_async(layout.election).get(timeout=timeout)
    except NoNodeError:
        children = []
    ordered = sorted(
        (m.group(1), child) for child in children if (m := _CONTENDER_RE.search(child))
    )
    pending = [client.get_async(f"{layout.election}/{child}") for _, child in ordered]
    report_async = client.get_async(layout.reconciled)
    contenders = []
    for result in pending:
        try:
            data, _ = result.get(timeout=timeout)
        except NoNodeError:
            continue  # left the election meanwhile
        contenders.append(data.decode("utf-8", "replace") if data else "")
    try:
        raw, _ = report_async.get(timeout=timeout)
        last = json.loads(raw) if raw else None
    except (NoNodeError, ValueError):
        last = None
    return {
        "leader": contenders[0] if contenders else None,
        "contenders": contenders,
        "last_reconcile": last,
    }


def _session_id(client: KazooClient) -> int | None:
    cid = client.client_id
    return int(cid[0]) if cid else None
