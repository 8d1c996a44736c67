"""Reloads under load, ZooKeeper outages, wiped trees and broken renders: no request lost."""

from __future__ import annotations

import threading
from pathlib import Path

from atlas.sidecar.render import render
from atlas.stack import ZooKeeperServer
from tests.sidecar.conftest import Load, Registry, wait_for


def test_new_services_under_load_lose_nothing(registry, backends, start_sidecar):
    base = backends("base")
    registry.service("base")
    registry.instance("base", base.port)
    sc = start_sidecar(spares=0)  # no spare backends: every new service is a reload
    loads = [Load(sc.port, ["base"], keepalive=False), Load(sc.port, ["base"], keepalive=True)]
    try:
        for n in range(4):
            b = backends(f"new{n}")
            registry.service(f"new{n}")
            registry.instance(f"new{n}", b.port)
            wait_for(lambda n=n: sc.request(f"new{n}") == (200, f"new{n}"), what=f"new{n}")
            before = min(x.ok for x in loads)
            wait_for(lambda before=before: min(x.ok for x in loads) > before + 20, what="load")
    finally:
        for x in loads:
            x.stop()
    assert sc.status["reloads"] >= 2
    reloads, _, _ = sc.show_proc()
    assert reloads is not None and reloads >= 2
    for x in loads:
        assert x.ok > 50
        assert x.failures == [], x.failures[:5]


def test_zookeeper_down_keeps_routing(tmp_path: Path, realm, backends, start_sidecar):
    zk = ZooKeeperServer(tmp_path / "zk")  # our own: stopping it disturbs no other test
    zk.start()
    try:
        reg = Registry(zk.address, realm)
        a = backends("a")
        reg.service("a")
        reg.instance("a", a.port)
        reg.close()
        sc = start_sidecar(zk_hosts=zk.address)
        assert set(sc.bodies("a", 3)) == {"a"}

        zk.stop()
        wait_for(lambda: sc.status["stale"] and not sc.status["zk_connected"], what="stale")
        load = Load(sc.port, ["a"], keepalive=False)
        wait_for(lambda: load.ok > 100, what="requests while ZooKeeper is down")
        load.stop()
        assert load.failures == []
        assert sc.status["stale_reasons"]

        zk.start()
        wait_for(lambda: sc.status["zk_connected"] and not sc.status["stale"], 40, "fresh")
        reg = Registry(zk.address, realm)
        b = backends("b")
        reg.instance("a", b.port)
        reg.close()
        wait_for(lambda: "b" in sc.bodies("a", 4), what="changes flow again")
    finally:
        zk.stop()


def test_wiped_tree_mid_rebuild_never_empties_a_backend(registry, backends, start_sidecar):
    bes = {s: [backends(f"{s}{i}") for i in range(2)] for s in ("red", "blue")}
    for s, group in bes.items():
        registry.service(s)
        for b in group:
            registry.instance(s, b.port)
    sc = start_sidecar()
    load = Load(sc.port, ["red", "blue"], keepalive=True)
    try:
        registry.wipe()
        wait_for(lambda: "holding" in " ".join(sc.status["stale_reasons"]), what="hold")
        registry.zk.ensure_path(registry.root)
        for s in bes:  # a reconciler rebuilding, one node at a time
            registry.service(s)
            ok = load.ok
            wait_for(lambda ok=ok: load.ok > ok + 10, what="traffic during rebuild")
        for s, group in bes.items():
            registry.instance(s, group[0].port)
        wait_for(lambda: not sc.status["stale"], what="rebuilt")
        ok = load.ok
        wait_for(lambda: load.ok > ok + 20, what="traffic after rebuild")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert set(sc.bodies("red", 4)) == {"red0"}


def test_broken_render_keeps_the_old_config(registry, backends, start_sidecar):
    broken = threading.Event()

    def render_fn(snapshot, options):
        text = render(snapshot, options)
        return text + "\nbackend broken\n    nonsense directive\n" if broken.is_set() else text

    a = backends("a")
    registry.service("a")
    registry.instance("a", a.port)
    sc = start_sidecar(render_fn=render_fn, spares=0)  # a new service needs a render
    cfg = (sc.state / "haproxy.cfg").read_text()
    reloads0, _, _ = sc.show_proc()

    broken.set()
    b = backends("b")
    registry.service("b")
    registry.instance("b", b.port)
    wait_for(lambda: sc.status["check_failures"] >= 2, what="check failed and retried")
    assert "haproxy -c rejected" in (sc.status["last_error"] or "")
    assert (sc.state / "haproxy.cfg").read_text() == cfg
    assert sc.show_proc()[0] == reloads0
    assert set(sc.bodies("a", 3)) == {"a"}
    assert sc.request("b")[0] == 503

    broken.clear()
    wait_for(lambda: sc.request("b") == (200, "b"), what="retry succeeds once fixed")
    wait_for(lambda: sc.status["last_error"] is None, what="error cleared")
