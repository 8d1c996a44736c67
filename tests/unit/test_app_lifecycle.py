"""The app factory only configures; background work starts on `start()` or the first request.

ZooKeeper is pointed at a loopback port where nothing listens: the point here is which
threads exist when, not the mirror (tests/integration/test_gunicorn.py runs it for real).
"""

from __future__ import annotations

import gc
import threading
import weakref

from atlas.app import create_app
from atlas.config import Settings
from atlas.mirror import ZkMirror
from atlas.stack.procs import free_port
from tests.unit.conftest import Client

BACKGROUND = ("atlas-mirror-pump", "atlas-reconciler", "atlas-audit")
KAZOO = ("(zk_loop)", "(_thread_worker)")  # kazoo's connection and callback threads


def background_threads() -> set[str]:
    """Names of Atlas's and kazoo's background threads alive now."""
    names = {t.name for t in threading.enumerate() if t.is_alive()}
    return {n for n in names if n in BACKGROUND or n.endswith(KAZOO)}


def zk_settings(settings: Settings) -> Settings:
    return settings.with_overrides(zk_hosts=f"127.0.0.1:{free_port()}", zk_timeout_s=1.0)


def test_the_factory_starts_nothing(settings: Settings) -> None:
    before = background_threads()
    app = create_app(settings=zk_settings(settings))
    ext = app.extensions["atlas"]
    assert isinstance(ext.mirror, ZkMirror)
    assert background_threads() == before
    assert not ext.running and ext.reconciler is None
    assert ext.mirror.client.state == "LOST"  # no session was ever attempted
    ext.close()


def test_start_then_close_starts_and_stops_the_background_work(settings: Settings) -> None:
    before = background_threads()
    app = create_app(settings=zk_settings(settings))
    ext = app.extensions["atlas"]
    ext.start()
    ext.start()  # idempotent
    try:
        assert ext.running and ext.reconciler is not None
        running = background_threads()
        assert {"atlas-mirror-pump", "atlas-reconciler"} <= running
        assert any(n.endswith("(zk_loop)") for n in running)
    finally:
        ext.close()
    assert not ext.running
    assert not {"atlas-mirror-pump", "atlas-reconciler"} & background_threads()
    assert background_threads() <= before
    ext.start()  # a closed extension stays closed
    assert not ext.running


def test_the_first_request_starts_it_under_any_wsgi_server(settings: Settings) -> None:
    app = create_app(settings=zk_settings(settings))
    ext = app.extensions["atlas"]
    assert not ext.running
    assert Client(app.test_client()).get("/healthz").status_code == 200
    try:
        assert ext.running and "atlas-mirror-pump" in background_threads()
    finally:
        ext.close()


def test_closed_apps_are_not_kept_alive_by_atexit(settings: Settings) -> None:
    refs = []
    for i in range(3):
        app = create_app(settings=settings)
        c = Client(app.test_client())
        assert c.post("/v1/services", json={"name": f"web{i}"}).status_code == 201  # audited
        ext = app.extensions["atlas"]
        refs += [weakref.ref(app), weakref.ref(ext), weakref.ref(ext.audit)]
        ext.close()
        del app, c, ext
    # flask-restful stores a closure over the newest Api on each Resource class, which keeps the
    # newest app alive until another app is built: build one so that all of the above can go.
    last = create_app(settings=settings)
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    last.extensions["atlas"].close()
