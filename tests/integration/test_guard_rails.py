"""Guard rails on disable, on real servers (gunicorn, moto server, ZooKeeper): timed disables
that Atlas ends itself (mirrored and audited, once, never undoing a later change), min_enabled
refusals that hold under concurrent writers, drain and slow start in the znodes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from atlas.client import Session
from atlas.config import Settings
from atlas.mirror.reconciler import Reconciler
from atlas.registry import Registry, build_models_for
from atlas.registry.expiry import EXPIRY_PRINCIPAL, ExpirySweep
from atlas.stack import (
    AtlasServer,
    MotoServer,
    ZooKeeperServer,
    wait_for_port,
)
from tests.helpers import ApiClient, wait_until
from tests.integration.conftest import StartAtlas, atlas_env, migrate
from tests.integration.scripted import MakeMirror, ScriptedTruth, mirror_on  # noqa: F401
from tests.integration.test_end_to_end import echo_backends, sidecar_process  # noqa: F401
from tests.integration.zkview import truth_tree, zk_tree

FAST = {"ATLAS_ZK_TIMEOUT_S": "2", "ATLAS_RECONCILE_INTERVAL_S": "5"}


def rfc3339(seconds: float) -> str:
    """now + seconds, as RFC 3339."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def url(service: str, iid: str) -> str:
    return f"/v1/services/{service}/instances/{iid}"


def node(zk: str, realm: str, service: str, iid: str) -> dict[str, Any]:
    return zk_tree(zk, realm)[f"/atlas/{realm}/services/{service}/{iid}"]


def expiry_records(api: ApiClient, service: str) -> list[dict[str, Any]]:
    items = api.get(f"/v1/audit?service={service}&limit=1000").json()["items"]
    return [r for r in items if r["principal"] == EXPIRY_PRINCIPAL]


def start_zk_atlas(start: StartAtlas, zk: ZooKeeperServer, realm: str, **kw: Any) -> AtlasServer:
    return start(realm, ATLAS_ZK_HOSTS=zk.address, **FAST, **kw)


# ------------------------------------------------------------------ timed disables


