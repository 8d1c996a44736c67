"""`/healthcheck` and `/environment`, built on py-healthcheck (the maintained fork of Runscope's
`healthcheck`, whose last release imports `imp` and so fails on Python 3.12 and warns on 3.11).

Checks are added for each configured dependency (Redis when REDIS_URL is set, the database when
DATABASE_URL is set); a service adds its own with `app.health.add_check(fn)`, fn returning
(passed, output). Atlas is not a check: a service keeps serving on its last-known-good config
while Atlas is down, so Atlas's reachability is reported in the environment dump instead.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Response
from healthcheck import EnvironmentDump, HealthCheck

from atlas.service.redact import Redactor

if TYPE_CHECKING:
    from atlas.service.app import SmartService

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, Any]]


class Health:
    """The service's health check and environment dump (thread-safe: checks run per request)."""

    def __init__(self, app: SmartService) -> None:
        self.app = app
        self.check = HealthCheck(
            success_ttl=float(app.config.get("HEALTHCHECK_SUCCESS_TTL_S", 5)),
            failed_ttl=float(app.config.get("HEALTHCHECK_FAILED_TTL_S", 2)),
            exception_handler=self._exception,
            checkers=[],
        )
        self.environment = EnvironmentDump(
            include_os=True, include_python=False, include_process=False
        )
        self.environment.add_section("python", self._python)
        self.environment.add_section("process", self._process)
        self.environment.add_section("config", self._config)
        self.environment.add_section("atlas", self._atlas)
        self.failures = 0  # checks that raised (each is also logged)

        path = app.config.get("HEALTHCHECK_PATH", "/healthcheck")
        app.add_url_rule(path, "healthcheck", self.view_health)
        env_path = app.config.get("ENVIRONMENT_PATH", "/environment")
        if env_path:
            app.add_url_rule(env_path, "environment", self.view_environment)

    def add_check(self, func: Check) -> None:
        """Add a check: a function returning (passed, output), named by its __name__."""
        self.check.add_check(func)

    def _exception(self, checker: Check, exc: BaseException) -> tuple[bool, str]:
        self.failures += 1
        return False, self._redactor().scrub(f"{type(exc).__name__}: {exc}")

    def view_health(self) -> Response:
        """GET /healthcheck: 200 when every check passes, 500 naming the failing ones."""
        body, status, headers = self.check.run()
        return Response(self._redactor().scrub(body), status=status, headers=headers)

    def view_environment(self) -> Response:
        """GET /environment: os, python, process, config, atlas; secrets never shown."""
        redactor = self._redactor()
        body, status, headers = self.environment.run()
        # The sections ran with their own redactors; scrub with everything any of them hid.
        return Response(redactor.scrub(body), status=status, headers=headers)

    # ------------------------------------------------------------------ sections

    def _redactor(self) -> Redactor:
        app = self.app
        redactor = Redactor(app.secret_keys, app.atlas_keys - app.declared_keys)
        # Learn every secret up front, so any section's output can be scrubbed of all of them.
        redactor.mapping(dict(app.config))
        redactor.mapping(dict(os.environ))
        return redactor

    def _python(self) -> dict[str, Any]:
        return {
            "version": sys.version,
            "executable": sys.executable,
            "packages": {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()},
        }

    def _process(self) -> dict[str, Any]:
        redactor = self._redactor()
        return {
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            "environ": redactor.mapping(dict(os.environ)),
        }

    def _config(self) -> dict[str, Any]:
        return self._redactor().mapping(dict(self.app.config))

    def _atlas(self) -> dict[str, Any]:
        s = self.app.settings
        return {
            "service": self.app.service_name,
            "realm": self.app.realm,
            "url": self.app.atlas_url,
            "config_source": s.source,
            "config_version": s.version,
            "config_age_s": round(s.age_s, 1),
        }


def redis_check(app: SmartService) -> Check:
    """A check that PINGs the configured Redis."""

    def redis() -> tuple[bool, str]:
        app.redis.ping()
        return True, "redis answers PING"

    return redis


def database_check(app: SmartService) -> Check:
    """A check that runs SELECT 1 on the configured database."""

    def database() -> tuple[bool, str]:
        from sqlalchemy import text

        with app.db_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True, f"{app.db_engine.dialect.name} answers SELECT 1"

    return database
