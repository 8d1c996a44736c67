"""Mirror logic without servers: the pure diff and group-commit plan, the guard log, payload
shapes, the owner thread's watchdog and deferrals."""

from __future__ import annotations

import json
from typing import Any

from kazoo.client import KazooState

from atlas.contract import Layout
from atlas.mirror import ZkMirror, diff_subtree, instance_payload, service_payload
from atlas.mirror.batch import Change, count_op, plan_batch
from atlas.mirror.guard import MAX_IDS, MAX_VERSIONS, GuardLog
from atlas.mirror.payloads import desired_tree
from atlas.registry import HealthCheck, Instance, Service
from tests.helpers import wait_until


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
    p = diff_subtree({**desired}, actual)
    kinds = [(o.kind, o.path) for o in p.ops]
    assert kinds == [
        ("delete", "/a/z"), ("delete", "/b/q"), ("delete", "/b"),
        ("set", "/a/x"), ("create", "/a"), ("create", "/a/y"),
    ]  # fmt: skip
    assert [o.version for o in p.ops if o.kind != "create"] == [1, 2, 0, 4]
    assert (p.missing, p.stale, p.extra) == (2, 1, 3)
    assert diff_subtree(desired, {k: (v, 0) for k, v in desired.items()}).ops == ()


def test_payloads_follow_the_design_layout() -> None:
    s = json.loads(service_payload(svc(health_check=HealthCheck("/h", 5, 1)), 2))
    design = {"name", "port", "version", "instances", "health_check"}
    assert {k: s[k] for k in design} == {"name": "api", "port": 80, "version": 3, "instances": 2,
                 "health_check": {"path": "/h", "interval_s": 5, "timeout_s": 1}}  # fmt: skip
    # Atlas's own fields beside them: the rest of the API's record, for the in-memory view.
    assert {k: v for k, v in s.items() if k not in design} == {
        "description": "", "owner": "", "tags": [],
        "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z",
    }  # fmt: skip
    on = json.loads(instance_payload(inst()))
    assert on["registrationTimeUTC"] == 1767225601500
    assert on["serviceType"] == "STATIC" and on["sslPort"] is None and on["id"] == "10.0.0.1:80"
    assert "haproxy_server_options" not in on
    off = json.loads(instance_payload(inst(enabled=False, disabled_reason="x")))
    assert off["haproxy_server_options"] == "disabled" and off["enabled"] is False
    assert off["disabled_reason"] == "x" and "disabled_reason" not in on
    assert on["created_at"] == "2026-01-01T00:00:01.500Z"
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

    def ensure_path(self, path: str) -> None:
        pass

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
    m.start(background=False)  # no threads: this test drives the owner's loop
    m.run_once()
    assert len(made) == 1  # not yet: 0 s disconnected
    now[0] += 3.9
    m.run_once()
    assert len(made) == 1  # under 2 x timeout
    now[0] += 0.2
    m.run_once()
    assert len(made) == 2 and made[1].started == 1
    wait_until(lambda: made[0].closed, what="the old client closed")
    assert m.counters["client_recreated"] == 1
    assert made[0].listeners == [] and len(made[1].listeners) == 1
    made[1].state = KazooState.CONNECTED
    made[1].listeners[0](KazooState.CONNECTED)  # the new one connects: the watchdog rests
    m.run_once()
    now[0] += 100
    m.run_once()
    assert len(made) == 2
    m.stop()


def test_writes_while_disconnected_mark_the_service_dirty() -> None:
    m = ZkMirror("zk:2181", "prod", client_factory=lambda h, t: FakeClient())  # type: ignore[arg-type,return-value]
    m.start()
    try:
        assert m.put_service(svc()) is None  # no zxid: not mirrored now
        zxid = m.instance_changed(
            "web", "10.0.0.1:80", inst(service="web"), m.prepare_instance("web", "x")
        )
        assert zxid is None
        assert set(m.dirty) == {"api", "web"}
        assert m.status()["lagging"] is True
    finally:
        m.stop()


def test_count_patch_falls_back_on_a_service_node_it_did_not_write() -> None:
    layout = Layout("prod")
    ok = b'{"instances":2,"name":"s"}'
    assert count_op(layout, "s", (ok, 5, 2), +1)[1] is not None
    assert count_op(layout, "s", (ok, 5, 2), 0) == (True, None)
    for data in (None, b"", b"not json", b"[1]", b'{"instances":true}', b'{"instances":3}'):
        assert count_op(layout, "s", (data, 5, 1), +1) == (False, None)  # type: ignore[arg-type]