def test_a_timed_disable_ends_by_itself_in_dynamodb_and_zookeeper_and_the_audit_says_who(
    zk_server: ZooKeeperServer, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    atlas = start_zk_atlas(start_atlas, zk_server, realm)
    api = ApiClient(atlas.url)
    zk = zk_server.address
    assert api.post("/v1/services", json={"name": "web"}).status_code == 201
    for iid in ("10.0.0.1:80", "10.0.0.2:80"):
        assert api.put(url("web", iid), json={"slow_start_s": 20}).status_code == 201
    assert api.patch(url("web", "10.0.0.1:80"), json={"drain": True}).json()["drain"] is True
    assert node(zk, realm, "web", "10.0.0.1:80")["drain"] is True
    assert node(zk, realm, "web", "10.0.0.1:80")["slow_start_s"] == 20
    off = api.patch(
        url("web", "10.0.0.1:80"),
        json={"enabled": False, "disabled_reason": "kernel", "disabled_until": rfc3339(2)},
    )
    assert off.status_code == 200 and off.json()["disabled_until"]
    version = off.json()["version"]
    assert node(zk, realm, "web", "10.0.0.1:80")["haproxy_server_options"] == "disabled"

    def enabled_in_dynamodb() -> dict[str, Any] | None:
        got: dict[str, Any] = api.get(url("web", "10.0.0.1:80")).json()  # read from DynamoDB
        return got if got["enabled"] else None

    got = wait_until(enabled_in_dynamodb, timeout=30, what="the timed disable to end")
    assert (got["disabled_reason"], got["disabled_until"], got["drain"]) == (None, None, False)
    assert got["version"] == version + 1 and got["slow_start_s"] == 20

    def enabled_in_zookeeper() -> bool:
        n = node(zk, realm, "web", "10.0.0.1:80")
        return n["enabled"] is True and n["version"] == version + 1

    wait_until(enabled_in_zookeeper, what="the enable mirrored")
    n = node(zk, realm, "web", "10.0.0.1:80")
    assert "haproxy_server_options" not in n and "drain" not in n and n["slow_start_s"] == 20
    assert zk_tree(zk, realm) == truth_tree(moto_server.url, realm)

    (record,) = wait_until(lambda: expiry_records(api, "web"), what="the audit record")
    assert record["target"] == "10.0.0.1:80" and record["action"] == "expire disabled_until"
    assert record["token_id"] is None and record["status"] == 200
    assert api.get(url("web", "10.0.0.2:80")).json()["version"] == 1  # untouched


def test_enabling_by_hand_clears_the_end(
    zk_server: ZooKeeperServer, start_atlas: StartAtlas, realm: str
) -> None:
    atlas = start_zk_atlas(start_atlas, zk_server, realm)
    api = ApiClient(atlas.url)
    api.post("/v1/services", json={"name": "web"})
    api.put(url("web", "10.0.0.1:80"), json={})
    api.patch(url("web", "10.0.0.1:80"), json={"enabled": False, "disabled_until": rfc3339(2)})
    on = api.patch(url("web", "10.0.0.1:80"), json={"enabled": True}).json()
    assert on["disabled_until"] is None
    # A sentinel that expires later proves the sweep ran after the enable: it wrote nothing more.
    api.put(url("web", "10.0.0.9:80"), json={})
    api.patch(url("web", "10.0.0.9:80"), json={"enabled": False, "disabled_until": rfc3339(3)})
    wait_until(lambda: api.get(url("web", "10.0.0.9:80")).json()["enabled"], timeout=30,
               what="the sentinel's end")  # fmt: skip
    assert api.get(url("web", "10.0.0.1:80")).json()["version"] == on["version"]
    records = wait_until(lambda: expiry_records(api, "web"), what="the audit record")
    assert [r["target"] for r in records] == ["10.0.0.9:80"]


def test_two_atlas_processes_end_each_timed_disable_once_and_never_undo_a_later_change(
    zk_server: ZooKeeperServer, start_atlas: StartAtlas, realm: str
) -> None:
    a = start_zk_atlas(start_atlas, zk_server, realm)
    b = start_zk_atlas(start_atlas, zk_server, realm)
    api_a, api_b = ApiClient(a.url), ApiClient(b.url)
    api_a.post("/v1/services", json={"name": "web"})
    ids = [f"10.0.0.{n}:80" for n in range(1, 7)]
    for iid in [*ids, "10.0.1.1:80"]:
        api_a.put(url("web", iid), json={})
    # Rounds in which an operator disables again (open-ended) right about when the end passes:
    # whichever lands first, the operator's disable must stand.
    for n, iid in enumerate(ids):
        api = api_a if n % 2 else api_b
        api.patch(url("web", iid), json={"enabled": False, "disabled_until": rfc3339(1)})
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    for n, iid in enumerate(ids[:3]):
        if n == 1:  # one of them exactly at the end, the others around it
            pause = (deadline - datetime.now(UTC)).total_seconds()
            threading.Event().wait(max(0.0, pause))
        resp = api_b.patch(url("web", iid), json={"enabled": False, "disabled_reason": "manual"})
        assert resp.status_code == 200
    # A sentinel ending after every manual change: once it is enabled, the leader's sweep has
    # run after them (one thread, in order), so any write it was about to make has been made.
    api_a.patch(url("web", "10.0.1.1:80"), json={"enabled": False, "disabled_until": rfc3339(2)})

    def settled() -> bool:
        items = api_a.get("/v1/services/web/instances").json()["items"]
        by_id = {i["id"]: i for i in items}
        return by_id["10.0.1.1:80"]["enabled"] and all(by_id[i]["enabled"] for i in ids[3:])

    wait_until(settled, timeout=30, what="the sentinel and the untouched ends")
    items = {i["id"]: i for i in api_a.get("/v1/services/web/instances").json()["items"]}
    for iid in ids[:3]:
        assert (items[iid]["enabled"], items[iid]["disabled_reason"]) == (False, "manual"), iid
    records = wait_until(
        lambda: len(r := expiry_records(api_a, "web")) >= 4 and r, what="audit records"
    )
    ended = [r["target"] for r in records]
    assert len(ended) == len(set(ended)), ended  # never twice
    assert set(ids[3:]) | {"10.0.1.1:80"} <= set(ended) <= set(ids) | {"10.0.1.1:80"}

    # The leader stops: the other process takes over the sweep.
    def leaders() -> list[bool]:
        return [ApiClient(s.url).get("/v1/info").json()["mirror"]["leader"] for s in (a, b)]

    wait_until(lambda: sum(leaders()) == 1, what="one leader")
    leader, other = (a, b) if leaders()[0] else (b, a)
    leader.stop()
    api = ApiClient(other.url)
    api.patch(url("web", ids[0]), json={"enabled": False, "disabled_until": rfc3339(1)})
    wait_until(lambda: api.get(url("web", ids[0])).json()["enabled"], timeout=40,
               what="the other process ending it")  # fmt: skip


def test_a_stale_expiry_write_is_refused_by_the_real_store(
    moto_server: MotoServer, realm: str
) -> None:
    """Two sweeps (as during a leadership handover) against the moto server over HTTP: the
    write is conditional on the version that set the end, so neither undoes a later change
    and the instance is enabled once."""
    env = atlas_env(moto_server, realm)
    migrate(env)
    registry = Registry(build_models_for(Settings.from_env(env)))
    registry.create_service({"name": "web"})
    for n in (1, 2):
        registry.put_instance("web", f"10.0.0.{n}", 80, {})
        registry.update_instance(
            "web", f"10.0.0.{n}", 80,
            {"enabled": False, "disabled_until": datetime.now(UTC) + timedelta(seconds=1)},
        )  # fmt: skip
    seen = wait_until(
        lambda: len(d := registry.due_expiries()) == 2 and d, what="both ends to pass"
    )
    # After both sweeps read: the operator disables 10.0.0.1 again, for an hour.
    registry.update_instance(
        "web", "10.0.0.1", 80,
        {"enabled": False, "disabled_until": datetime.now(UTC) + timedelta(hours=1)},
    )  # fmt: skip
    first, second = ExpirySweep(registry), ExpirySweep(registry)
    results = {d.instance_id: registry.expire_disable(d) for d in seen}  # the first sweep
    assert {k: v is not None for k, v in results.items()} == {
        "10.0.0.1:80": False,
        "10.0.0.2:80": True,
    }
    assert [registry.expire_disable(d) for d in seen] == [None, None]  # the second, same read
    assert first.run_once() == [] and second.run_once() == []
    one = registry.get_instance("web", "10.0.0.1", 80)
    assert one.enabled is False and one.disabled_until is not None
    two = registry.get_instance("web", "10.0.0.2", 80)
    assert two.enabled is True and two.version == 3  # put, disable, one enable


class Flaky:
    """A leader task that fails every other run."""

    interval_s = 0.05

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def run_once(self) -> None:
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("boom")


def test_leader_tasks_run_only_on_the_leader_and_their_failures_are_counted(
    mirror_on: MakeMirror,  # noqa: F811
) -> None:
    tasks = [Flaky("a"), Flaky("b")]
    reconcilers = [
        Reconciler(mirror_on(ScriptedTruth([], [])), interval=60, contend_s=0.5, tasks=[t])
        for t in tasks
    ]
    for r in reconcilers:
        r.start()
    try:
        lead = wait_until(lambda: [r for r in reconcilers if r.leading], what="a leader")
        assert len(lead) == 1
        (leader,) = lead
        i = reconcilers.index(leader)
        wait_until(lambda: tasks[i].calls >= 4, what="the leader's task running")
        counters = leader.task_counters[tasks[i].name]
        wait_until(lambda: counters["failures"] >= 2 and counters["runs"] >= 2, what="counts")
        assert tasks[1 - i].calls == 0  # the follower's never ran
        leader.stop()
        wait_until(lambda: tasks[1 - i].calls >= 2, timeout=30, what="the new leader's task")
    finally:
        for r in reconcilers:
            r.stop()


# ------------------------------------------------------------------ min_enabled


def concurrently(*calls: Callable[[], requests.Response]) -> list[requests.Response]:
    """Send the calls at the same moment, one thread each."""
    barrier = threading.Barrier(len(calls))
    out: list[requests.Response | None] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


def test_two_concurrent_disables_each_fine_alone_but_not_together_exactly_one_wins(
    zk_server: ZooKeeperServer, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    # Two gunicorn workers (two processes) of one Atlas, and a second Atlas: the writes race
    # across processes, not only threads.
    one = start_zk_atlas(start_atlas, zk_server, realm, workers=2)
    two = start_zk_atlas(start_atlas, zk_server, realm)
    a, b = ApiClient(one.url), ApiClient(two.url)
    a.post("/v1/services", json={"name": "web", "min_enabled": 2})
    ids = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    for iid in ids:
        a.put(url("web", iid), json={})
    # Ways to take 10.0.0.2 out of service, each raced against a plain disable of 10.0.0.1.
    takes: list[tuple[str, Callable[[], requests.Response], Callable[[], Any]]] = [
        ("disable", lambda: b.patch(url("web", ids[1]), json={"enabled": False}),
         lambda: a.patch(url("web", ids[1]), json={"enabled": True})),
        ("drain", lambda: b.patch(url("web", ids[1]), json={"drain": True}),
         lambda: a.patch(url("web", ids[1]), json={"drain": False})),
        ("detach", lambda: b.delete(url("web", ids[1])),
         lambda: a.put(url("web", ids[1]), json={})),
        ("host-disable", lambda: b.post("/v1/hosts/10.0.0.2/disable"),
         lambda: a.post("/v1/hosts/10.0.0.2/enable")),
        ("replace", lambda: b.put(url("web", ids[1]), json={"enabled": False}),
         lambda: a.put(url("web", ids[1]), json={})),
    ]  # fmt: skip
    outcomes = []
    for round_ in range(15):
        what, take, undo = takes[round_ % len(takes)]
        first, second = concurrently(
            lambda: a.patch(url("web", ids[0]), json={"enabled": False, "disabled_reason": "x"}),
            take,
        )
        statuses = sorted([first.status_code, second.status_code])
        assert statuses in ([200, 409], [204, 409]), (what, first.text, second.text)
        refused = first if first.status_code == 409 else second
        problem = refused.json()
        assert problem["refused"] == [{"service": "web", "min_enabled": 2, "enabled_after": 1}]
        assert "'web'" in problem["detail"]
        # b's write reaches a's in-memory view a moment later: ask the truth.
        items = a.get("/v1/services/web/instances?consistent=true").json()["items"]
        assert sum(1 for i in items if i["enabled"] and not i["drain"]) == 2, (what, items)
        outcomes.append((what, first.status_code != 409))
        if first.status_code == 409:
            undo()
        else:
            a.patch(url("web", ids[0]), json={"enabled": True})
    assert zk_tree(zk_server.address, realm) == truth_tree(moto_server.url, realm)
    print("winners (take, plain disable of 10.0.0.1 won):", outcomes)


def test_a_refused_host_disable_writes_nothing_anywhere(
    zk_server: ZooKeeperServer, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    atlas = start_zk_atlas(start_atlas, zk_server, realm)
    api = ApiClient(atlas.url)
    api.post("/v1/services", json={"name": "api", "min_enabled": 1})
    api.post("/v1/services", json={"name": "solo", "min_enabled": 1})
    api.post("/v1/services", json={"name": "free"})
    for service, iid in (("api", "10.0.0.1:80"), ("api", "10.0.0.2:80"),
                         ("solo", "10.0.0.1:90"), ("free", "10.0.0.1:70")):  # fmt: skip
        api.put(url(service, iid), json={})
    before = zk_tree(zk_server.address, realm)
    resp = api.post("/v1/hosts/10.0.0.1/disable", json={"reason": "disk"})
    assert resp.status_code == 409
    assert resp.json()["refused"] == [{"service": "solo", "min_enabled": 1, "enabled_after": 0}]
    assert all(i["enabled"] for i in api.get("/v1/hosts/10.0.0.1").json()["items"])
    assert zk_tree(zk_server.address, realm) == before
    forced = api.post("/v1/hosts/10.0.0.1/disable?force=true", json={"reason": "disk"})
    assert forced.status_code == 200 and not any(i["enabled"] for i in forced.json()["items"])
    assert api.get(url("api", "10.0.0.2:80")).json()["enabled"] is True
    assert zk_tree(zk_server.address, realm) == truth_tree(moto_server.url, realm)


# ------------------------------------------------------------------ through the sidecar


def test_drain_and_a_timed_disable_reach_haproxy_through_the_sidecar(
    zk_server: ZooKeeperServer,
    start_atlas: StartAtlas,
    realm: str,
    echo_backends: list[int],  # noqa: F811
    tmp_path: Path,
) -> None:
    """API → DynamoDB → ZooKeeper → atlas-sidecar → HAProxy: a drain takes an instance out of
    new traffic, an undrain and the end of a timed disable bring it back, with no reload."""
    atlas = start_zk_atlas(start_atlas, zk_server, realm)
    api = ApiClient(atlas.url)
    b0, b1, _ = echo_backends
    api.post("/v1/services", json={"name": "identity", "min_enabled": 1})
    for p in (b0, b1):
        assert api.put(url("identity", f"127.0.0.1:{p}"), json={"slow_start_s": 1}).ok
    sidecar, port, status_port = sidecar_process(zk_server.address, realm, tmp_path)
    sidecar.start()
    try:
        wait_for_port(port, timeout=30, proc=sidecar.proc)
        wait_for_port(status_port, timeout=30, proc=sidecar.proc)
        client = Session(sidecar_url=f"http://127.0.0.1:{port}")

        def status() -> dict[str, Any]:
            got: dict[str, Any] = requests.get(
                f"http://127.0.0.1:{status_port}/status", timeout=5
            ).json()
            return got

        def hit(n: int = 20) -> set[str]:
            return {client.get("service://identity/").json()["backend"] for _ in range(n)}

        wait_until(lambda: hit() == {"b0", "b1"}, timeout=30, what="both instances serve")
        wait_until(lambda: status()["stale"] is False, what="settled")
        reloads = status()["reloads"]
        assert api.patch(url("identity", f"127.0.0.1:{b0}"), json={"drain": True}).ok
        wait_until(lambda: hit() == {"b1"}, what="traffic leaves the draining instance")
        # the last serving instance is guarded
        refused = api.patch(url("identity", f"127.0.0.1:{b1}"), json={"enabled": False})
        assert refused.status_code == 409
        assert api.patch(url("identity", f"127.0.0.1:{b0}"), json={"drain": False}).ok
        wait_until(lambda: hit() == {"b0", "b1"}, what="undrained")
        timed = {"enabled": False, "disabled_until": rfc3339(5)}
        assert api.patch(url("identity", f"127.0.0.1:{b1}"), json=timed).ok
        wait_until(lambda: hit() == {"b0"}, what="the timed disable applied")
        wait_until(lambda: hit() == {"b0", "b1"}, timeout=30, what="its end applied")
        assert status()["reloads"] == reloads  # all through the runtime API
    finally:
        sidecar.stop()
        log = (tmp_path / "sidecar.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
