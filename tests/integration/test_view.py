"""Reads from memory, on real ZooKeeper, moto server and gunicorn: every Atlas process's view.

What must hold (no timed assertions; waits are for conditions):
- a read from the view is byte-identical to the same read from DynamoDB (`?consistent=true`);
- a process never serves from its view a state older than a write it acknowledged;
- across two processes, `?min_index=` gives read-your-writes;
- a revoked token stops working on every process, told by the revocation stamp;
- a view that fell behind (ZooKeeper down, wiped, session expired) is detected and reads fall
  back to DynamoDB rather than serving old data as current;
- blocking queries return on a change made through another process, or after `wait` with the
  same index, and past the bound on waiters answer 503 with Retry-After.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import requests
from kazoo.client import KazooClient

from atlas.stack import AtlasServer, MotoServer, ZooKeeperServer
from tests.helpers import ApiClient, wait_until
from tests.integration.conftest import StartAtlas


def view_state(server: AtlasServer) -> dict[str, Any]:
    """The view part of /v1/info (one worker per server here, so one view)."""
    info: dict[str, Any] = ApiClient(server.url).get("/v1/info").json()["view"]
    return info


def current(server: AtlasServer) -> bool:
    """True once the server's view is current."""
    return bool(view_state(server)["state"] == "current")


def seed(api: ApiClient, name: str, n: int) -> None:
    assert api.post("/v1/services", json={"name": name, "description": "the catalog",
                                          "owner": "team-c", "port": 8080, "tags": ["tier-1"],
                                          "health_check": {"path": "/health"}}).status_code == 201  # fmt: skip
    for i in range(n):
        body: dict[str, Any] = {"zone": f"z{i % 3}", "weight": 10 + i, "labels": {"rack": f"r{i}"}}
        if i % 4 == 3:
            body.update(enabled=False, disabled_reason="deploying")
        assert api.put(f"/v1/services/{name}/instances/10.9.0.{i}:80", json=body).status_code == 201


def from_view(api: ApiClient, path: str) -> requests.Response:
    """GET path until it is served from the view (the view catches up in milliseconds)."""
    return wait_until(
        lambda: (r := api.get(path)).headers.get("X-Atlas-Source") == "view" and r,
        what=f"{path} from the view",
    )


def test_view_reads_are_byte_identical_to_store_reads(
    start_atlas: StartAtlas, realm: str, zk_hosts: str
) -> None:
    a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    api = ApiClient(a.url)
    seed(api, "catalog", 8)
    assert api.put("/v1/services/catalog/config/PLAIN", json={"value": {"a": 1}}).status_code == 201
    assert api.put("/v1/services/catalog/config/DB_PASSWORD",
                   json={"value": "hunter2-plaintext", "secret": True}).status_code == 201  # fmt: skip
    wait_until(lambda: current(a), what="view current")
    paths = [
        "/v1/services/catalog/instances",
        "/v1/services/catalog/instances?limit=3",
        "/v1/services/catalog",
        "/v1/services/catalog/instances/10.9.0.3:80",
        "/v1/hosts/10.9.0.2",
        "/v1/services/catalog/config",
    ]
    for path in paths:
        view = from_view(api, path)
        sep = "&" if "?" in path else "?"
        store = api.get(f"{path}{sep}consistent=true")
        assert store.headers["X-Atlas-Source"] == "store"
        assert view.status_code == store.status_code == 200
        assert view.content == store.content, path
        assert view.headers.get("ETag") == store.headers.get("ETag")
        assert int(view.headers["X-Atlas-Index"]) > 0
    # Pages follow each other the same way from both sources, cursors interchangeable.
    page = from_view(api, "/v1/services/catalog/instances?limit=3").json()
    cursor = page["next_cursor"]
    nxt_view = from_view(api, f"/v1/services/catalog/instances?limit=3&cursor={cursor}")
    nxt_store = api.get(f"/v1/services/catalog/instances?limit=3&cursor={cursor}&consistent=true")
    assert nxt_view.content == nxt_store.content
    # The config document says which keys are secrets (names only).
    doc = from_view(api, "/v1/services/catalog/config").json()
    assert doc["secrets"] == ["DB_PASSWORD"] and doc["values"]["DB_PASSWORD"] == "hunter2-plaintext"
    # The list of services: the same records (the view lists them by name).
    view_list = from_view(api, "/v1/services").json()["items"]
    store_list = api.get("/v1/services?consistent=true").json()["items"]
    assert sorted(view_list, key=lambda s: s["name"]) == sorted(store_list, key=lambda s: s["name"])


