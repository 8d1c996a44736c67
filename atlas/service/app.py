"""`SmartService(name, config=module)`: the Flask app every service of the cluster starts from."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import flask
from flask import Flask, Response

from atlas.client import Session
from atlas.client.config import (
    ConfigLoadError,
    MissingSettings,
    ServiceSettings,
    defaults_of,
    load,
)
from atlas.contract import check_service_name
from atlas.envvars import SERVICE
from atlas.service import logs
from atlas.service.health import Health, database_check, redis_check
from atlas.service.problems import ProblemApi, is_unexpected, problem_response
from atlas.service.reporting import Reporter, make_reporter
from atlas.service.wsgi import ServiceMiddleware

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import scoped_session

log = logging.getLogger(__name__)

T = TypeVar("T")

TRUE = ("1", "true", "yes", "on")


class Secret(str):
    """A secret placeholder in a config module: `DB_PASSWORD = secret()`; Atlas fills it."""

    __slots__ = ()


def secret(default: str = "") -> str:
    """Declare a secret setting (its value comes from Atlas; never shown in /environment)."""
    return Secret(default)


class PerProcess(Generic[T]):
    """A value built on first use in each process, rebuilt after a fork (thread-safe)."""

    def __init__(self, build: Callable[[], T], after_fork: Callable[[T], None] | None = None):
        self._build = build
        self._after_fork = after_fork
        self._lock = threading.Lock()
        self._value: T | None = None
        self._pid = 0
        # Objects inherited across a fork are kept referenced here: garbage-collecting them in
        # the child would close sockets the parent still uses.
        self._inherited: list[T] = []

    def get(self) -> T:
        """The value of this process, built now if needed."""
        value, pid = self._value, self._pid
        if value is not None and pid == os.getpid():
            return value
        with self._lock:
            if self._value is not None and self._pid != os.getpid():
                if self._after_fork is not None:
                    self._after_fork(self._value)
                self._inherited.append(self._value)
                self._value = None
            if self._value is None:
                self._value = self._build()
                self._pid = os.getpid()
            return self._value

    def peek(self) -> T | None:
        """The value if this process built it already, else None (never builds)."""
        return self._value if self._pid == os.getpid() else None


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in TRUE


def _sqlalchemy_url(url: str) -> str:
    """postgres:// and postgresql:// without a driver → psycopg 3 (the driver we install)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class SmartService(Flask):
    """A Flask app with smart config, problem+json API, health checks, JSON logs, request ids,
    a smart client, lazy Redis / SQLAlchemy, error reporting and self-registration settings.

    Settings are the config module's UPPER_CASE names, overridden by Atlas's values for the
    realm (secrets included; last-known-good copy when ATLAS_CONFIG_CACHE_KEY is set), then by
    `overrides`. `offline=True` (or ATLAS_OFFLINE=1) skips Atlas: the module's defaults only,
    realm from ATLAS_REALM (default `local`) — for tests.
    """

    def __init__(
        self,
        name: str,
        config: ModuleType | Mapping[str, Any] | None = None,
        *,
        import_name: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        offline: bool | None = None,
        required: Iterable[str] = (),
        load_options: Mapping[str, Any] | None = None,
        **flask_options: Any,
    ) -> None:
        check_service_name(name)
        if import_name is None:
            import_name = (
                config.__name__.rpartition(".")[0] or config.__name__
                if isinstance(config, ModuleType)
                else name.replace("-", "_")
            )
        super().__init__(import_name, **flask_options)
        self.service_name = name
        defaults = defaults_of(config)
        logs.configure_logging(name, None, str(defaults.get("LOG_LEVEL", "INFO")))

        self.secret_keys = frozenset(k for k, v in defaults.items() if isinstance(v, Secret))
        self.declared_keys = frozenset(defaults)
        self.atlas_url = (load_options or {}).get("atlas_url") or SERVICE.get("ATLAS_URL")
        if offline is None:
            offline = bool(SERVICE.get("ATLAS_OFFLINE"))
        self.settings = self._load(offline, load_options or {})
        self.atlas_keys = frozenset(self.settings) if not offline else frozenset()
        merged = {k: (str(v) if isinstance(v, Secret) else v) for k, v in defaults.items()}
        merged.update(self.settings)
        merged.update(overrides or {})
        missing = [k for k in required if merged.get(k) in (None, "")]
        if missing:
            raise MissingSettings(name, missing, self.settings.source)
        self.config.update(merged)
        self.realm: str = self.settings.realm
        logs.set_realm(self.realm)
        logging.getLogger().setLevel(str(self.config.get("LOG_LEVEL", "INFO")).upper())

        header = self.config.get("ATLAS_REQUEST_ID_HEADER") or SERVICE.get(
            "ATLAS_REQUEST_ID_HEADER"
        )
        self.wsgi_app = ServiceMiddleware(  # type: ignore[method-assign]
            self.wsgi_app, header, access_log=bool(self.config.get("ACCESS_LOG", True))
        )

        self.reporter: Reporter = make_reporter(self.config, self.realm, name)
        self.report_failures = 0  # reporter calls that raised (each is logged)
        self.api = ProblemApi(self, handler=self.problem, catch_all_404s=True)
        self.register_error_handler(Exception, self.problem)

        self._client: PerProcess[Session] = PerProcess(Session)
        self._redis: PerProcess[Redis] = PerProcess(self._build_redis)
        self._engine: PerProcess[Engine] = PerProcess(
            self._build_engine, after_fork=lambda e: e.dispose(close=False)
        )
        self._db: PerProcess[scoped_session[Any]] = PerProcess(self._build_db)
        if self.config.get("DATABASE_URL"):
            self.teardown_appcontext(self._remove_db_session)

        self.health = Health(self)
        if self.config.get("REDIS_URL"):
            self.health.add_check(redis_check(self))
        if self.config.get("DATABASE_URL"):
            self.health.add_check(database_check(self))
        log.info(
            "service %s booted in realm %s (config version %s from %s)",
            name, self.realm, self.settings.version, self.settings.source,
        )  # fmt: skip

    # ---------------------------------------------------------------- config

    def _load(self, offline: bool, options: Mapping[str, Any]) -> ServiceSettings:
        if offline:
            realm = SERVICE.get("ATLAS_REALM") or "local"
            return ServiceSettings(
                {}, service=self.service_name, realm=realm, version=0, source="offline"
            )
        # Atlas's values alone (defaults merged by the caller): then we know which keys Atlas set.
        # ATLAS_REALM, when set, is the realm the process expects: another one is refused.
        options = {"realm": SERVICE.get("ATLAS_REALM"), **options}
        try:
            return load(self.service_name, defaults=None, **options)
        except MissingSettings:
            raise
        except ConfigLoadError as exc:
            raise ConfigLoadError(
                f"{exc}. (To boot on the config module's defaults alone, without Atlas, "
                "set ATLAS_OFFLINE=1.)"
            ) from None

    # -------------------------------------------------------------- clients

    @property
    def client(self) -> Session:
        """The smart client of this process (service:// URLs, retries, request id passed on)."""
        return self._client.get()

    @property
    def redis(self) -> Redis:
        """redis-py client for REDIS_URL, built on first use."""
        return self._redis.get()

    @property
    def db_engine(self) -> Engine:
        """SQLAlchemy engine for DATABASE_URL, built on first use."""
        return self._engine.get()

    @property
    def db(self) -> scoped_session[Any]:
        """SQLAlchemy session of the current thread for DATABASE_URL; removed on teardown."""
        return self._db.get()

    def _setting(self, key: str, what: str) -> str:
        value = self.config.get(key)
        if not value:
            raise RuntimeError(f"{key} is not configured: set it to use {what} (config or Atlas)")
        return str(value)

    def _build_redis(self) -> Redis:
        import redis

        timeout = float(self.config.get("REDIS_TIMEOUT_S", 2.0))
        return redis.Redis.from_url(
            self._setting("REDIS_URL", "current_app.redis"),
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )

    def _build_engine(self) -> Engine:
        from sqlalchemy import create_engine

        url = _sqlalchemy_url(self._setting("DATABASE_URL", "current_app.db"))
        connect_args: dict[str, Any] = {}
        if url.startswith("postgresql"):
            connect_args["connect_timeout"] = int(self.config.get("DATABASE_TIMEOUT_S", 2))
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    def _build_db(self) -> scoped_session[Any]:
        from sqlalchemy.orm import scoped_session, sessionmaker

        return scoped_session(sessionmaker(bind=self.db_engine))

    def _remove_db_session(self, _exc: BaseException | None) -> None:
        session = self._db.peek()
        if session is not None:
            session.remove()

    # ---------------------------------------------------------------- errors

    def problem(self, exc: BaseException) -> Response:
        """Render any error as problem+json; report unexpected ones to Sentry / Bugsnag."""
        if is_unexpected(exc):
            try:
                self.reporter.report(exc)
            except Exception:
                self.report_failures += 1
                log.exception("the error reporter (%s) failed", self.reporter.name)
        return problem_response(exc)

    # ------------------------------------------------------- registration

    def option(self, key: str, default: Any = None) -> Any:
        """A deployment option: the environment variable (as `atlas.envvars.SERVICE` declares
        it: ConfigError naming it if bad), else the setting, else `default`."""
        var = SERVICE[key]
        if var.is_set():
            return var.read()
        return self.config.get(key, default)

    def registers(self) -> bool:
        """Whether the process attaches itself to Atlas (ATLAS_REGISTER: auto = in realm local)."""
        value = str(self.option("ATLAS_REGISTER", "auto")).strip().lower()
        if value == "auto":
            return self.realm == "local" and self.settings.source != "offline"
        return value in TRUE


def current_service() -> SmartService:
    """`flask.current_app`, typed as the SmartService it is."""
    app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(app, SmartService):
        raise RuntimeError("the current app is not a SmartService")
    return cast(SmartService, app)
