"""The fleet features on real ZooKeeper and HAProxy: the report node, drain and slow start at
runtime, services deleted on purpose, states across reloads, new services without a reload."""

from __future__ import annotations

import http.client
import json

from kazoo.client import KazooClient

from atlas.contract import Layout, change_index, parse_sidecar_report
from atlas.sidecar.haproxy import socket_command
from tests.sidecar.conftest import Load, server_states, wait_for

HC = {"path": "/health", "interval_s": 0.2, "timeout_s": 1}


def get(port: int, service: str | None) -> tuple[int, dict[str, str], str]:
    """One GET through HAProxy: (status, lower-cased headers, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/", headers={"Atlas-Service": service} if service else {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        c.close()


def throttle(admin, backend: str, server: str) -> int | None:  # type: ignore[no-untyped-def]
    """The slow-start throttle (%) HAProxy reports for a server (None: not ramping)."""
    lines = socket_command(admin, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") == server:
            return int(row["throttle"]) if row.get("throttle") else None
    return None


def service_index(zk: KazooClient, root: str, name: str) -> int:
    path = f"{root}/{name}"
    stats = [zk.exists(path)] + [zk.exists(f"{path}/{c}") for c in zk.get_children(path)]
    return change_index(s for s in stats if s is not None)


# -- 12.3: what each sidecar has applied --------------------------------------------------


def test_report_node_says_what_is_applied_and_outlives_a_session(
    zk_hosts, realm, registry, backends, start_sidecar
):
    a1, a2 = backends("a1"), backends("a2")
    registry.service("a")
    registry.instance("a", a1.port)
    registry.instance("a", a2.port)
    b1 = backends("b1")
    registry.service("b")
    registry.instance("b", b1.port)
    sc = start_sidecar(host_id="host-1:4000")
    zk = registry.zk
    path = Layout(realm).sidecar("host-1:4000")

    def report():  # type: ignore[no-untyped-def]
        data = zk.exists(path) and zk.get(path)[0]
        return parse_sidecar_report(data, "host-1:4000") if data else None

    first = wait_for(lambda: (r := report()) and not r.stale and r, what="report node")
    owner = zk.exists(path).ephemeralOwner
    assert owner == sc.source.client().client_id[0]  # ephemeral, this sidecar's session
    assert first.realm == realm and first.services == 2 and first.instances == 3
    assert (first.haproxy_version or "").startswith("2.")
    assert first.lagging == {} and first.failures == {}
    assert first.has_applied("a", service_index(zk, registry.root, "a"))

    registry.instance("a", a2.port, enabled=False)
    index = service_index(zk, registry.root, "a")
    wait_for(lambda: (r := report()) and r.has_applied("a", index), what="change applied")
    assert report().runtime_updates >= 1  # type: ignore[union-attr]

    # A service suddenly empty (no count on its node: maybe a half-read tree) is held: it lags.
    registry.remove_instance("b", b1.port)
    index_b = service_index(zk, registry.root, "b")
    lagging = wait_for(lambda: (r := report()) and r.lagging.get("b"), what="b lags")
    assert "last-known-good" in lagging.reason and lagging.since
    assert not report().has_applied("b", index_b)  # type: ignore[union-attr]
    assert report().has_applied("a", index)  # type: ignore[union-attr]
    assert json.loads(zk.get(path)[0])["lagging"]["b"]["applied_index"] == lagging.applied_index

    # Session lost (expired by the server): the node goes with it and comes back.
    session_id, password = sc.source.client().client_id
    thief = KazooClient(hosts=zk_hosts, client_id=(session_id, password))
    thief.start(timeout=15)
    thief.stop()
    thief.close()
    wait_for(
        lambda: (st := zk.exists(path)) is not None and st.ephemeralOwner != owner,
        timeout=40,
        what="report node re-created in the new session",
    )
    assert report() is not None


# -- 12.4: drain and slow start as data --------------------------------------------------


def test_drain_and_slow_start_go_through_the_runtime_api(registry, backends, start_sidecar):
    a1, a2, a3 = backends("a1"), backends("a2"), backends("a3")
    registry.service("a")
    registry.instance("a", a1.port)
    registry.instance("a", a2.port)
    sc = start_sidecar()
    admin = sc.state / "admin.sock"
    reloads0 = sc.show_proc()[0]

    registry.instance("a", a2.port, drain=True)
    wait_for(lambda: server_states(admin, "a")[f"a/127.0.0.1:{a2.port}"].drain, what="drain")
    assert set(sc.bodies("a", 6)) == {"a1"}
    registry.instance("a", a2.port, drain=False)
    wait_for(lambda: "a2" in sc.bodies("a", 6), what="undrained")

    # Registered out of traffic, then given a slow start, then enabled: the weight ramps up.
    registry.instance("a", a3.port, enabled=False)
    wait_for(lambda: f"a/127.0.0.1:{a3.port}" in server_states(admin, "a"), what="added")
    registry.instance("a", a3.port, enabled=False, slow_start_s=300)
    wait_for(lambda: sc.settled() and "slowstart 300s" in sc.config(), what="replaced")
    registry.instance("a", a3.port, enabled=True, slow_start_s=300)
    wait_for(
        lambda: (t := throttle(admin, "a", f"127.0.0.1:{a3.port}")) is not None and t < 100,
        what="slow start ramping",
    )
    assert sc.show_proc()[0] == reloads0 and sc.status["reloads"] == 0

    # A server in traffic cannot change its slow start at runtime: the next reload does it.
    registry.instance("a", a1.port, slow_start_s=60)
    wait_for(lambda: sc.status["reloads"] == 1, what="paced reload for the slow start change")
    wait_for(sc.settled, what="settled")
    assert f"127.0.0.1:{a1.port} id" in sc.config() and "slowstart 60s" in sc.config()


def test_a_service_deleted_on_purpose_goes_at_once_a_wiped_one_is_held(
    registry, backends, start_sidecar
):
    g, w = backends("g"), backends("w")
    registry.service("gone", guard=True)
    registry.instance("gone", g.port)
    registry.service("wiped", guard=True)
    registry.instance("wiped", w.port)
    sc = start_sidecar(empty_grace_s=600)
    assert sc.request("gone") == (200, "g")

    registry.delete_service("gone")  # nodes deleted, guard bumped: one transaction
    wait_for(lambda: sc.request("gone")[0] == 503, what="deleted service unrouted at once")
    assert "unknown service 'gone'" in sc.request("gone")[1]

    registry.zk.delete(f"{registry.root}/wiped", recursive=True)  # guard untouched: a wipe
    wait_for(lambda: "wiped" in sc.status["lagging"], what="wiped service held")
    assert sc.request("wiped") == (200, "w")


def test_health_and_runtime_states_survive_a_reload(registry, backends, start_sidecar):
    hc = {"path": "/health", "interval_s": 30, "timeout_s": 1}
    p = {n: backends(n) for n in ("up", "off", "drained", "down")}
    p["down"].healthy = False
    registry.service("st", health_check=hc)
    registry.instance("st", p["up"].port)
    registry.instance("st", p["off"].port, enabled=False)
    registry.instance("st", p["drained"].port, drain=True)
    registry.instance("st", p["down"].port)
    sc = start_sidecar(spares=0)
    admin = sc.state / "admin.sock"

    def server(n: str):  # type: ignore[no-untyped-def]
        return server_states(admin, "st")[f"st/127.0.0.1:{p[n].port}"]

    wait_for(lambda: server("drained").drain, what="drained at runtime")
    socket_command(admin, f"set server st/127.0.0.1:{p['down'].port} health down")
    assert server("down").op_state == 0

    # One transaction: a new health-check path (a reload) and a new weight for `up`.
    tx = registry.zk.transaction()
    tx.set_data(
        f"{registry.root}/st",
        json.dumps({"name": "st", "health_check": {**hc, "path": "/health?v=2"}}).encode(),
    )
    tx.set_data(
        f"{registry.root}/st/127.0.0.1:{p['up'].port}",
        registry.instance_data("st", p["up"].port, weight=55),
    )
    tx.commit()
    wait_for(lambda: sc.status["reloads"] == 1, what="reloaded")
    assert "GET /health?v=2" in sc.config()
    assert server("down").op_state == 0  # still down: its check state came across
    assert server("off").maint
    assert server("drained").drain
    assert server("up").weight == 55 and server("up").op_state == 2  # the new config's value


# -- 12.5: a new service without a reload ---------------------------------------------------


def test_a_new_service_is_routed_without_a_reload(registry, backends, start_sidecar):
    base = backends("base")
    registry.service("base")
    registry.instance("base", base.port)
    sc = start_sidecar(spares=4)
    reloads0 = sc.show_proc()[0]
    load = Load(sc.port, ["base"], keepalive=True)
    try:
        good, bad = backends("good"), backends("bad")
        bad.healthy = False
        registry.service("fresh", health_check=HC)
        registry.instance("fresh", good.port)
        registry.instance("fresh", bad.port)
        wait_for(lambda: set(sc.bodies("fresh", 6)) == {"good"}, what="routed, checked")
        st = sc.status
        assert st["pool"]["placed"] == {"fresh": "atlas_spare_0000"}
        assert st["pool"]["free"] == 3 and st["pool"]["used"] == 1
        assert (sc.state / "checks.map").read_text() == "atlas_spare_0000 /health\n" or (
            st["pool"]["placed"]  # the file follows a moment later
        )

        registry.service("hollow")  # routed, but with no instance: a clear 503
        wait_for(lambda: get(sc.port, "hollow")[1].get("x-atlas-error") == "no-instance")
        status, headers, body = get(sc.port, "hollow")
        assert status == 503 and "no available instance of service hollow" in body
        status, headers, body = get(sc.port, "nosuch")
        assert (status, headers["x-atlas-error"]) == (503, "unknown-service")
        assert "unknown service 'nosuch'" in body
        status, headers, _ = get(sc.port, None)
        assert (status, headers["x-atlas-error"]) == (404, "no-service-header")

        # A health-check change moves a service to a fresh spare, still with no reload.
        registry.service("base", health_check=HC)
        wait_for(lambda: "base" in sc.status["pool"]["placed"], what="moved to a spare")
        assert set(sc.bodies("base", 4)) == {"base"}
        registry.delete_service("fresh")
        wait_for(lambda: get(sc.port, "fresh")[0] == 503, what="deleted through the map")
        assert get(sc.port, "fresh")[1]["x-atlas-error"] == "unknown-service"
    finally:
        load.stop()
    assert sc.show_proc()[0] == reloads0 and sc.status["reloads"] == 0
    assert load.failures == [], load.failures[:5]


def test_the_pool_is_refilled_by_a_paced_reload(registry, backends, start_sidecar):
    base = backends("base")
    registry.service("base")
    registry.instance("base", base.port)
    sc = start_sidecar(spares=2)  # refilled when none is left
    s1 = backends("s1")
    registry.service("s1")
    registry.instance("s1", s1.port)
    wait_for(lambda: sc.request("s1") == (200, "s1"), what="s1 in a spare")
    assert sc.status["reloads"] == 0 and sc.status["pool"]["free"] == 1
    loads = [Load(sc.port, ["base", "s1"], keepalive=True), Load(sc.port, ["s1"], False)]
    try:
        s2 = backends("s2")
        registry.service("s2")
        registry.instance("s2", s2.port)
        wait_for(lambda: sc.status["pool"]["refills"] == 1, what="refilled")
        st = sc.status
        assert st["reloads"] == 1 and st["pool"]["free"] == 2 and st["pool"]["placed"] == {}
        assert "backend s1" in sc.config() and "backend s2" in sc.config()
        assert sc.request("s2") == (200, "s2")
        s3 = backends("s3")
        registry.service("s3")
        registry.instance("s3", s3.port)
        wait_for(lambda: sc.request("s3") == (200, "s3"), what="s3 in a spare of the new pool")
        assert sc.status["reloads"] == 1
        before = min(x.ok for x in loads)
        wait_for(lambda: min(x.ok for x in loads) > before + 20, what="traffic")
    finally:
        for x in loads:
            x.stop()
    for x in loads:
        assert x.failures == [], x.failures[:5]
