"""One logging setup for every Atlas process: gunicorn (master, workers, access log), the CLI, `atlas dev`.

Every line is `time level logger: message`. kazoo's reconnect loop logs a line per attempt
("Connection dropped", "Connecting to ..."); `KazooNoiseFilter` lets the first of each kind
through after every connection state change and counts the rest, which the next state
change line reports.
"""

from __future__ import annotations

import logging
import logging.config
import threading
import time
from collections.abc import Callable
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# kazoo.client lines that say the connection changed state: always shown.
KAZOO_STATE = frozenset(
    {
        "Zookeeper connection established, state: %s",
        "Zookeeper session closed, state: %s",
        "Zookeeper connection lost",
        "Transition to CONNECTING",
        "Session has expired",
        "Failed connecting to Zookeeper within the connection retry policy.",
    }
)
# kazoo.client lines its reconnect loop repeats on every attempt: one per state change.
KAZOO_REPEATS = frozenset(
    {
        "Connection dropped: %s",
        "Connection time-out: %s",
        "Connecting to %s(%s):%s, use_ssl: %r",
        "Closing connection to %s:%s",
        "Cannot resolve %s: %s",
    }
)


class KazooNoiseFilter(logging.Filter):
    """Rate-limits kazoo's reconnect lines to one of each kind per state change.

    A repeated line is shown again after `every_s` even without a state change, so a long
    outage still shows up. `suppressed` counts every line held back, by message template;
    the next line shown says how many were held back since the previous one.
    Thread-safe (kazoo logs from its connection thread, Atlas from others).
    """

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self.suppressed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._shown_at: dict[str, float] = {}  # template -> when last shown since the change
        self._pending = 0  # held back since the last line shown

    @property
    def suppressed_total(self) -> int:
        """How many kazoo lines were held back in all."""
        return sum(self.suppressed.values())

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass every line except a kazoo reconnect line already shown since the last change."""
        if not record.name.startswith("kazoo"):
            return True
        template = str(record.msg)
        with self._lock:
            if template in KAZOO_STATE:
                self._shown_at.clear()
                return self._note_held_back(record)
            if template not in KAZOO_REPEATS:
                return True
            now = self.clock()
            shown = self._shown_at.get(template)
            if shown is not None and now - shown < self.every_s:
                self.suppressed[template] = self.suppressed.get(template, 0) + 1
                self._pending += 1
                return False
            self._shown_at[template] = now
            return self._note_held_back(record)

    def _note_held_back(self, record: logging.LogRecord) -> bool:
        if self._pending:
            record.msg = f"{record.getMessage()} ({self._pending} repeated kazoo lines held back)"
            record.args = ()
            self._pending = 0
        return True


def config_dict(level: str = "INFO", *, stream: str = "ext://sys.stderr") -> dict[str, Any]:
    """The dictConfig of an Atlas process; gunicorn takes it as `logconfig_dict`."""
    level = _level(level)
    handler = ["atlas"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"kazoo_noise": {"()": KazooNoiseFilter}},
        "formatters": {"atlas": {"format": FORMAT}},
        "handlers": {
            "atlas": {
                "class": "logging.StreamHandler",
                "stream": stream,
                "formatter": "atlas",
                "filters": ["kazoo_noise"],
            }
        },
        # Other libraries (botocore, urllib3) stay at WARNING even at DEBUG: their debug
        # lines carry request and response bodies.
        "root": {"level": "WARNING", "handlers": handler},
        "loggers": {
            "atlas": {"level": level},
            "kazoo": {"level": "INFO"},
            "gunicorn.error": {"level": "INFO", "handlers": handler, "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": handler, "propagate": False},
        },
    }


def configure(level: str = "INFO", force: bool = False) -> None:
    """Install the Atlas logging setup in this process (CLI commands, `atlas dev`).

    Like `logging.basicConfig`, it leaves a process whose root logger already has handlers
    (a test runner, an embedding application) alone unless `force`; it then only sets the
    level of Atlas's own loggers.
    """
    if logging.getLogger().handlers and not force:
        logging.getLogger("atlas").setLevel(_level(level))
        return
    logging.config.dictConfig(config_dict(level))


def _level(level: str) -> str:
    return level.upper() if level.upper() in LEVELS else "INFO"


def noise_filter() -> KazooNoiseFilter | None:
    """The kazoo filter installed by `configure` (or gunicorn's logconfig_dict), if any."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, KazooNoiseFilter):
                return f
    return None
