"""Faults of the truth and of Atlas itself.

Guarantees under test:
- DynamoDB unreachable: every write is refused with a 503 problem (never acknowledged), the
  ZooKeeper mirror is not touched, /readyz fails; reads and writes work again once it is back.
- Atlas killed with SIGKILL in the middle of a stream of writes: every write that was
  acknowledged (2xx) is in DynamoDB and, after a restart, in ZooKeeper.
"""

from __future__ import annotations

import threading
from pathlib import Path

import requests

from atlas.stack import AtlasServer, MotoServer, ZooKeeperServer
from tests.helpers import ApiClient, wait_until
from tests.integration.conftest import StartAtlas, atlas_env, migrate
from tests.integration.zkview import truth_tree, zk_tree


def test_dynamodb_down_refuses_writes_and_leaves_the_mirror_alone(
    tmp_path: Path, zk_server: ZooKeeperServer, realm: str
) -> None:
    moto = MotoServer(tmp_path / "moto")
    moto.start()
    env = atlas_env(moto, realm, ATLAS_ZK_HOSTS=zk_server.address)
    migrate(env)
    atlas = AtlasServer(tmp_path / "atlas", env, workers=1)
    atlas.start()
    try:
        api = ApiClient(atlas.url)
        api.post("/v1/services", json={"name": "pay"})
        api.put("/v1/services/pay/instances/10.0.0.1:80", json={})
        before = zk_tree(zk_server.address, realm)
        moto.kill()
        resp = api.patch("/v1/services/pay/instances/10.0.0.1:80", json={"enabled": False})
        assert resp.status_code == 503
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert "retry" in resp.json()["detail"]
        assert api.post("/v1/services", json={"name": "other"}).status_code == 503
        ready = requests.get(atlas.url + "/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["dynamodb"]["ok"] is False
        assert zk_tree(zk_server.address, realm) == before  # nothing half-written
    finally:
        atlas.stop()
        moto.stop()


def test_acknowledged_writes_survive_a_killed_atlas(
    moto_server: MotoServer, zk_server: ZooKeeperServer, start_atlas: StartAtlas, realm: str
) -> None:
    first = start_atlas(realm, workers=2, ATLAS_ZK_HOSTS=zk_server.address)
    ApiClient(first.url).post("/v1/services", json={"name": "orders"})
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        api = ApiClient(first.url)
        i = 0
        while not stop.is_set() and i < 2000:
            iid = f"10.9.{i // 250}.{i % 250}:80"
            i += 1
            try:
                r = api.put(f"/v1/services/orders/instances/{iid}", json={}, timeout=5)
            except requests.RequestException:
                continue  # not acknowledged: no promise
            if r.status_code in (200, 201):
                acked.append(iid)

    t = threading.Thread(target=writer)
    t.start()
    wait_until(lambda: len(acked) >= 30, what="some acknowledged writes")
    first.kill()  # SIGKILL to gunicorn's whole process group, mid-stream
    stop.set()
    t.join(timeout=30)
    assert acked

    second = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address, ATLAS_RECONCILE_INTERVAL_S="2")
    api = ApiClient(second.url)
    stored = {i["id"] for i in api.get("/v1/services/orders/instances?limit=1000").json()["items"]}
    assert set(acked) <= stored  # every acknowledged write is in DynamoDB
    # ...and in ZooKeeper once the new process's reconciler has looked (no write was made to it)
    wait_until(
        lambda: zk_tree(zk_server.address, realm) == truth_tree(moto_server.url, realm),
        timeout=60,
        what="mirror equals DynamoDB after the kill",
    )
    znodes = zk_tree(zk_server.address, realm)
    assert all(f"/atlas/{realm}/services/orders/{iid}" in znodes for iid in acked)
