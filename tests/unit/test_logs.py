"""The kazoo noise filter: one reconnect line of each kind per connection state change, counted."""

from __future__ import annotations

import logging

from atlas.logs import KazooNoiseFilter, config_dict


def rec(msg: str, *args: object, name: str = "kazoo.client") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeats_pass_once_per_state_change_and_are_counted() -> None:
    clock = Clock()
    f = KazooNoiseFilter(every_s=60, clock=clock)
    dropped = "Connection dropped: %s"
    connecting = "Connecting to %s(%s):%s, use_ssl: %r"
    shown = []
    for _ in range(20):
        for r in (rec(connecting, "h", "127.0.0.1", 1, False), rec(dropped, "refused")):
            if f.filter(r):
                shown.append(r.getMessage())
        clock.now += 0.5
    assert shown == ["Connecting to h(127.0.0.1):1, use_ssl: False", "Connection dropped: refused"]
    assert f.suppressed == {connecting: 19, dropped: 19} and f.suppressed_total == 38
    # The next state change is shown, with the count of what was held back since.
    back = rec("Zookeeper connection established, state: %s", "CONNECTED")
    assert f.filter(back)
    assert back.getMessage() == (
        "Zookeeper connection established, state: CONNECTED (38 repeated kazoo lines held back)"
    )
    # After a state change the first repeat passes again.
    assert f.filter(rec(dropped, "reset"))
    assert not f.filter(rec(dropped, "reset"))


def test_a_long_outage_still_shows_a_line_every_interval() -> None:
    clock = Clock()
    f = KazooNoiseFilter(every_s=60, clock=clock)
    assert f.filter(rec("Connection dropped: %s", "x"))
    clock.now = 59
    assert not f.filter(rec("Connection dropped: %s", "x"))
    clock.now = 61
    again = rec("Connection dropped: %s", "x")
    assert f.filter(again)
    assert again.getMessage() == "Connection dropped: x (1 repeated kazoo lines held back)"


def test_other_lines_pass_untouched() -> None:
    f = KazooNoiseFilter()
    for _ in range(3):
        r = rec("Connection dropped: %s", "x", name="atlas.mirror.zk")
        assert f.filter(r) and r.getMessage() == "Connection dropped: x"
        assert f.filter(rec("Unhandled exception in connection loop"))
    assert f.suppressed_total == 0


def test_the_config_formats_every_logger_alike() -> None:
    cfg = config_dict("debug")
    assert cfg["loggers"]["atlas"]["level"] == "DEBUG"
    assert config_dict("nonsense")["loggers"]["atlas"]["level"] == "INFO"
    handler = cfg["handlers"]["atlas"]
    assert cfg["formatters"][handler["formatter"]]["format"].startswith("%(asctime)s %(levelname)s")
    assert handler["filters"] == ["kazoo_noise"]
    for name in ("gunicorn.error", "gunicorn.access"):
        assert cfg["loggers"][name]["handlers"] == ["atlas"]
    assert cfg["root"]["handlers"] == ["atlas"] and cfg["root"]["level"] == "WARNING"
