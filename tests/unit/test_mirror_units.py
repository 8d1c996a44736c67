"""Mirror logic without servers: the pure plan, payload shapes, and the client watchdog."""

from __future__ import annotations

import json
from typing import Any

from kazoo.client import KazooState

from atlas.contract import Layout
from atlas.mirror import ZkMirror, instance_payload, plan, service_payload
from atlas.mirror.payloads import desired_tree
from atlas.registry import HealthCheck, Instance, Service


def svc(**kw: Any) -> Service:
    base = dict(name="api", description="", owner="", port=80, health_check=None, tags=(),
                version=3, created_at="2026-01-01T00:00:00.000Z",
                updated_at="2026-01-01T00:00:00.000Z")  # fmt: skip
    base.update(kw)
    return Service(**base)  # type: ignore[arg-type]


def inst(**kw: Any) -> Instance:
    base = dict(service="api", host="10.0.0.1", port=80, enabled=True, weight=100, zone=None,
                labels={}, disabled_reason=None, version=1,
                created_at="2026-01-01T00:00:01.500Z", updated_at="2026-01-01T00:00:02.000Z")  # fmt: skip
    base.update(kw)
    return Instance(**base)  # type: ignore[arg-type]


def test_plan_orders_deletes_deep_first_and_creates_shallow_first() -> None:
    desired = {"/a": b"1", "/a/x": b"2", "/a/y": b"3"}
    actual = {"/a/x": (b"old", 4), "/a/z": (b"", 1), "/b": (b"", 0), "/b/q": (b"", 2)}
    p = plan({**desired}, actual)
    kinds = [(o.kind, o.path) for o in p.ops]
    assert kinds == [
        ("delete", "/a/z"), ("delete", "/b/q"), ("delete", "/b"),
        ("set", "/a/x"), ("create", "/a"), ("create", "/a/y"),
    ]  # fmt: skip
    assert [o.version for o in p.ops if o.kind != "create"] == [1, 2, 0, 4]
    assert (p.missing, p.stale, p.extra) == (2, 1, 3)
    assert plan(desired, {k: (v, 0) for k, v in desired.items()}).ops == ()


def test_payloads_follow_the_design_layout() -> None:
    s = json.loads(service_payload(svc(health_check=HealthCheck("/h", 5, 1)), 2))
    assert s == {"name": "api", "port": 80, "version": 3, "instances": 2,
                 "health_check": {"path": "/h", "interval_s": 5, "timeout_s": 1}}  # fmt: skip
    on = json.loads(instance_payload(inst()))
    assert on["registrationTimeUTC"] == 1767225601500
    assert on["serviceType"] == "STATIC" and on["sslPort"] is None and on["id"] == "10.0.0.1:80"
    assert "haproxy_server_options" not in on
    off = json.loads(instance_payload(inst(enabled=False, disabled_reason="x")))
    assert off["haproxy_server_options"] == "disabled" and off["enabled"] is False
    v6 = json.loads(instance_payload(inst(host="2001:db8::1")))
    assert v6["id"] == "[2001:db8::1]:80" and v6["address"] == "2001:db8::1"


def test_desired_tree_never_holds_config_values() -> None:
    tree = desired_tree(Layout("prod"), svc(config_version=7), [inst()])
    assert set(tree) == {
        "/atlas/prod/services/api", "/atlas/prod/services/api/10.0.0.1:80", "/atlas/prod/config/api",
    }  # fmt: skip
    assert json.loads(tree["/atlas/prod/config/api"]) == {"version": 7}


class FakeClient:
    def __init__(self) -> None:
        self.state = KazooState.LOST
        self.started = 0
        self.closed = False
        self.listeners: list[Any] = []

    def add_listener(self, fn: Any) -> None:
        self.listeners.append(fn)

    def remove_listener(self, fn: Any) -> None:
        self.listeners.remove(fn)

    def start_async(self) -> None:
        self.started += 1

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_watchdog_replaces_a_client_that_cannot_connect() -> None:
    now = [100.0]
    made: list[FakeClient] = []

    def factory(hosts: str, timeout: float) -> Any:
        made.append(FakeClient())
        return made[-1]

    m = ZkMirror("zk:2181", "prod", timeout=2, client_factory=factory, clock=lambda: now[0])
    m.start(background=False)
    m.watchdog_tick()
    assert len(made) == 1  # not yet: 0 s disconnected
    now[0] += 3.9
    m.watchdog_tick()
    assert len(made) == 1  # under 2 x timeout
    now[0] += 0.2
    m.watchdog_tick()
    assert len(made) == 2 and made[0].closed and made[1].started == 1
    assert m.counters["client_recreated"] == 1
    m._on_state(KazooState.CONNECTED)  # the new one connects: the watchdog rests
    now[0] += 100
    m.watchdog_tick()
    assert len(made) == 2


def test_writes_while_disconnected_mark_the_service_dirty() -> None:
    m = ZkMirror("zk:2181", "prod", client_factory=lambda h, t: FakeClient())  # type: ignore[arg-type,return-value]
    m.put_service(svc())
    m.instance_changed("web", "10.0.0.1:80", inst(service="web"), m.prepare_instance("web", "x"))
    assert set(m.dirty) == {"api", "web"}
    assert m.status()["lagging"] is True


def test_count_patch_falls_back_on_a_service_node_it_did_not_write() -> None:
    m = ZkMirror("zk:2181", "prod", client_factory=lambda h, t: FakeClient())  # type: ignore[arg-type,return-value]
    ok = b'{"instances":2,"name":"s"}'
    assert m._count_op("s", (ok, 5, 2), existed=False, exists=True)[1] is not None
    assert m._count_op("s", (ok, 5, 2), existed=True, exists=True) == (True, None)
    for data in (None, b"", b"not json", b"[1]", b'{"instances":true}', b'{"instances":3}'):
        assert m._count_op("s", (data, 5, 1), existed=False, exists=True) == (False, None)  # type: ignore[arg-type]
