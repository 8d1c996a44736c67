"""A ZooKeeper restarted with a wiped data dir refuses, forever, every client that has seen a
newer zxid. Atlas must notice that the server is up but refuses its client, take a fresh one,
and rebuild on the new session at once -- not after a watchdog period -- and its reconciler
must contend again on the new session in every process, leader or not (a contender left
waiting on the old client would never take over).

The session timeout here is 30 s, so the watchdog's backstop (2 x timeout) would take a minute:
only the probe can make the rebuild within the waits below.
"""

from __future__ import annotations

from pathlib import Path

from kazoo.client import KazooClient

from atlas.stack import AtlasServer, MotoServer, ZooKeeperServer
from tests.helpers import ApiClient, wait_until
from tests.integration.conftest import StartAtlas
from tests.integration.zkview import truth_tree, zk_tree

SLOW_SESSION = {"ATLAS_ZK_TIMEOUT_S": "30", "ATLAS_RECONCILE_INTERVAL_S": "300"}


def mirror_info(server: AtlasServer) -> dict[str, object]:
    """The mirror part of /v1/info (one worker per server here, so one mirror)."""
    info: dict[str, object] = ApiClient(server.url).get("/v1/info").json()["mirror"]
    return info


def contenders(zk: ZooKeeperServer, realm: str) -> list[str]:
    """The reconciler election's contender nodes on the server."""
    k = KazooClient(zk.address)
    k.start()
    try:
        return list(k.get_children(f"/atlas/{realm}/reconciler"))
    finally:
        k.stop()
        k.close()


def advance_zxid(zk: ZooKeeperServer, n: int) -> None:
    """Commit n transactions, as a long-lived ensemble has (its zxid is far ahead of what a
    wiped server reaches while it is being rebuilt)."""
    k = KazooClient(zk.address)
    k.start()
    try:
        k.ensure_path("/scratch")
        for start in range(0, n, 1000):
            for result in [k.set_async("/scratch", b"%d" % i) for i in range(start, start + 1000)]:
                result.get(timeout=30)
    finally:
        k.stop()
        k.close()


def test_a_wiped_zookeeper_is_rebuilt_on_a_fresh_session_and_leadership_moves_on(
    tmp_path: Path, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    zk = ZooKeeperServer(tmp_path / "zk-wiped")
    zk.start()
    try:
        a = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk.address, **SLOW_SESSION)
        b = start_atlas(realm, workers=1, ATLAS_ZK_HOSTS=zk.address, **SLOW_SESSION)
        api = ApiClient(a.url)
        assert api.post("/v1/services", json={"name": "billing"}).status_code == 201
        for i in range(6):
            api.put(f"/v1/services/billing/instances/10.3.1.{i}:80", json={})

        def mirrored() -> bool:
            return zk_tree(zk.address, realm) == truth_tree(moto_server.url, realm)

        advance_zxid(zk, 20_000)
        for server, i in ((a, 0), (b, 1)):  # each process's client now has seen that zxid
            r = ApiClient(server.url).patch(f"/v1/services/billing/instances/10.3.1.{i}:80",
                                            json={"weight": 7})  # fmt: skip
            assert r.status_code == 200
        wait_until(mirrored, what="initial mirror")
        wait_until(lambda: sum(bool(mirror_info(s)["leader"]) for s in (a, b)) == 1,
                   what="one leader")  # fmt: skip
        zk.kill()
        zk.wipe()
        zk.start()
        wait_until(mirrored, timeout=40, what="rebuild on a fresh session")
        for server in (a, b):  # both saw the refusal and took a fresh client
            info = wait_until(lambda s=server: (m := mirror_info(s))["connected"] and m)
            assert info["client_refused"] == 1
        # The write path works on the new session...
        api.patch("/v1/services/billing/instances/10.3.1.2:80", json={"enabled": False})
        assert mirrored()
        # ...and the follower, which was waiting on its old client, contends on the new one.
        wait_until(lambda: len(contenders(zk, realm)) == 2, timeout=40, what="two contenders")
        wait_until(lambda: sum(bool(mirror_info(s)["leader"]) for s in (a, b)) == 1,
                   what="one leader")  # fmt: skip
    finally:
        zk.stop()
