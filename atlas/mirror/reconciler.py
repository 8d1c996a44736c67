"""The reconciler: one leader per realm (kazoo Election) compares DynamoDB with ZooKeeper."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from kazoo.client import KazooClient

from atlas.errors import AtlasError
from atlas.mirror.zk import ZK_ERRORS, MirrorConflict, ZkMirror

log = logging.getLogger(__name__)


class Reconciler:
    """Runs `mirror.reconcile()` while this process leads: at election, on reconnect, periodically."""

    def __init__(
        self,
        mirror: ZkMirror,
        interval: float = 60.0,
        identifier: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mirror = mirror
        self.interval = interval
        self.identifier = identifier or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self._stopped = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._election: object | None = None
        mirror.on_connect.append(self.trigger)

    def start(self) -> None:
        """Contend for leadership in a background thread."""
        self._thread = threading.Thread(target=self._run, name="atlas-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop contending (and leading)."""
        self._stopped.set()
        self._kick.set()
        election = self._election
        if election is not None:
            with contextlib.suppress(*ZK_ERRORS):
                election.cancel()  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(timeout=10)

    def trigger(self) -> None:
        """Ask the leader (if this process is it) to reconcile now."""
        self._kick.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            if not self.mirror.connected:
                self._stopped.wait(0.2)
                continue
            client = self.mirror.client
            try:
                election = client.Election(self.mirror.layout.election, self.identifier)
                self._election = election
                election.run(self._lead, client)
            except ZK_ERRORS as exc:
                log.info("reconciler election interrupted: %r", exc)
                self._stopped.wait(0.5)
            except Exception:  # the thread must outlive any single failure
                log.exception("reconciler error; contending again shortly")
                self._stopped.wait(1.0)
            finally:
                self.mirror.leader = False

    def _still_leading(self, client: KazooClient, session: int | None) -> bool:
        # A new session (the old one expired) means our election node is gone: step down.
        return (
            not self._stopped.is_set()
            and self.mirror.connected
            and self.mirror.client is client
            and _session_id(client) == session
        )

    def _lead(self, client: KazooClient) -> None:
        session = _session_id(client)
        self.mirror.leader = True
        log.info("this process (%s) now leads reconciliation", self.identifier)
        next_run = 0.0
        while self._still_leading(client, session):
            if self._kick.is_set() or self.clock() >= next_run:
                self._kick.clear()
                try:
                    self.mirror.reconcile()
                    next_run = self.clock() + self.interval
                except (*ZK_ERRORS, MirrorConflict, AtlasError) as exc:
                    log.warning("reconcile failed, retrying soon: %r", exc)
                    next_run = self.clock() + min(self.interval, 1.0)
                except Exception:
                    log.exception("reconcile crashed, retrying soon")
                    next_run = self.clock() + min(self.interval, 5.0)
            self._kick.wait(timeout=0.25)


def _session_id(client: KazooClient) -> int | None:
    cid = client.client_id
    return int(cid[0]) if cid else None