def test_guard_log_vouches_only_for_the_commits_it_recorded() -> None:
    empty = GuardLog.parse(b"", 7)
    assert empty.untouched("a", 7, 7)  # nothing committed since the pre-read
    assert not empty.untouched("a", 6, 7)  # a commit that vouched for nothing
    log = GuardLog.parse(empty.encode_after(8, ["a"]), 8)
    log = GuardLog.parse(log.encode_after(9, ["b", "c"]), 9)
    assert log.untouched("a", 8, 9) and not log.untouched("b", 8, 9)
    assert not log.untouched("a", 7, 9)  # commit 8 touched a
    assert log.untouched("d", 7, 9)
    assert not log.untouched("d", 6, 9)  # commit 7 is not in the log
    assert not log.untouched("d", 10, 9)  # a pre-read ahead of the guard: another server
    assert GuardLog.parse(log.encode_after(10, ["x"]), 9).entries == ()  # not written at 9
    for junk in (b"junk", b"[]", b'{"log": 3}', b'{"log": [[9, "a"]]}', b'{"log": [["9", []]]}'):
        assert GuardLog.parse(junk, 9).entries == ()
    gap = GuardLog(((3, frozenset("a")), (5, frozenset("b"))))
    assert GuardLog.parse(gap.encode_after(6, ["c"]), 6).entries == (
        (5, frozenset("b")), (6, frozenset("c")))  # fmt: skip
    assert [v for v, _ in GuardLog.parse(gap.encode_after(9, ["c"]), 9).entries] == [9]


def test_guard_log_stays_bounded() -> None:
    log = GuardLog()
    for v in range(1, 200):
        log = GuardLog.parse(log.encode_after(v, [f"10.0.{v}.{i}:80" for i in range(5)]), v)
    assert len(log.entries) <= MAX_VERSIONS
    assert sum(len(ids) for _, ids in log.entries) <= MAX_IDS
    assert log.entries[-1][0] == 199 and log.untouched("10.0.198.0:80", 199, 199)
    assert not log.untouched("x", 1, 199)  # too old to vouch for


LAYOUT = Layout("prod")
GUARD = LAYOUT.guard("api")


def parent(children: int) -> tuple[bytes, int, int]:
    return service_payload(svc(), children), 4, children


def node(i: int, **kw: Any) -> tuple[str, tuple[bytes, int]]:
    record = inst(host=f"10.0.0.{i}", **kw)
    return LAYOUT.instance("api", record.id), (instance_payload(record), 2)


def test_group_commit_publishes_fresh_changes_with_one_guard_bump() -> None:
    nodes = dict([node(1), node(2)])
    guard_data = GuardLog().encode_after(10, ["10.0.0.9:80"])
    changes = [
        Change("10.0.0.1:80", inst(host="10.0.0.1", weight=5), since=9),  # set
        Change("10.0.0.2:80", None, since=10),  # delete
        Change("10.0.0.3:80", inst(host="10.0.0.3"), since=10),  # create
        Change("10.0.0.4:80", None, since=10),  # delete of a node not there: still committed
        Change("10.0.0.5:80", inst(host="10.0.0.5"), since=10),  # create
    ]
    bp = plan_batch(LAYOUT, "api", changes, (guard_data, 10), parent(2), nodes)
    assert bp.commit == (0, 1, 2, 3, 4) and bp.stale == () and bp.resync == ()
    kinds = [(o.kind, o.path.rsplit("/", 1)[-1]) for o in bp.ops]
    assert kinds == [("set", "10.0.0.1:80"), ("delete", "10.0.0.2:80"), ("create", "10.0.0.3:80"),
                     ("create", "10.0.0.5:80"), ("set", "api"), ("set", "api")]  # fmt: skip
    count, guard = bp.ops[-2], bp.ops[-1]
    assert json.loads(count.data)["instances"] == 3 and count.version == 4  # 2 - 1 + 2
    assert guard.path == GUARD and guard.version == 10
    after = GuardLog.parse(guard.data, 11)
    assert after.untouched("10.0.0.9:80", 10, 11)
    assert not any(after.untouched(c.iid, 10, 11) for c in changes)


def test_group_commit_sends_back_what_a_newer_commit_may_have_overtaken() -> None:
    guard_data = GuardLog().encode_after(10, ["10.0.0.1:80"])
    changes = [
        Change("10.0.0.1:80", inst(host="10.0.0.1", weight=1), since=9),  # touched at 10
        Change("10.0.0.2:80", inst(host="10.0.0.2", weight=2), since=9),
        Change("10.0.0.2:80", inst(host="10.0.0.2", weight=3), since=10),  # same node: last wins
        Change("10.0.0.3:80", inst(host="10.0.0.3"), since=8),  # commit 9 is not in the log
    ]
    bp = plan_batch(LAYOUT, "api", changes, (guard_data, 10), parent(0), {})
    assert bp.commit == (2,) and bp.stale == (0, 1, 3) and bp.resync == ()
    created = [o for o in bp.ops if o.kind == "create"]
    assert [json.loads(o.data)["weight"] for o in created] == [3]


def test_group_commit_needs_a_full_sync_without_a_service_node_atlas_wrote() -> None:
    changes = [
        Change("10.0.0.1:80", inst(), since=3),  # a create: the count must change
        Change("10.0.0.2:80", inst(host="10.0.0.2"), since=3),  # a set: no count change
    ]
    assert plan_batch(LAYOUT, "api", changes, (b"", 3), None, {}).resync == (0, 1)
    nodes = dict([node(2, weight=7)])
    foreign = (b'{"name": "api"}', 4, 1)  # no count: not what Atlas wrote
    bp = plan_batch(LAYOUT, "api", changes, (b"", 3), foreign, nodes)
    assert bp.resync == (0,) and bp.commit == (1,) and bp.stale == ()
    assert [(o.kind, o.path) for o in bp.ops] == [
        ("set", LAYOUT.instance("api", "10.0.0.2:80")), ("set", GUARD)]  # fmt: skip
