"""`atlas-service APP [gunicorn options]`: run a service under gunicorn, attached to Atlas, drained
on SIGTERM.

    atlas-service 'greeter.app:create_app()' --bind 127.0.0.1:0

It is gunicorn (every gunicorn option works) with other defaults — bind 127.0.0.1:$PORT (0: a
free port), 2 gthread workers of 4 threads, the app preloaded in the master (a bad config fails
before any fork), JSON-lines logs — and a master that, for a SmartService with self-registration
on (ATLAS_REGISTER; `auto` = in realm local):

- attaches host:port (the port actually bound) to the service in Atlas once the workers run,
  retrying every 5 s while Atlas is unreachable;
- on SIGTERM, disables the instance (the sidecars stop sending it new requests), keeps serving
  for ATLAS_DRAIN_S (default 10) while open requests finish, detaches it, and only then stops
  gunicorn gracefully. Plain gunicorn closes its listeners the moment SIGTERM arrives, so the
  drain happens in the master's loop before gunicorn's own shutdown starts. A second SIGTERM
  cuts the drain short; SIGINT (Ctrl-C) detaches and stops at once.

Send SIGTERM to the master only (as Kubernetes, `docker stop` and systemd with KillMode=mixed
do): a signal to the whole process group reaches the workers too, and they stop at once.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger

from atlas.envvars import SERVICE
from atlas.service import logs
from atlas.service.registration import DEFAULT_DRAIN_S, Lifecycle, Registration

log = logging.getLogger(__name__)


class JsonLogger(GunicornLogger):
    """gunicorn's error log as JSON lines on stdout, like the service's own logs.

    Gunicorn's access log stays off: the service writes its own, with the request id.
    """

    def setup(self, cfg: Any) -> None:
        """Let gunicorn set up, then put the JSON handler in place of its error-log handlers."""
        super().setup(cfg)
        if cfg.errorlog == "-":
            for h in list(self.error_log.handlers):
                self.error_log.removeHandler(h)
            self.error_log.addHandler(logs.make_handler())


def advertised_host(bound: str) -> str:
    """The host to register: the bound address, unless it is a wildcard."""
    if bound in ("0.0.0.0", "::", ""):
        return SERVICE.get("ATLAS_ADVERTISE_HOST") or socket.getfqdn()
    return SERVICE.get("ATLAS_ADVERTISE_HOST") or bound


def lifecycle_for(app: Any, listeners: Sequence[Any]) -> Lifecycle:
    """The Lifecycle of a loaded app: registering only a SmartService that asks for it."""
    from atlas.service.app import SmartService

    if not isinstance(app, SmartService) or not app.registers():
        return Lifecycle(None)
    inet = (socket.AF_INET, socket.AF_INET6)
    tcp = [lr.sock.getsockname() for lr in listeners if lr.sock.family in inet]
    if not tcp:
        log.warning("not registering in Atlas: no TCP listener")
        return Lifecycle(None)
    host, port = tcp[0][0], int(tcp[0][1])
    token = app.option("ATLAS_REGISTER_TOKEN") or SERVICE.get("ATLAS_TOKEN")
    registration = Registration(
        app.atlas_url,
        app.service_name,
        advertised_host(host),
        port,
        token=token,
        realm=app.realm,
        health_check_path=app.config.get("HEALTHCHECK_PATH", "/healthcheck"),
    )
    return Lifecycle(registration, drain_s=float(app.option("ATLAS_DRAIN_S", DEFAULT_DRAIN_S)))


class DrainingArbiter(Arbiter):
    """gunicorn's master, with Atlas registration and a drain before its own shutdown."""

    lifecycle: Lifecycle = Lifecycle(None)

    def start(self) -> None:
        """Bind as gunicorn does, then prepare the lifecycle for the port actually bound."""
        super().start()
        self.lifecycle = lifecycle_for(self.app.wsgi(), self.LISTENERS)
        for lr in self.LISTENERS:
            log.info("listening on %s", lr)

    def manage_workers(self) -> None:
        """Keep the workers (gunicorn), then attach / finish a drain (about once a second)."""
        super().manage_workers()
        if self.WORKERS and self.lifecycle.tick():
            raise StopIteration  # the main loop halts gracefully

    def handle_term(self) -> None:
        """SIGTERM: start draining; the listeners stay open until the drain is over."""
        if self.lifecycle.term():
            raise StopIteration

    def handle_int(self) -> None:
        """SIGINT: detach now, then gunicorn's quick stop."""
        self.lifecycle.interrupt()
        super().handle_int()


class ServiceApplication(WSGIApplication):
    """gunicorn's WSGI application runner with Smart Service defaults and the draining master."""

    def load_default_config(self) -> None:
        """gunicorn's defaults, then ours (the command line and config files still win)."""
        super().load_default_config()
        self.cfg.set("bind", [f"127.0.0.1:{SERVICE.get('PORT')}"])
        self.cfg.set("workers", SERVICE.get("WEB_CONCURRENCY"))
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("threads", 4)
        self.cfg.set("preload_app", True)
        self.cfg.set("logger_class", JsonLogger)
        self.cfg.set("graceful_timeout", 30)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn ≥ 25's control socket defaults to one path per user, shared by every
            # gunicorn of that user; a service does not need it.
            self.cfg.set("control_socket_disable", True)

    def run(self) -> None:
        """Run the draining master (gunicorn's Application.run, with our Arbiter)."""
        if self.cfg.print_config or self.cfg.check_config:
            super().run()
            return
        if self.cfg.pythonpath:  # as gunicorn's Application.run does
            for path in self.cfg.pythonpath.split(","):
                if os.path.abspath(path) not in sys.path:
                    sys.path.insert(0, os.path.abspath(path))
        if not logging.getLogger().handlers:
            logs.configure_logging("atlas-service")
        try:
            DrainingArbiter(self).run()
        except RuntimeError as exc:
            print(f"\natlas-service: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `atlas-service` (gunicorn's command line)."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    # A bad PORT / WEB_CONCURRENCY (a ConfigError) is one line: gunicorn prints "Error: ...".
    ServiceApplication("%(prog)s [OPTIONS] APP_MODULE", prog="atlas-service").run()


if __name__ == "__main__":
    main()
