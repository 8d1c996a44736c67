"""Self-registration: this process's host:port attached to its service in Atlas, and taken out
with a drain on SIGTERM.

`Registration` speaks to Atlas's API; `Lifecycle` is the pure state machine the gunicorn master
drives from its main loop (one thread: the arbiter's; neither class is thread-safe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from atlas.contract import instance_id

log = logging.getLogger(__name__)

DEFAULT_DRAIN_S = 10.0
DEFAULT_TIMEOUT_S = 2.0


class Registration:
    """Attach / disable / detach one instance in Atlas; each call returns whether Atlas took it.

    Failures are logged and counted in `errors`, never raised: a service keeps serving when Atlas
    cannot be reached, and the deploy tooling sees the counts in the logs.
    """

    def __init__(
        self,
        atlas_url: str,
        service: str,
        host: str,
        port: int,
        *,
        token: str | None = None,
        realm: str | None = None,
        health_check_path: str = "/healthcheck",
        timeout: float = DEFAULT_TIMEOUT_S,
        session: requests.Session | None = None,
    ) -> None:
        self.atlas_url = atlas_url.rstrip("/")
        self.service = service
        self.host = host
        self.port = port
        self.realm = realm
        self.health_check_path = health_check_path
        self.timeout = timeout
        self.http = session or requests.Session()
        self.http.headers["Content-Type"] = "application/json"
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.errors = 0

    @property
    def instance(self) -> str:
        """This instance's id."""
        return instance_id(self.host, self.port)

    @property
    def path(self) -> str:
        """This instance's path in the API."""
        return f"/v1/services/{self.service}/instances/{self.instance}"

    def _call(self, method: str, path: str, body: Any = None) -> requests.Response | None:
        try:
            return self.http.request(method, self.atlas_url + path, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            self.errors += 1
            log.warning(
                "Atlas at %s is unreachable (%s %s: %s)",
                self.atlas_url, method, path, type(exc).__name__,
            )  # fmt: skip
            return None

    def _failed(self, what: str, resp: requests.Response) -> bool:
        self.errors += 1
        try:
            detail = resp.json().get("detail", "")
        except ValueError:
            detail = resp.text[:200]
        log.warning("Atlas refused to %s %s: HTTP %s %s", what, self.instance, resp.status_code,
                    detail)  # fmt: skip
        return False

    def ensure_service(self) -> bool:
        """POST the service (201 created, 409 exists: both fine)."""
        body = {"name": self.service, "health_check": {"path": self.health_check_path}}
        resp = self._call("POST", "/v1/services", body)
        if resp is None:
            return False
        if resp.status_code in (201, 409):
            return True
        return self._failed("create the service of", resp)

    def attach(self) -> bool:
        """PUT the instance, enabled; in realm `local` create the service first if it is missing."""
        body = {"enabled": True}
        resp = self._call("PUT", self.path, body)
        missing = resp is not None and resp.status_code == 404
        if missing and self.realm == "local" and self.ensure_service():
            resp = self._call("PUT", self.path, body)
        if resp is None:
            return False
        if resp.status_code in (200, 201):
            log.info("attached %s to service %s in Atlas (enabled)", self.instance, self.service)
            return True
        return self._failed("attach", resp)

    def disable(self, reason: str) -> bool:
        """PATCH enabled=false: the sidecars stop sending new requests, open ones finish."""
        resp = self._call("PATCH", self.path, {"enabled": False, "disabled_reason": reason})
        if resp is None:
            return False
        if resp.status_code == 200:
            log.info("disabled %s in Atlas (%s)", self.instance, reason)
            return True
        return self._failed("disable", resp)

    def detach(self) -> bool:
        """DELETE the instance (404: already gone, fine)."""
        resp = self._call("DELETE", self.path)
        if resp is None:
            return False
        if resp.status_code in (200, 204, 404):
            log.info("detached %s from service %s in Atlas", self.instance, self.service)
            return True
        return self._failed("detach", resp)

    def close(self) -> None:
        """Close the HTTP session."""
        self.http.close()


@dataclass
class Lifecycle:
    """attach on start (retried), and on SIGTERM: disable → wait `drain_s` → detach → stop.

    `tick()` is called from the master's loop about once a second; `term()` on SIGTERM,
    `interrupt()` on SIGINT (Ctrl-C: detach at once, no drain). Each returns True when the
    process should stop now.
    """

    registration: Registration | None
    drain_s: float = DEFAULT_DRAIN_S
    retry_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    state: str = "starting"  # starting → attached → draining → stopped
    _next_try: float = 0.0
    _drain_until: float = 0.0

    def tick(self) -> bool:
        """Attach (or retry attaching) while serving; finish a drain whose time is up."""
        now = self.clock()
        if self.registration is None:
            return False
        if self.state == "starting" and now >= self._next_try:
            if self.registration.attach():
                self.state = "attached"
            else:
                self._next_try = now + self.retry_s
        elif self.state == "draining" and now >= self._drain_until:
            return self._stop()
        return False

    def term(self) -> bool:
        """SIGTERM: start the drain (or, a second time, stop at once)."""
        if self.registration is None:
            return True
        if self.state == "attached":
            self.state = "draining"
            self.registration.disable("draining: the process got SIGTERM")
            self._drain_until = self.clock() + self.drain_s
            log.info("draining for %.1fs before detaching and stopping", self.drain_s)
            return self.drain_s <= 0 and self._stop()
        # Never attached (Atlas unreachable since start), or a second SIGTERM: no wait.
        return self._stop()

    def interrupt(self) -> bool:
        """SIGINT: detach without a drain, then stop."""
        if self.registration is None:
            return True
        return self._stop()

    def _stop(self) -> bool:
        if self.state != "stopped":
            assert self.registration is not None
            self.registration.detach()
            self.registration.close()
            self.state = "stopped"
        return True
