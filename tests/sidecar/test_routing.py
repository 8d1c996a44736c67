"""Real HAProxy + real ZooKeeper + real HTTP backends: routing, weights, runtime changes."""

from __future__ import annotations

import json
from collections import Counter

from tests.sidecar.conftest import wait_for


def test_routes_by_header_and_explains_errors(registry, backends, start_sidecar):
    a, b = backends("alpha-1"), backends("beta-1")
    registry.service("alpha")
    registry.instance("alpha", a.port)
    registry.service("beta")
    registry.instance("beta", b.port)
    sc = start_sidecar()

    assert set(sc.bodies("alpha", 5)) == {"alpha-1"}
    assert set(sc.bodies("beta", 5)) == {"beta-1"}
    status, body = sc.request("nosuch")
    assert status == 503
    assert "unknown service 'nosuch'" in body
    status, body = sc.request(None)
    assert status == 404
    assert "missing Atlas-Service request header" in body
    st = sc.status
    assert st["services"] == 2 and st["instances"] == 2 and not st["stale"]
    assert json.loads((sc.state / "status.json").read_text())["config_hash"] == st["config_hash"]


def test_service_without_instance_answers_clearly(registry, start_sidecar):
    registry.service("empty")
    sc = start_sidecar()
    status, body = sc.request("empty")
    assert status == 503
    assert "no available instance of service empty" in body


def test_weights_are_respected(registry, backends, start_sidecar):
    heavy, light = backends("heavy"), backends("light")
    registry.service("w")
    registry.instance("w", heavy.port, weight=200)
    registry.instance("w", light.port, weight=50)
    sc = start_sidecar()
    counts = Counter(sc.bodies("w", 400))
    assert counts["heavy"] + counts["light"] == 400
    assert 2.5 < counts["heavy"] / max(1, counts["light"]) < 6.5


def test_runtime_changes_need_no_reload(registry, backends, start_sidecar):
    one, two, three = backends("one"), backends("two"), backends("three")
    registry.service("svc")
    registry.instance("svc", one.port)
    registry.instance("svc", two.port)
    sc = start_sidecar()
    reloads0, _, workers0 = sc.show_proc()
    assert set(sc.bodies("svc", 6)) == {"one", "two"}

    registry.instance("svc", one.port, enabled=False)
    wait_for(lambda: set(sc.bodies("svc", 6)) == {"two"}, what="disabled instance drained")
    wait_for(lambda: " disabled" in (sc.state / "haproxy.cfg").read_text(), what="file updated")

    registry.instance("svc", one.port, enabled=True)
    wait_for(lambda: "one" in sc.bodies("svc", 6), what="re-enabled instance serves")

    registry.instance("svc", three.port)
    wait_for(lambda: "three" in sc.bodies("svc", 9), what="added instance serves")

    registry.remove_instance("svc", two.port)
    wait_for(lambda: "two" not in sc.bodies("svc", 9), what="removed instance gone")

    registry.instance("svc", one.port, weight=0)
    wait_for(lambda: set(sc.bodies("svc", 6)) == {"three"}, what="weight 0 gets no traffic")
    cfg_path = sc.state / "haproxy.cfg"
    wait_for(lambda: "weight 0" in cfg_path.read_text(), what="file updated to match")

    reloads1, _, workers1 = sc.show_proc()
    assert (reloads1, workers1) == (reloads0, workers0), (sc.state / "haproxy.log").read_text()
    st = sc.status
    assert st["reloads"] == 0
    assert st["runtime_updates"] >= 5
    cfg = (sc.state / "haproxy.cfg").read_text()
    assert f"127.0.0.1:{two.port}" not in cfg
    assert f"server 127.0.0.1:{three.port}" in cfg
    assert f"server 127.0.0.1:{one.port} 127.0.0.1:{one.port} id" in cfg


def test_health_check_takes_unhealthy_instance_out(registry, backends, start_sidecar):
    good, bad = backends("good"), backends("bad")
    bad.healthy = False
    registry.service("hc", health_check={"path": "/health", "interval_s": 0.1, "timeout_s": 1})
    registry.instance("hc", good.port)
    registry.instance("hc", bad.port)
    sc = start_sidecar()
    assert "option httpchk GET /health" in (sc.state / "haproxy.cfg").read_text()
    wait_for(lambda: set(sc.bodies("hc", 6)) == {"good"}, what="unhealthy instance skipped")


def test_garbage_nodes_are_ignored(registry, backends, start_sidecar):
    a = backends("fine")
    registry.service("fine")
    registry.instance("fine", a.port)
    zk, root = registry.zk, registry.root
    zk.create(f"{root}/fine/not-an-instance", b"{}")
    zk.create(f"{root}/fine/127.0.0.1:9", b"\xff garbage")
    zk.create(f"{root}/Bad_Name", b"[]")
    zk.create(f"{root}/odd", b"not json")
    zk.create(f"{root}/odd/127.0.0.1:{a.port}", json.dumps({"weight": "x"}).encode())
    sc = start_sidecar()
    assert set(sc.bodies("fine", 3)) == {"fine"}
    assert set(sc.bodies("odd", 3)) == {"fine"}  # garbage data: defaults, still routable
    zk.create(f"{root}/fine/127.0.0.1:10", b"still garbage")
    zk.set(f"{root}/odd", b"\x00")
    wait_for(sc.settled, what="settled after garbage")
    assert set(sc.bodies("fine", 3)) == {"fine"}