def test_a_process_never_serves_a_state_older_than_its_own_acknowledged_write(
    start_atlas: StartAtlas, realm: str, zk_hosts: str
) -> None:
    a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    api = ApiClient(a.url)
    seed(api, "orders", 3)
    wait_until(lambda: current(a), what="view current")
    sources = set()
    for i in range(40):
        w = api.patch("/v1/services/orders/instances/10.9.0.1:80", json={"weight": 100 + i})
        assert w.status_code == 200 and int(w.headers["X-Atlas-Index"]) > 0
        r = api.get("/v1/services/orders/instances")  # no min_index: the process knows
        sources.add(r.headers["X-Atlas-Source"])
        weights = {x["id"]: x["weight"] for x in r.json()["items"]}
        assert weights["10.9.0.1:80"] == 100 + i
        assert int(r.headers.get("X-Atlas-Index", w.headers["X-Atlas-Index"])) >= int(
            w.headers["X-Atlas-Index"]
        )
        one = api.get("/v1/services/orders/instances/10.9.0.1:80").json()
        assert one["weight"] == 100 + i
    assert "view" in sources


def test_min_index_gives_read_your_writes_across_two_processes(
    start_atlas: StartAtlas, realm: str, zk_hosts: str
) -> None:
    a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    b = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    api_a, api_b = ApiClient(a.url), ApiClient(b.url)
    seed(api_a, "search", 2)
    wait_until(lambda: current(a) and current(b), what="both views current")
    sources = set()
    for i in range(40):
        w = api_a.patch("/v1/services/search/instances/10.9.0.0:80", json={"weight": i})
        index = w.headers["X-Atlas-Index"]
        r = api_b.get(f"/v1/services/search/instances?min_index={index}")
        sources.add(r.headers["X-Atlas-Source"])
        assert {x["id"]: x["weight"] for x in r.json()["items"]}["10.9.0.0:80"] == i
        if r.headers["X-Atlas-Source"] == "view":
            assert int(r.headers["X-Atlas-Index"]) >= int(index)
        d = api_a.put(f"/v1/services/search/config/K{i}", json={"value": i})
        c = api_b.get(f"/v1/services/search/config?min_index={d.headers['X-Atlas-Index']}")
        assert c.json()["values"][f"K{i}"] == i
    assert "view" in sources
    # A service created through one process is listed by the other.
    made = api_a.post("/v1/services", json={"name": "fresh"})
    listed = api_b.get(f"/v1/services?min_index={made.headers['X-Atlas-Index']}").json()["items"]
    assert "fresh" in {s["name"] for s in listed}


def test_a_revoked_token_stops_working_on_every_process(
    start_atlas: StartAtlas, realm: str, zk_hosts: str
) -> None:
    a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    b = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    admin = ApiClient(a.url)
    assert admin.post("/v1/services", json={"name": "pay"}).status_code == 201
    issued = admin.post("/v1/services/pay/tokens").json()
    wait_until(lambda: current(a) and current(b), what="both views current")
    as_b = ApiClient(b.url, token=issued["token"])
    for _ in range(5):  # cached on b now
        assert as_b.get("/v1/services/pay/config").status_code == 200
    assert view_state(b)["token_cache"]["hits"] >= 1
    revoked = admin.delete(f"/v1/services/pay/tokens/{issued['id']}")
    assert revoked.status_code == 204 and int(revoked.headers["X-Atlas-Index"]) > 0
    wait_until(lambda: as_b.get("/v1/services/pay/config").status_code == 401, what="revoked on b")
    assert view_state(b)["token_cache"]["dropped"] >= 1  # the stamp dropped b's cache
    assert ApiClient(a.url, token=issued["token"]).get("/v1/services/pay").status_code == 401


