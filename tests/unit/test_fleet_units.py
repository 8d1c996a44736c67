"""The fleet's view: the pure rules of convergence and of the sidecar list, and the two
endpoints in-process with an injected fleet (no ZooKeeper) or none at all (503)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace

from flask import Flask
from kazoo.client import KazooClient

from atlas.contract import LaggingService, SidecarReport
from atlas.fleet import (
    NodeInfo,
    ServiceState,
    SidecarNode,
    ZkFleet,
    convergence,
    iso_ms,
    page,
    read_node,
    service_state,
    sidecar_item,
)
from tests.unit.conftest import Client

NOW_MS = 1_700_000_100_000.0
NODE = NodeInfo(
    created_ms=1_700_000_000_000,
    modified_ms=1_700_000_099_000,
    version=7,
    session=0x1234,
    mzxid=40,
)


def sidecar(host_id: str, applied: int, **kw: object) -> SidecarNode:
    report = SidecarReport(host_id=host_id, realm="unit", applied_index=applied, **kw)  # type: ignore[arg-type]
    return SidecarNode(host_id=host_id, report=report, node=NODE)


def stat(mzxid: int, mtime: int, pzxid: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(mzxid=mzxid, mtime=mtime, pzxid=pzxid if pzxid is not None else mzxid)


# service node changed at 10 (t=1000 s), instances at 20 (t=1010 s) and 30 (t=1020 s)
STATE = service_state(
    "web",
    stat(10, 1_700_000_000_000, pzxid=12),
    [stat(30, 1_700_000_020_000), stat(20, 1_700_000_010_000)],
)


def test_service_state_is_the_change_index_and_each_nodes_last_change() -> None:
    assert STATE.index == 30
    assert STATE.instances == 2
    assert STATE.changes == (
        (10, 1_700_000_000_000),
        (20, 1_700_000_010_000),
        (30, 1_700_000_020_000),
    )
    assert STATE.first_change_after(15) == (20, 1_700_000_010_000)
    assert STATE.first_change_after(30) is None
    # An instance detached: only the parent's pzxid moved.
    detached = service_state("web", stat(10, 1_700_000_000_000, pzxid=50), [])
    assert detached.index == 50


def test_converged_means_every_sidecar_has_applied_the_latest_change() -> None:
    body = convergence("web", STATE, [sidecar("a", 30), sidecar("b", 31)], NOW_MS)
    assert body["converged"] is True and body["state"] == "converged"
    assert body["summary"] == {"total": 2, "converged": 2, "lagging": 0, "unreadable": 0}
    assert body["index"] == 30
    assert body["changed_at"] == iso_ms(1_700_000_020_000)
    assert [s["status"] for s in body["sidecars"]] == ["converged", "converged"]
    assert all(s["behind_s"] is None for s in body["sidecars"])


def test_a_lagging_sidecar_is_behind_since_the_first_change_it_has_not_applied() -> None:
    body = convergence("web", STATE, [sidecar("a", 30), sidecar("b", 15)], NOW_MS)
    assert body["converged"] is False and body["state"] == "lagging"
    assert body["summary"] == {"total": 2, "converged": 1, "lagging": 1, "unreadable": 0}
    b = body["sidecars"][1]
    assert b["status"] == "lagging" and b["applied_index"] == 15
    # The change at 20 (t=1010 s), not the latest one at 30: 90 s before NOW.
    assert b["behind_since"] == iso_ms(1_700_000_010_000)
    assert b["behind_s"] == 90.0


def test_a_service_listed_in_a_reports_lagging_uses_its_own_applied_index() -> None:
    lag = LaggingService(
        applied_index=10, reason="waiting for a reload", since="2023-11-14T22:13:30Z"
    )
    body = convergence("web", STATE, [sidecar("a", 99, lagging={"web": lag})], NOW_MS)
    a = body["sidecars"][0]
    assert a["status"] == "lagging" and a["applied_index"] == 10
    assert a["reported"] == {"reason": "waiting for a reload", "since": "2023-11-14T22:13:30Z"}
    assert a["behind_since"] == iso_ms(1_700_000_010_000)
    # Lagging in another service does not make it lag in this one.
    other = convergence("web", STATE, [sidecar("a", 99, lagging={"api": lag})], NOW_MS)
    assert other["converged"] is True


def test_no_sidecars_is_said_and_is_not_converged() -> None:
    body = convergence("web", STATE, [], NOW_MS)
    assert body["state"] == "no-sidecars"
    assert body["converged"] is False
    assert body["summary"]["total"] == 0


def test_a_service_not_mirrored_or_with_a_pending_write_never_looks_converged() -> None:
    body = convergence("web", None, [sidecar("a", 10**9)], NOW_MS)
    assert body["state"] == "not-mirrored" and body["converged"] is False
    assert body["mirrored"] is False and body["index"] is None
    assert body["sidecars"][0]["status"] == "lagging"
    pending = convergence("web", STATE, [sidecar("a", 99)], NOW_MS, mirror_pending=True)
    assert pending["state"] == "mirror-pending" and pending["converged"] is False


def test_an_unreadable_report_is_counted_and_never_converged() -> None:
    bad = read_node("junk", b"{not json", SimpleNamespace(ctime=1, mtime=2, version=0,
                                                         ephemeralOwner=5, mzxid=3))  # fmt: skip
    assert bad.report is None and bad.problem
    body = convergence("web", STATE, [sidecar("a", 30), bad], NOW_MS)
    assert body["summary"] == {"total": 2, "converged": 1, "lagging": 0, "unreadable": 1}
    assert body["converged"] is False and body["state"] == "lagging"
    assert body["sidecars"][1]["status"] == "unreadable"


def test_sidecar_item_carries_the_report_and_the_nodes_zookeeper_facts() -> None:
    sc = sidecar("h1:4000", 42, reloads=3, stale=True, stale_reasons=("zk down",))
    item = sidecar_item(sc, NOW_MS)
    assert item["valid"] is True and item["host_id"] == "h1:4000"
    assert (item["applied_index"], item["reloads"], item["stale"]) == (42, 3, True)
    assert item["stale_reasons"] == ["zk down"]
    zk = item["zookeeper"]
    assert zk["session_id"] == "0x1234"
    assert zk["session_age_s"] == 100.0 and zk["report_age_s"] == 1.0
    assert zk["created_at"] == "2023-11-14T22:13:20.000Z"
    bad = sidecar_item(replace(sc, report=None, problem="not a report"), NOW_MS)
    assert bad == {"host_id": "h1:4000", "valid": False, "problem": "not a report",
                   "zookeeper": zk}  # fmt: skip


def test_pages_of_host_ids() -> None:
    ids = ["a", "b", "c", "d", "e"]
    assert page(ids, 2, None) == (["a", "b"], "b")
    assert page(ids, 2, "b") == (["c", "d"], "d")
    assert page(ids, 2, "d") == (["e"], None)
    assert page(ids, 5, None) == (ids, None)
    assert page([], 5, None) == ([], None)


# ------------------------------------------------------------------ the endpoints in-process


class FakeFleet:
    """A fleet with fixed answers (ServiceState by name, nodes by host id)."""

    def __init__(self, nodes: Sequence[SidecarNode], states: dict[str, ServiceState]) -> None:
        self.nodes = {n.host_id: n for n in nodes}
        self.states = states
        self.reads: list[Sequence[str] | None] = []

    def check(self) -> None:
        pass

    def host_ids(self) -> list[str]:
        return sorted(self.nodes)

    def sidecars(self, host_ids: Sequence[str] | None = None) -> list[SidecarNode]:
        self.reads.append(host_ids)
        ids = sorted(self.nodes) if host_ids is None else sorted(host_ids)
        return [self.nodes[h] for h in ids if h in self.nodes]

    def service_state(self, name: str) -> ServiceState | None:
        return self.states.get(name)


def test_without_zookeeper_both_endpoints_are_503_naming_the_cause(client: Client) -> None:
    client.post("/v1/services", json={"name": "web"})
    for path in ("/v1/sidecars", "/v1/services/web/convergence", "/v1/services/nope/convergence"):
        resp = client.get(path)
        assert resp.status_code == 503, path
        assert resp.mimetype == "application/problem+json"
        assert resp.json["type"].endswith("/zookeeper-not-configured")
        assert "ATLAS_ZK_HOSTS" in resp.json["detail"]
        assert resp.headers["Retry-After"]


def test_sidecar_list_is_sorted_paginated_and_shows_unreadable_nodes(
    app: Flask, client: Client
) -> None:
    bad = replace(sidecar("c", 0), report=None, problem="not a report")
    fleet = FakeFleet([sidecar("d", 5), sidecar("a", 5), bad, sidecar("b", 5)], {})
    app.extensions["atlas"].fleet = fleet
    first = client.get("/v1/sidecars?limit=2")
    assert first.status_code == 200
    assert [i["host_id"] for i in first.json["items"]] == ["a", "b"]
    assert fleet.reads[-1] == ["a", "b"]  # only the page's nodes are read
    second = client.get(f"/v1/sidecars?limit=2&cursor={first.json['next_cursor']}")
    assert [i["host_id"] for i in second.json["items"]] == ["c", "d"]
    assert second.json["items"][0]["valid"] is False
    assert second.json["next_cursor"] is None
    whole = client.get("/v1/sidecars")
    assert [i["host_id"] for i in whole.json["items"]] == ["a", "b", "c", "d"]
    bad_cursor = client.get("/v1/sidecars?cursor=eyJub3RoaW5nIjoxfQ")
    assert bad_cursor.status_code == 422 and "cursor" in bad_cursor.json["errors"]
    assert client.get("/v1/sidecars?limit=0").status_code == 422


def test_convergence_404s_an_unknown_service_and_reads_a_known_one(
    app: Flask, client: Client
) -> None:
    fleet = FakeFleet([sidecar("a", 30), sidecar("b", 15)], {"web": STATE})
    app.extensions["atlas"].fleet = fleet
    missing = client.get("/v1/services/web/convergence")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert client.get("/v1/services/Bad_Name/convergence").status_code == 422
    client.post("/v1/services", json={"name": "web"})
    body = client.get("/v1/services/web/convergence").json
    assert body["state"] == "lagging" and body["summary"]["lagging"] == 1
    # In DynamoDB, not (yet) in ZooKeeper: not converged.
    client.post("/v1/services", json={"name": "fresh"})
    fresh = client.get("/v1/services/fresh/convergence").json
    assert fresh["state"] == "not-mirrored" and fresh["converged"] is False


def test_a_service_token_may_read_the_fleet(app: Flask, client: Client) -> None:
    app.extensions["atlas"].fleet = FakeFleet([sidecar("a", 30)], {"web": STATE})
    client.post("/v1/services", json={"name": "web"})
    client.post("/v1/services", json={"name": "other"})
    token = client.post("/v1/services/other/tokens", json={}).json["token"]
    svc = Client(app.test_client(), token=token)
    assert svc.get("/v1/sidecars").status_code == 200
    assert svc.get("/v1/services/web/convergence").json["converged"] is True
    anon = Client(app.test_client(), token=None)
    assert anon.get("/v1/sidecars").status_code == 401


def test_a_zookeeper_without_a_session_is_503_unavailable(app: Flask, client: Client) -> None:
    never_started = KazooClient(hosts="127.0.0.1:1")
    app.extensions["atlas"].fleet = ZkFleet(lambda: never_started, "unit")
    client.post("/v1/services", json={"name": "web"})
    for path in ("/v1/sidecars", "/v1/services/web/convergence"):
        resp = client.get(path)
        assert resp.status_code == 503, path
        assert resp.json["type"].endswith("/zookeeper-unavailable")
        assert resp.headers["Retry-After"] == "2"
