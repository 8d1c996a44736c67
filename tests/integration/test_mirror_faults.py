"""Harder faults for the mirror: session expiry, a 3-node ensemble losing a member, write races."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from atlas.config import Settings
from atlas.migrate import Migrator
from atlas.mirror import ZkMirror
from atlas.registry import Registry, build_models_for
from atlas.stack import MotoServer, ZooKeeperServer, free_port
from tests.helpers import ApiClient, wait_until
from tests.integration.conftest import StartAtlas
from tests.integration.zkview import truth_tree, zk_tree

FAST = {"ATLAS_ZK_TIMEOUT_S": "2", "ATLAS_RECONCILE_INTERVAL_S": "5"}


def mirrored(zk: str, moto: MotoServer, realm: str) -> bool:
    return zk_tree(zk, realm) == truth_tree(moto.url, realm)


def test_session_expiry_is_survived(
    zk_server: ZooKeeperServer, moto_server: MotoServer, realm: str
) -> None:
    settings = Settings(realm=realm, dynamodb_endpoint=moto_server.url, admin_tokens=("x" * 16,),
                        zk_hosts=zk_server.address, zk_timeout_s=2)  # fmt: skip
    Migrator(settings).run()
    mirror = ZkMirror(settings.zk_hosts, realm, timeout=2)
    registry = Registry(build_models_for(settings), mirror=mirror)
    mirror.bind(registry)
    mirror.start()
    try:
        mirror.connect()
        registry.create_service({"name": "expiry"})
        registry.put_instance("expiry", "10.6.0.1", 80, {})
        assert mirrored(zk_server.address, moto_server, realm)
        # Expire the session server-side: open the same session elsewhere and close it.
        session_id, password = mirror.client.client_id
        thief = KazooClient(zk_server.address, client_id=(session_id, password))
        thief.start(timeout=10)
        thief.stop()
        thief.close()
        # A write while the session is being re-established is still acknowledged...
        registry.put_instance("expiry", "10.6.0.2", 80, {})
        # ...and both the old and the new state end up mirrored.
        wait_until(lambda: mirror.connected, what="new session")
        wait_until(
            lambda: mirrored(zk_server.address, moto_server, realm), what="mirror after expiry"
        )
    finally:
        mirror.stop()


def test_ensemble_member_killed_during_writes_causes_no_api_errors(
    tmp_path: Path, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    members = [(i, free_port(), free_port()) for i in (1, 2, 3)]
    servers = [
        ZooKeeperServer(tmp_path / f"zk{i}", myid=i, ensemble=members, heap_mb=128)
        for i, _, _ in members
    ]
    for s in servers:
        s.start(wait=False)
    try:
        for s in servers:
            s.process.proc and wait_until(lambda s=s: _ruok(s.port), timeout=60, what="ensemble")
        hosts = ",".join(s.address for s in servers)
        atlas = start_atlas(realm, ATLAS_ZK_HOSTS=hosts, **FAST)
        api = ApiClient(atlas.url)
        assert api.post("/v1/services", json={"name": "quorum"}).status_code == 201
        statuses: list[int] = []
        for i in range(120):
            if i == 40:
                servers[0].kill()
            if i == 80:
                servers[1].start(wait=True) if not servers[1].running() else None
            statuses.append(
                api.put(f"/v1/services/quorum/instances/10.7.0.{i}:80", json={}).status_code
            )
        assert statuses == [201] * 120
        wait_until(lambda: mirrored(hosts, moto_server, realm), timeout=60, what="mirror")
    finally:
        for s in servers:
            s.stop()


def _ruok(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
            c.sendall(b"srvr")
            data = c.recv(4096)
        return b"Mode: leader" in data or b"Mode: follower" in data
    except OSError:
        return False


def test_concurrent_writers_never_leave_an_older_state_in_zookeeper(
    zk_server: ZooKeeperServer, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    a = start_atlas(realm, workers=2, ATLAS_ZK_HOSTS=zk_server.address, **FAST)
    b = start_atlas(realm, workers=2, ATLAS_ZK_HOSTS=zk_server.address, **FAST)
    api = ApiClient(a.url)
    api.post("/v1/services", json={"name": "race"})
    api.put("/v1/services/race/instances/10.8.0.1:80", json={})
    errors: list[Any] = []

    def hammer(url: str, seed: int) -> None:
        client = ApiClient(url)
        for i in range(30):
            body = {"weight": (seed * 31 + i) % 256, "enabled": bool((seed + i) % 2)}
            r = client.patch("/v1/services/race/instances/10.8.0.1:80", json=body)
            if r.status_code not in (200, 409):
                errors.append((r.status_code, r.text))

    threads = [threading.Thread(target=hammer, args=(u, n)) for n, u in
               enumerate([a.url, b.url, a.url, b.url])]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # No reconciler help needed: the write path alone must leave the newest state.
    assert mirrored(zk_server.address, moto_server, realm)