def test_secrets_never_reach_other_services_and_never_sit_in_zookeeper(
    start_atlas: StartAtlas, realm: str, zk_hosts: str
) -> None:
    a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    admin = ApiClient(a.url)
    for name in ("vault", "other"):
        assert admin.post("/v1/services", json={"name": name}).status_code == 201
    plaintext = "s3cr3t-plaintext-value"
    assert admin.put("/v1/services/vault/config/TOKEN",
                     json={"value": plaintext, "secret": True}).status_code == 201  # fmt: skip
    other = ApiClient(a.url, token=admin.post("/v1/services/other/tokens").json()["token"])
    mine = ApiClient(a.url, token=admin.post("/v1/services/vault/tokens").json()["token"])
    wait_until(lambda: current(a), what="view current")
    assert from_view(mine, "/v1/services/vault/config").json()["values"]["TOKEN"] == plaintext
    for path in ("/v1/services/vault/config", "/v1/services/vault/config?index=1&wait=1s",
                 "/v1/services/vault/config/TOKEN"):  # fmt: skip
        r = other.get(path)
        assert r.status_code == 403 and plaintext not in r.text
    for path in ("/v1/services", "/v1/services/vault", "/v1/services/vault/instances", "/v1/info"):
        assert plaintext not in mine.get(path).text
    hosts, _, chroot = zk_hosts.partition("/")
    k = KazooClient(hosts)
    k.start()
    try:
        stack = [f"/{chroot}/atlas/{realm}"]
        while stack:
            path = stack.pop()
            data, _ = k.get(path)
            assert plaintext.encode() not in (data or b""), path
            stack += [f"{path}/{c}" for c in k.get_children(path)]
    finally:
        k.stop()
        k.close()


def test_blocking_queries_wake_on_a_change_through_another_process(
    start_atlas: StartAtlas, realm: str, zk_hosts: str
) -> None:
    a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    b = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts, ATLAS_MAX_WAITERS="2")
    api_a, api_b = ApiClient(a.url), ApiClient(b.url)
    seed(api_a, "feed", 2)
    wait_until(lambda: current(a) and current(b), what="both views current")
    first = from_view(api_b, "/v1/services/feed/instances")
    index = int(first.headers["X-Atlas-Index"])
    # Unchanged: after `wait`, the same body and the same index.
    same = api_b.get(f"/v1/services/feed/instances?index={index}&wait=300ms")
    assert same.content == first.content and int(same.headers["X-Atlas-Index"]) == index
    # A change through the other process wakes it.
    result: dict[str, requests.Response] = {}
    started = threading.Event()

    def block() -> None:
        started.set()
        result["r"] = api_b.get(f"/v1/services/feed/instances?index={index}&wait=60s",
                                timeout=90)  # fmt: skip

    t = threading.Thread(target=block)
    t.start()
    started.wait()
    wait_until(lambda: view_state(b)["waiters"] == 1, what="one waiter")
    w = api_a.patch("/v1/services/feed/instances/10.9.0.1:80", json={"weight": 77})
    t.join(timeout=90)
    r = result["r"]
    assert r.status_code == 200 and r.headers["X-Atlas-Source"] == "view"
    assert int(r.headers["X-Atlas-Index"]) >= int(w.headers["X-Atlas-Index"]) > index
    assert {x["id"]: x["weight"] for x in r.json()["items"]}["10.9.0.1:80"] == 77
    # Past the bound on waiters: 503 with Retry-After.
    new_index = r.headers["X-Atlas-Index"]
    held = [
        threading.Thread(target=lambda: api_b.get(
            f"/v1/services/feed/instances?index={new_index}&wait=20s", timeout=60))
        for _ in range(2)
    ]  # fmt: skip
    for h in held:
        h.start()
    wait_until(lambda: view_state(b)["waiters"] == 2, what="two waiters")
    refused = api_b.get(f"/v1/services/feed/config?index={new_index}&wait=20s")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.headers["Content-Type"] == "application/problem+json"
    api_a.patch("/v1/services/feed/instances/10.9.0.0:80", json={"weight": 5})  # wakes them
    for h in held:
        h.join(timeout=60)


