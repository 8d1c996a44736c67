"""The ZooKeeper mirror against real ZooKeeper, real moto server and real gunicorn.

Guarantee under test: every acknowledged API write is in DynamoDB, and the znodes under
/atlas/<realm> converge to exactly what DESIGN.md derives from DynamoDB, including after
ZooKeeper outages, wipes, session expiry and member loss.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from atlas.stack import MotoServer, ZooKeeperServer
from tests.helpers import ApiClient, wait_until
from tests.integration.conftest import StartAtlas
from tests.integration.zkview import truth_tree, zk_tree

FAST = {"ATLAS_ZK_TIMEOUT_S": "2", "ATLAS_RECONCILE_INTERVAL_S": "5"}


def mirrored(zk: str, moto: MotoServer, realm: str) -> bool:
    """True when ZooKeeper holds exactly what DynamoDB says."""
    return zk_tree(zk, realm) == truth_tree(moto.url, realm)


def test_every_mutation_produces_exactly_the_design_znodes(
    zk_server: ZooKeeperServer, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    atlas = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address, **FAST)
    api = ApiClient(atlas.url)
    root = f"/atlas/{realm}"

    def tree() -> dict[str, Any]:
        return zk_tree(zk_server.address, realm)

    svc = api.post("/v1/services", json={"name": "identity", "port": 8000,
                   "health_check": {"path": "/health"}}).json()  # fmt: skip
    assert tree()[f"{root}/services/identity"] == {
        "name": "identity", "port": 8000, "version": 1, "instances": 0,
        "health_check": {"path": "/health", "interval_s": 10, "timeout_s": 2},
        # Atlas's own: the rest of the record, for every process's in-memory view
        "description": "", "owner": "", "tags": [],
        "created_at": svc["created_at"], "updated_at": svc["updated_at"],
    }  # fmt: skip
    assert tree()[f"{root}/config/identity"] == {"version": 0}

    inst = api.put("/v1/services/identity/instances/10.1.0.5:8000",
                   json={"weight": 30, "zone": "us-1a", "labels": {"canary": "1"}}).json()  # fmt: skip
    node = tree()[f"{root}/services/identity/10.1.0.5:8000"]
    assert node == {
        "name": "identity", "id": "10.1.0.5:8000", "address": "10.1.0.5", "port": 8000,
        "sslPort": None, "payload": None, "registrationTimeUTC": node["registrationTimeUTC"],
        "serviceType": "STATIC", "uriSpec": None, "enabled": True,
        "host": "10.1.0.5", "weight": 30, "labels": {"canary": "1"},
        "zone": "us-1a", "version": 1, "updated_at": inst["updated_at"],
        "created_at": inst["created_at"],
    }  # fmt: skip
    assert isinstance(node["registrationTimeUTC"], int) and node["registrationTimeUTC"] > 1.7e12

    assert tree()[f"{root}/services/identity"]["instances"] == 1
    api.put("/v1/services/identity/instances/10.1.0.5:8000", json={"weight": 5})
    node = tree()[f"{root}/services/identity/10.1.0.5:8000"]
    assert (node["weight"], node["labels"], node["version"]) == (5, {}, 2)

    api.patch("/v1/services/identity/instances/10.1.0.5:8000", json={"enabled": False})
    node = tree()[f"{root}/services/identity/10.1.0.5:8000"]
    assert node["enabled"] is False and node["haproxy_server_options"] == "disabled"
    api.patch("/v1/services/identity/instances/10.1.0.5:8000", json={"enabled": True})
    assert "haproxy_server_options" not in tree()[f"{root}/services/identity/10.1.0.5:8000"]

    api.put("/v1/services/identity/instances/10.1.0.6:8000", json={})
    r = api.post("/v1/hosts/10.1.0.6/disable", json={"disabled_until": "2099-01-01T00:00:00Z"})
    assert r.status_code == 422 and "disabled_until" in r.json()["errors"]  # too far ahead
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = api.post("/v1/hosts/10.1.0.6/disable", json={"disabled_until": until})
    assert r.status_code == 200, r.text
    node = tree()[f"{root}/services/identity/10.1.0.6:8000"]
    assert (
        node["enabled"] is False
        and node["disabled_until"] == r.json()["items"][0]["disabled_until"]
    )
    api.post("/v1/hosts/10.1.0.6/enable")
    assert tree()[f"{root}/services/identity/10.1.0.6:8000"]["enabled"] is True

    api.patch("/v1/services/identity", json={"port": 9000, "min_enabled": 1})
    node = tree()[f"{root}/services/identity"]
    assert (node["port"], node["min_enabled"]) == (9000, 1)

    assert tree()[f"{root}/services/identity"]["instances"] == 2
    api.delete("/v1/services/identity/instances/10.1.0.6:8000")
    assert f"{root}/services/identity/10.1.0.6:8000" not in tree()
    assert tree()[f"{root}/services/identity"]["instances"] == 1
    assert mirrored(zk_server.address, moto_server, realm)

    # deleting the service is not guarded by its own floor (it goes with it)
    assert api.delete("/v1/services/identity?cascade=true").status_code == 204
    assert tree() == {}
    assert svc["name"] == "identity"


def test_writes_during_zookeeper_outage_are_acknowledged_and_mirrored_later(
    tmp_path: Any, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    zk = ZooKeeperServer(tmp_path / "zk-outage")
    zk.start()
    try:
        atlas = start_atlas(realm, workers=2, ATLAS_ZK_HOSTS=zk.address, **FAST)
        api = ApiClient(atlas.url)
        assert api.post("/v1/services", json={"name": "orders"}).status_code == 201
        wait_until(lambda: mirrored(zk.address, moto_server, realm), what="initial mirror")
        zk.stop()
        statuses = []
        for i in range(200):
            r = api.put(f"/v1/services/orders/instances/10.2.{i // 250}.{i % 250}:80", json={})
            statuses.append(r.status_code)
        assert statuses == [201] * 200  # every write acknowledged while ZooKeeper is down
        info = api.get("/v1/info").json()["mirror"]
        assert info["lagging"] is True
        ready = requests.get(atlas.url + "/readyz", timeout=10)
        assert ready.status_code == 200  # lag is reported, not a failure
        assert ready.json()["checks"]["mirror"]["lagging"] is True
        zk.start()
        wait_until(lambda: mirrored(zk.address, moto_server, realm), timeout=60, what="catch-up")
        assert len([p for p in zk_tree(zk.address, realm) if "/orders/" in p]) == 200
    finally:
        zk.stop()


def test_wiped_zookeeper_is_rebuilt_without_restarting_atlas(
    tmp_path: Any, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    zk = ZooKeeperServer(tmp_path / "zk-wipe")
    zk.start()
    try:
        atlas = start_atlas(realm, ATLAS_ZK_HOSTS=zk.address, **FAST)
        api = ApiClient(atlas.url)
        api.post("/v1/services", json={"name": "billing"})
        for i in range(5):
            api.put(f"/v1/services/billing/instances/10.3.0.{i}:80", json={})
        wait_until(lambda: mirrored(zk.address, moto_server, realm), what="initial mirror")
        found_before = api.get("/v1/info").json()["mirror"]["drift_found_total"]
        zk.stop()
        zk.wipe()  # the new server has none of the data and a zxid below what Atlas saw
        zk.start()
        wait_until(lambda: mirrored(zk.address, moto_server, realm), timeout=60, what="rebuild")
        info = api.get("/v1/info").json()["mirror"]
        assert info["connected"] is True
        # the reconciler, not luck, put the 7 nodes back (service, 5 instances, config stamp)
        assert info["drift_found_total"] - found_before >= 7
        # and the write path works again on the new session
        api.patch("/v1/services/billing/instances/10.3.0.1:80", json={"enabled": False})
        wait_until(lambda: mirrored(zk.address, moto_server, realm), what="post-rebuild write")
    finally:
        zk.stop()


def test_drift_made_by_hand_is_repaired_and_counted(
    zk_server: ZooKeeperServer, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    from kazoo.client import KazooClient

    atlas = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address, ATLAS_ZK_TIMEOUT_S="2",
                        ATLAS_RECONCILE_INTERVAL_S="1")  # fmt: skip
    api = ApiClient(atlas.url)
    api.post("/v1/services", json={"name": "search"})
    api.put("/v1/services/search/instances/10.4.0.1:80", json={})
    api.put("/v1/services/search/instances/10.4.0.2:80", json={})
    wait_until(lambda: mirrored(zk_server.address, moto_server, realm), what="mirror")
    k = KazooClient(zk_server.address)
    k.start()
    base = f"/atlas/{realm}/services"
    k.delete(f"{base}/search/10.4.0.1:80")  # missing
    k.set(f"{base}/search/10.4.0.2:80", json.dumps({"host": "evil", "port": 1}).encode())  # stale
    k.create(f"{base}/search/10.9.9.9:80", b"{}")  # extra
    k.create(f"{base}/ghost", b"{}")  # extra service
    k.stop()
    k.close()
    wait_until(lambda: mirrored(zk_server.address, moto_server, realm), what="repair")
    info = wait_until(
        lambda: (m := api.get("/v1/info").json()["mirror"])["drift_fixed_total"] >= 4 and m,
        what="drift counted",
    )
    assert info["drift_found_total"] >= 4


def test_reconcile_once_cli_rebuilds_from_dynamodb(
    zk_server: ZooKeeperServer, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    import os
    import subprocess
    import sys

    from kazoo.client import KazooClient

    atlas = start_atlas(realm)  # no ZooKeeper configured: DynamoDB only
    api = ApiClient(atlas.url)
    api.post("/v1/services", json={"name": "mail"})
    api.put("/v1/services/mail/instances/10.5.0.1:25", json={})
    k = KazooClient(zk_server.address)
    k.start()
    k.ensure_path(f"/atlas/{realm}/services/stale-service")
    k.stop()
    k.close()
    env = dict(os.environ, ATLAS_REALM=realm, ATLAS_DYNAMODB_ENDPOINT=moto_server.url,
               ATLAS_ZK_HOSTS=zk_server.address, ATLAS_ADMIN_TOKENS="x" * 16)  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "atlas.cli", "reconcile"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["drift_found"] == {"missing": 3, "stale": 0, "extra": 1}
    assert mirrored(zk_server.address, moto_server, realm)


def test_two_atlas_processes_elect_exactly_one_reconciler(
    zk_server: ZooKeeperServer, start_atlas: StartAtlas, realm: str
) -> None:
    a = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address, **FAST)
    b = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address, **FAST)

    def leaders() -> list[bool]:
        return [ApiClient(s.url).get("/v1/info").json()["mirror"]["leader"] for s in (a, b)]

    wait_until(lambda: sum(leaders()) == 1, what="one leader")
    for _ in range(5):  # and it stays one
        assert sum(leaders()) == 1
    leader, follower = (a, b) if leaders()[0] else (b, a)
    leader.stop()
    wait_until(lambda: ApiClient(follower.url).get("/v1/info").json()["mirror"]["leader"],
               timeout=30, what="failover")  # fmt: skip
