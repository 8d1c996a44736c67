"""The multiprocess directory of prometheus_client under gunicorn (used by atlas.gunicorn_conf).

prometheus_client in multiprocess mode has every process write its metrics to memory-mapped
files in `PROMETHEUS_MULTIPROC_DIR`; a scrape answered by any worker reads all of them. The
directory must be empty when the server starts (files of an earlier run would be counted
again), the variable must be set before prometheus_client is first imported (it picks its mode
then), and a dead worker's files of live gauges must be removed (`mark_process_dead`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class MetricsDir:
    """The directory of one server start, and whether this server made it (and removes it)."""

    path: Path
    owned: bool


def prepare(environ: MutableMapping[str, str] | None = None) -> MetricsDir:
    """Give this server start an empty directory and export it in `PROMETHEUS_MULTIPROC_DIR`.

    The directory named there already is emptied of metric files (created if missing); with
    none named, a new temporary one is made and removed again by `cleanup`. Call it in
    gunicorn's master before anything imports prometheus_client (the config module does).
    """
    env = os.environ if environ is None else environ
    if "prometheus_client" in sys.modules:
        log.warning(
            "prometheus_client was imported before %s was set: this process and its forks "
            "count in memory only, and /metrics shows one worker at a time",
            ENV,
        )
    named = env.get(ENV)
    if named:
        path = Path(named)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return MetricsDir(path, owned=False)
    path = Path(tempfile.mkdtemp(prefix="atlas-metrics-"))
    env[ENV] = str(path)
    return MetricsDir(path, owned=True)


def mark_dead(pid: int, where: MetricsDir) -> None:
    """A worker exited: remove its live gauges' files (its counters stay: they still count)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(where.path))


def cleanup(where: MetricsDir) -> None:
    """The server stops: remove the directory if `prepare` made it."""
    if where.owned:
        shutil.rmtree(where.path, ignore_errors=True)
