"""The Flask application factory and the Atlas extension that wires its services."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from importlib.resources import files
from typing import Any

from flask import Flask, Response, jsonify, request

from atlas import __version__
from atlas.api import init_api
from atlas.api.auth import Authenticator, Principal
from atlas.api.http import BoundedRequest
from atlas.api.problems import problem_response
from atlas.config import Settings
from atlas.errors import AtlasError
from atlas.fleet import Fleet, NullFleet, ZkFleet
from atlas.metrics import web as metrics_web
from atlas.metrics.instruments import AtlasMetrics
from atlas.mirror import Reconciler, ZkMirror
from atlas.mirror.reconciler import realm_view
from atlas.mirror.zk import ZK_ERRORS
from atlas.registry import Mirror, Registry, ScanPolicy, build_models_for
from atlas.registry.audit import AuditLog
from atlas.registry.config import ConfigStore
from atlas.registry.crypto import Sealer, sealer_for
from atlas.registry.expiry import ExpirySweep
from atlas.registry.tokens import TokenStore
from atlas.ui import ui_blueprint
from atlas.view import IndexedMirror, ZkView
from atlas.view import index as write_index

log = logging.getLogger(__name__)

REALM_VIEW_TIMEOUT_S = 2.0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# Extensions whose background work runs in this process, held weakly: an app a test drops
# can be garbage-collected; one still alive at interpreter exit is closed then.
_RUNNING: weakref.WeakSet[AtlasExtension] = weakref.WeakSet()


@atexit.register
def _close_running() -> None:
    for ext in list(_RUNNING):
        ext.close()


class AtlasExtension:
    """Holds the registry, the authenticator and the mirror of one app (Flask's init_app pattern).

    `init_app` only builds objects: no ZooKeeper session, no thread. `start()` begins the
    background work (mirror session and pump, reconciler) in the process that serves:
    gunicorn calls it in each worker after the fork (`atlas.gunicorn_conf`), and the first
    request does it under any other WSGI server. `close()` stops it. Both are thread-safe
    and idempotent.
    """

    def __init__(self, app: Flask | None = None, **kwargs: Any) -> None:
        self.settings: Settings
        self.registry: Registry
        self.authenticator: Authenticator
        self.mirror: Mirror | None = None
        self.reconciler: Reconciler | None = None
        self.metrics: AtlasMetrics
        self.view: ZkView | None = None
        self.fleet: Fleet = NullFleet()
        self.reads = ReadCounters()
        self.started = time.time()
        self._lock = threading.Lock()
        self._started_in: int | None = None  # pid of the process that started background work
        self._closed = False
        self._fork_warned = False
        self._own_mirror = False
        if app is not None:
            self.init_app(app, **kwargs)

    def init_app(
        self,
        app: Flask,
        settings: Settings,
        registry: Registry | None = None,
        mirror: Mirror | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        """Bind to an app: build models and the registry unless they are injected (no I/O)."""
        self.settings = settings
        self.metrics = AtlasMetrics(realm=settings.realm)
        self.reads = ReadCounters(self.metrics.read)
        self._own_mirror = mirror is None and registry is None and bool(settings.zk_hosts)
        if self._own_mirror:
            mirror = ZkMirror(
                settings.zk_hosts,
                settings.realm,
                timeout=settings.zk_timeout_s,
                metrics=self.metrics.mirror,
            )
        if registry is None:
            registry = Registry(
                build_models_for(settings),
                mirror=mirror,
                metrics=self.metrics.store,
                scan=ScanPolicy.of(settings),
            )
        self.registry = registry
        self.mirror = mirror
        if isinstance(mirror, ZkMirror):
            mirror.bind(registry)
            self.fleet = ZkFleet(lambda: mirror.client, settings.realm)
            if settings.view_enabled:
                self.view = self._build_view(mirror, registry)
        # Every write notes the zxid that published it (X-Atlas-Index) and tells the view.
        if not isinstance(registry.mirror, IndexedMirror):
            registry.mirror = IndexedMirror(registry.mirror)
        registry.mirror.listener = self.view
        self.config = ConfigStore(registry, sealer or sealer_for(settings), settings.realm)
        view = self.view
        self.tokens = TokenStore(
            registry,
            cache_s=settings.token_cache_s,
            generation=view.revocation_generation if view is not None else lambda: None,
            unwatched_s=settings.token_cache_unwatched_s,
            on_revoke=view.bump_revocations if view is not None else None,
        )
        self.audit = AuditLog(
            registry, queue_size=settings.audit_queue_size, metrics=self.metrics.audit
        )
        self.authenticator = Authenticator(settings, self.tokens)
        app.extensions["atlas"] = self
        app.before_request(self.ensure_started)
        app.before_request(_begin_write_note)
        app.after_request(_index_headers)
        metrics_web.init_app(app, self.metrics)

    def _build_view(self, mirror: ZkMirror, registry: Registry) -> ZkView:
        def truth() -> dict[str, tuple[int, int]]:
            return {s.name: (s.version, s.config_version) for s in registry.scan_services()}

        return ZkView(
            self.settings.realm,
            lambda: mirror.client,
            subscribe=mirror.add_connect_listener,
            truth=truth,
            dirty=lambda: mirror.dirty,
            max_waiters=self.settings.max_waiters,
            on_error=self.metrics.swallowed_error,
        )

    @property
    def running(self) -> bool:
        """True once background work was started in this process and not yet stopped."""
        return self._started_in == os.getpid() and not self._closed

    def start(self) -> None:
        """Start the background work in this process: ZooKeeper session and pump, reconciler.

        Call it after forking (gunicorn's post_worker_init does). Thread-safe; a second call,
        or a call after `close()`, does nothing.
        """
        with self._lock:
            pid = os.getpid()
            if self._closed or self._started_in == pid:
                return
            if self._started_in is not None:
                # Threads and sockets do not survive a fork: this copy cannot be restarted.
                if not self._fork_warned:
                    self._fork_warned = True
                    log.warning(
                        "background work was started in process %s before a fork; process %s "
                        "runs without ZooKeeper mirror and reconciler (start it after the fork)",
                        self._started_in,
                        pid,
                    )
                return
            self._started_in = os.getpid()
            if isinstance(self.mirror, ZkMirror):
                self.mirror.start()
                if self.view is not None:
                    self.view.start()
                # Serve once the session is there (bounded), so that the first writes after a
                # start are published before they are acknowledged, as later ones are.
                wait = self.settings.zk_start_wait_s
                if wait and not self.mirror.wait_connected(wait):
                    log.warning(
                        "no ZooKeeper session after %.1fs: serving; writes are published "
                        "when it connects",
                        wait,
                    )
                if self._own_mirror and self.settings.reconciler_enabled:
                    # Built here, not in init_app: its election identity names this process.
                    self.reconciler = Reconciler(
                        self.mirror,
                        interval=self.settings.reconcile_interval_s,
                        tasks=[ExpirySweep(self.registry, self.audit)],
                    )
                    self.reconciler.start()
            _RUNNING.add(self)
            log.debug("background work started in process %s", os.getpid())

    def ensure_started(self) -> None:
        """`before_request` hook: start background work on the first request (thread-safe)."""
        if self._started_in != os.getpid() and not self._closed:
            self.start()

    def close(self) -> None:
        """Stop background work and write queued audit records (thread-safe, idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started_here = self._started_in == os.getpid()
        _RUNNING.discard(self)
        self.audit.close()
        if started_here:
            if self.reconciler is not None:
                self.reconciler.stop()
            if self.view is not None:
                self.view.stop()
            if isinstance(self.mirror, ZkMirror):
                self.mirror.stop()
            log.info("background work stopped in process %s", os.getpid())

    def info(self, principal: Principal | None = None) -> dict[str, Any]:
        """The body of GET /v1/info: the realm's facts (`reconciler`: the same whichever process
        answers) and this process's own (`process`, and its `mirror` counters)."""
        mirror = self.registry.mirror.status()
        uptime = round(time.time() - self.started, 3)
        return {
            "realm": self.settings.realm,
            "version": __version__,
            "auth": "disabled (local realm)" if self.settings.auth_disabled else "bearer",
            "uptime_s": uptime,
            "process": {
                "pid": os.getpid(),
                "id": self.identifier,
                "leads": bool(mirror.get("leader")),
                "started_at": _iso(self.started),
                "uptime_s": uptime,
            },
            "mirror": mirror,
            "reconciler": self.realm_view(),
            "view": self.view_status(),
            "caller": {"kind": principal.kind, "token_id": principal.token_id}
            if principal
            else None,
        }

    def mirror_pending(self, service: str) -> bool:
        """True while this process has a write of the service not yet in ZooKeeper (its mirror
        deferred it, or its view has not seen it published). Thread-safe."""
        mirror = self.mirror
        return (isinstance(mirror, ZkMirror) and service in mirror.dirty) or (
            self.view is not None and self.view.pending(service)
        )

    def view_status(self) -> dict[str, Any]:
        """The view's state (index, lag behind ZooKeeper, load state) and the read counters."""
        body: dict[str, Any] = (
            {"enabled": True, **self.view.status()} if self.view is not None else {"enabled": False}
        )
        body["reads"] = self.reads.snapshot()
        body["token_cache"] = dict(self.tokens.counters)
        return body

    @property
    def identifier(self) -> str:
        """This process's name in the reconciler election (`host:pid`)."""
        if self.reconciler is not None:
            return self.reconciler.identifier
        return f"{socket.gethostname()}:{os.getpid()}"

    def realm_view(self) -> dict[str, Any]:
        """The realm's reconciler as ZooKeeper has it (who leads, the leader's last reconcile);
        `known: false` with the reason when ZooKeeper cannot tell now."""
        if not isinstance(self.mirror, ZkMirror):
            return {"known": False, "reason": "no ZooKeeper mirror configured"}
        if not self.mirror.connected:
            return {"known": False, "reason": "ZooKeeper is not connected"}
        try:
            view = realm_view(self.mirror.client, self.mirror.layout, REALM_VIEW_TIMEOUT_S)
        except ZK_ERRORS as exc:
            return {"known": False, "reason": f"ZooKeeper did not answer: {exc!r}"[:200]}
        return {"known": True, **view}

    def readiness(self) -> tuple[dict[str, Any], int]:
        """The body and status of GET /readyz: DynamoDB must answer; mirror lag is reported."""
        checks: dict[str, Any] = {}
        ok = True
        try:
            self.registry.check_store()
            checks["dynamodb"] = {"ok": True}
        except AtlasError as exc:
            ok = False
            checks["dynamodb"] = {"ok": False, "detail": exc.detail}
        # /readyz is public: the mirror's summary only (hosts and errors are in /v1/info).
        mirror = self.registry.mirror.status()
        checks["mirror"] = {
            k: mirror[k] for k in ("configured", "connected", "lagging", "leader") if k in mirror
        }
        return {"status": "ready" if ok else "unavailable", "checks": checks}, 200 if ok else 503


class ReadCounters:
    """Plain counters of the read paths (for /v1/info and the metrics): reads served from the
    view, reads served from DynamoDB by reason, blocking queries by outcome. Thread-safe."""

    def __init__(self, metrics: Callable[[str, int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._metrics = metrics

    def add(self, name: str, n: int = 1) -> None:
        """Count one event: `view_hits`, `store_fallbacks.<reason>`, `blocking.<outcome>`..."""
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n
        if self._metrics is not None:
            self._metrics(name, n)

    def snapshot(self) -> dict[str, int]:
        """Every counter by name (a copy)."""
        with self._lock:
            return dict(self._counts)


def _begin_write_note() -> None:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        write_index.begin()
    else:
        write_index.end()  # nothing left over from an earlier request on this thread


def _index_headers(resp: Response) -> Response:
    """A write's response says where its change was published (X-Atlas-Index), or that it was
    not published yet (X-Atlas-Index-Pending: read it back with ?consistent=true)."""
    note = write_index.current()
    if note is None:
        return resp
    write_index.end()
    if resp.status_code >= 300:
        return resp
    if note.pending:
        resp.headers["X-Atlas-Index-Pending"] = "true"
    elif note.zxid is not None:
        resp.headers["X-Atlas-Index"] = str(note.zxid)
    return resp


def create_app(
    config: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    registry: Registry | None = None,
    mirror: Mirror | None = None,
) -> Flask:
    """Create the Atlas WSGI app; `config` overrides Flask config, `settings` the ATLAS_* ones.

    Only configures: nothing connects and no thread starts until the extension's `start()`
    (after gunicorn's fork, or on the first request).
    """
    settings = settings or Settings.from_env()
    app = Flask("atlas")
    app.request_class = BoundedRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        PROPAGATE_EXCEPTIONS=False,
    )
    if config:
        app.config.update(config)
    logging.getLogger("atlas").setLevel(settings.log_level.upper())

    AtlasExtension(app, settings=settings, registry=registry, mirror=mirror)
    init_api(app)
    app.register_blueprint(ui_blueprint)

    app.register_error_handler(Exception, problem_response)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        body, status = app.extensions["atlas"].readiness()
        return jsonify(body), status

    @app.get("/openapi.yaml")
    def openapi() -> Response:
        text = files("atlas").joinpath("openapi.yaml").read_text()
        return Response(text, mimetype="application/yaml")

    return app
