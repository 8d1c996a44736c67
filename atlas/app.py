"""The Flask application factory and the Atlas extension that wires its services."""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from flask import Flask, Response, jsonify

from atlas import __version__
from atlas.api import init_api
from atlas.api.auth import Authenticator, Principal
from atlas.api.problems import problem_response
from atlas.config import Settings
from atlas.errors import AtlasError
from atlas.metrics import Metrics
from atlas.mirror import Reconciler, ZkMirror
from atlas.registry import Mirror, Registry, build_models_for
from atlas.registry.audit import AuditLog
from atlas.registry.config import ConfigStore
from atlas.registry.crypto import Sealer, sealer_for
from atlas.registry.tokens import TokenStore
from atlas.ui import ui_blueprint

log = logging.getLogger(__name__)


class AtlasExtension:
    """Holds the registry, the authenticator and the mirror of one app (Flask's init_app pattern)."""

    def __init__(self, app: Flask | None = None, **kwargs: Any) -> None:
        self.settings: Settings
        self.registry: Registry
        self.authenticator: Authenticator
        self.mirror: Mirror | None = None
        self.metrics = Metrics()
        self.started = time.time()
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
        """Bind to an app: build models and the registry unless they are injected."""
        self.settings = settings
        self.mirror = mirror
        self.reconciler: Reconciler | None = None
        if mirror is None and registry is None and settings.zk_hosts:
            zk = ZkMirror(settings.zk_hosts, settings.realm, timeout=settings.zk_timeout_s)
            mirror = zk
            if settings.reconciler_enabled:
                self.reconciler = Reconciler(zk, interval=settings.reconcile_interval_s)
        if registry is None:
            registry = Registry(build_models_for(settings), mirror=mirror)
        self.registry = registry
        self.mirror = mirror
        if isinstance(mirror, ZkMirror):
            mirror.bind(registry)
            mirror.start()
        if self.reconciler is not None:
            self.reconciler.start()
        self.config = ConfigStore(registry, sealer or sealer_for(settings), settings.realm)
        self.tokens = TokenStore(registry, cache_s=settings.token_cache_s)
        self.audit = AuditLog(registry, queue_size=settings.audit_queue_size)
        self.authenticator = Authenticator(settings, self.tokens)
        atexit.register(self.audit.flush)
        app.extensions["atlas"] = self
        self.metrics.init_app(app)

    def close(self) -> None:
        """Stop background threads and ZooKeeper sessions (tests, shutdown)."""
        self.audit.close()
        if self.reconciler is not None:
            self.reconciler.stop()
        if isinstance(self.mirror, ZkMirror):
            self.mirror.stop()

    def info(self, principal: Principal | None = None) -> dict[str, Any]:
        """The body of GET /v1/info."""
        return {
            "realm": self.settings.realm,
            "version": __version__,
            "auth": "disabled (local realm)" if self.settings.auth_disabled else "bearer",
            "uptime_s": round(time.time() - self.started, 3),
            "mirror": self.registry.mirror.status(),
            "caller": {"kind": principal.kind, "token_id": principal.token_id}
            if principal
            else None,
        }

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


def create_app(
    config: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    registry: Registry | None = None,
    mirror: Mirror | None = None,
) -> Flask:
    """Create the Atlas WSGI app; `config` overrides Flask config, `settings` the ATLAS_* ones."""
    settings = settings or Settings.from_env()
    app = Flask("atlas")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
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