def test_the_view_falls_back_when_zookeeper_goes_away_or_is_wiped(
    tmp_path: Path, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    zk = ZooKeeperServer(tmp_path / "zk-view")
    zk.start()
    try:
        a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk.address, ATLAS_ZK_TIMEOUT_S="4")
        api = ApiClient(a.url)
        seed(api, "ledger", 3)
        wait_until(lambda: current(a), what="view current")
        from_view(api, "/v1/services/ledger/instances")
        zk.kill()
        wait_until(lambda: view_state(a)["state"] != "current", what="view not current")
        # Written while ZooKeeper is down: acknowledged (DynamoDB), not published.
        w = api.patch("/v1/services/ledger/instances/10.9.0.0:80", json={"weight": 201})
        assert w.status_code == 200 and w.headers.get("X-Atlas-Index-Pending") == "true"
        assert "X-Atlas-Index" not in w.headers
        r = api.get("/v1/services/ledger/instances")
        assert r.headers["X-Atlas-Source"] == "store"
        assert {x["id"]: x["weight"] for x in r.json()["items"]}["10.9.0.0:80"] == 201
        zk.wipe()
        zk.start()
        # Until the view is rebuilt and checked against DynamoDB, reads come from the store;
        # whatever the source, no read ever shows the state before the write.
        seen: set[str] = set()

        def rebuilt() -> bool:
            r = api.get("/v1/services/ledger/instances")
            assert {x["id"]: x["weight"] for x in r.json()["items"]}["10.9.0.0:80"] == 201
            assert len(r.json()["items"]) == 3
            seen.add(r.headers["X-Atlas-Source"])
            return r.headers["X-Atlas-Source"] == "view"

        wait_until(rebuilt, timeout=60, what="served from the rebuilt view")
        assert seen >= {"view"}
        assert view_state(a)["loads"] >= 2
    finally:
        zk.stop()


def test_an_expired_session_is_detected_and_min_index_still_holds(
    start_atlas: StartAtlas, realm: str, zk_hosts: str
) -> None:
    a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts, ATLAS_ZK_TIMEOUT_S="2")
    b = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk_hosts)
    api_a, api_b = ApiClient(a.url), ApiClient(b.url)
    seed(api_b, "cart", 2)
    wait_until(lambda: current(a), what="view current")
    loads = view_state(a)["loads"]
    master = a.process.proc.pid
    worker = int(Path(f"/proc/{master}/task/{master}/children").read_text().split()[0])
    k = KazooClient(zk_hosts)
    k.start()

    def contenders() -> list[bytes]:
        path = f"/atlas/{realm}/reconciler"
        return [k.get(f"{path}/{c}")[0] for c in k.get_children(path)]

    try:
        wait_until(lambda: any(b":%d" % worker in d for d in contenders()), what="a contends")
        os.kill(worker, signal.SIGSTOP)
        try:
            # The stopped worker's session expires on ZooKeeper's side: its election node goes.
            wait_until(lambda: not any(b":%d" % worker in d for d in contenders()),
                       timeout=60, what="session expired")  # fmt: skip
            w = api_b.patch("/v1/services/cart/instances/10.9.0.1:80", json={"weight": 42})
        finally:
            os.kill(worker, signal.SIGCONT)
    finally:
        k.stop()
        k.close()
    r = api_a.get(f"/v1/services/cart/instances?min_index={w.headers['X-Atlas-Index']}")
    assert {x["id"]: x["weight"] for x in r.json()["items"]}["10.9.0.1:80"] == 42
    wait_until(lambda: view_state(a)["loads"] > loads and current(a), what="reloaded")
