"""gunicorn configuration of Atlas: `gunicorn -c python:atlas.gunicorn_conf atlas.wsgi:app`.

`atlas serve`, `atlas dev`, the test stack and the Docker image all run gunicorn with it.
The app factory only configures; each worker starts its background work (ZooKeeper
session, mirror pump, reconciler) once forked and stops it before it exits, so `--preload`
is safe. Listen address and process counts come from ATLAS_BIND / ATLAS_WORKERS /
ATLAS_THREADS (command-line flags win); logging is `atlas.logs` at ATLAS_LOG_LEVEL.

Metrics: prometheus_client runs in multiprocess mode, so that a scrape of /metrics answered by
any worker counts every worker. Loading this module (in the master, before any worker or the
app imports prometheus_client) gives the server start an empty PROMETHEUS_MULTIPROC_DIR: the
one named in the environment, emptied, or a new temporary one removed at exit. `child_exit`
removes a dead worker's live gauges.

The worker class is ATLAS_WORKER_CLASS: `gevent` by default (a greenlet per request, so that
a thousand blocking queries wait at ~26 KiB each instead of holding an OS thread each; see
README "Serving model"), or `gthread`. With gevent the standard library is patched here, in
the master, before anything else is imported: a preloaded app then builds its locks, queues
and threads from the patched modules, as the workers will run them.
"""

from __future__ import annotations

import os

from atlas.envvars import WORKER_CLASS  # imports nothing that gevent must patch

if WORKER_CLASS.read() == "gevent":
    from gevent import monkey

    monkey.patch_all()

import logging
from typing import Any

from atlas.config import ServeSettings
from atlas.envvars import LOG_LEVEL
from atlas.logs import config_dict
from atlas.metrics import multiproc  # not a gunicorn setting name: gunicorn ignores it

# Before anything imports prometheus_client.
_metrics_dir = multiproc.prepare()

_serve = ServeSettings.from_env()

bind = [_serve.bind]
workers = _serve.workers
threads = _serve.threads
worker_class = _serve.worker_class
worker_connections = _serve.worker_connections
graceful_timeout = _serve.graceful_timeout_s
# gunicorn >= 25 opens a control socket at one fixed path per user ($HOME/.gunicorn): every
# Atlas on the machine (tests, `atlas dev`) would fight over it. Older versions ignore this.
control_socket_disable = True
# With `logconfig_dict` set, gunicorn writes its access log through it: same format, same stream.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
logconfig_dict = config_dict(LOG_LEVEL.read())

log = logging.getLogger("atlas.gunicorn")


def _extension(worker: Any) -> Any:
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", None)
    return extensions.get("atlas") if isinstance(extensions, dict) else None


def post_worker_init(worker: Any) -> None:
    """In a fresh worker, after the app is loaded: start its background work."""
    ext = _extension(worker)
    if ext is not None:
        ext.start()


def worker_exit(server: Any, worker: Any) -> None:
    """As a worker exits (open requests done): stop background work, flush the audit log."""
    # gunicorn also calls this in the master for a worker that vanished: nothing to do there.
    if worker.pid != os.getpid():
        return
    ext = _extension(worker)
    if ext is not None:
        ext.close()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, once a worker has exited: drop its live gauges (its counts stay)."""
    multiproc.mark_dead(worker.pid, _metrics_dir)


def on_exit(server: Any) -> None:
    """In the master, as gunicorn exits: remove the metrics directory if it made it."""
    multiproc.cleanup(_metrics_dir)
