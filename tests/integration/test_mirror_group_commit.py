"""Group commit of a service's instance changes, on a real ZooKeeper (and through the API).

Guarantees under test: concurrent writers of one service share one multi and one guard
check+bump, each learns the zxid that published its change; a writer whose instance was not
touched since its pre-read commits without a retry, in one process or across processes; a
writer whose instance was touched re-reads the truth, so no older state is ever left behind.
"""

from __future__ import annotations

import threading
from typing import Any

from kazoo.client import KazooClient

from atlas.mirror import ZkMirror
from atlas.stack import MotoServer, ZooKeeperServer
from tests.helpers import ApiClient, wait_until
from tests.integration import scripted
from tests.integration.conftest import StartAtlas
from tests.integration.scripted import MakeMirror, ScriptedTruth, expected, inst, svc, tree
from tests.integration.zkview import truth_tree, zk_tree

mirror_on = scripted.mirror_on


def write(m: ZkMirror, truth: ScriptedTruth, n: int, weight: int) -> int | None:
    """One instance write as the registry does it: pre-read, DynamoDB, then the mirror."""
    record = inst("s", n, weight=weight)
    prepared = m.prepare_instance("s", record.id)
    truth.put(record)
    return m.instance_changed("s", record.id, record, prepared)


def mzxid(zk: str, path: str) -> int:
    k = KazooClient(zk)
    k.start()
    try:
        return int(k.get(path)[1].mzxid)
    finally:
        k.stop()
        k.close()


def test_concurrent_writers_of_one_service_share_one_commit_and_learn_its_zxid(
    zk_server: ZooKeeperServer, realm: str, mirror_on: MakeMirror
) -> None:
    truth = ScriptedTruth([svc("s")], [])
    m = mirror_on(truth)
    m.put_service(svc("s"))
    gate = threading.Event()
    m._in_owner(gate.wait)  # hold the owner so that every writer's change queues
    zxids: dict[int, int | None] = {}

    def writer(n: int) -> None:
        zxids[n] = write(m, truth, n, weight=n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 13)]
    for t in threads:
        t.start()
    wait_until(lambda: m._tasks.qsize() >= 12, what="12 changes queued")
    gate.set()
    for t in threads:
        t.join()
    assert len(set(zxids.values())) == 1  # one multi published them all...
    (zxid,) = set(zxids.values())
    assert isinstance(zxid, int)
    for n in range(1, 13):  # ...and it is the zxid that changed each instance node
        assert mzxid(zk_server.address, m.layout.instance("s", f"10.0.0.{n}:80")) == zxid
    assert mzxid(zk_server.address, m.layout.guard("s")) == zxid
    assert tree(zk_server.address, realm) == expected(truth, realm)
    counters = wait_until(lambda: (c := m.counters)["grouped_changes"] == 12 and c)
    assert counters["group_commits"] == 1 and counters["stale_retries"] == 0


def test_writers_of_different_instances_commit_without_rereading_across_processes(
    zk_server: ZooKeeperServer, realm: str, mirror_on: MakeMirror
) -> None:
    """A and B (two processes) both pre-read the same guard version, for different
    instances; B commits first. A's instance was not touched, so A commits its record as it
    is, without reading the truth again."""
    truth = ScriptedTruth([svc("s")], [])
    a, b = mirror_on(truth), mirror_on(truth)
    a.put_service(svc("s"))
    first = [write(a, truth, n, weight=1) for n in (1, 2)]
    x, y = inst("s", 1, weight=50), inst("s", 2, weight=60)
    prepared_a = a.prepare_instance("s", x.id)
    prepared_b = b.prepare_instance("s", y.id)
    assert prepared_a is not None and prepared_b is not None
    assert prepared_a.guard_version == prepared_b.guard_version
    truth.put(x)
    truth.put(y)
    zb = b.instance_changed("s", y.id, y, prepared_b)
    za = a.instance_changed("s", x.id, x, prepared_a)
    assert all(isinstance(z, int) for z in [*first, za, zb])
    assert za > zb > max(first)  # type: ignore[operator]
    assert tree(zk_server.address, realm) == expected(truth, realm)
    for m in (a, b):  # no truth re-read: at most A's own pre-read lost one multi to B's
        counters = wait_until(lambda m=m: (c := m.counters)["grouped_changes"] >= 1 and c)
        assert counters["stale_retries"] == 0 and counters["cas_retries"] <= 1


def test_a_writer_overtaken_on_its_instance_rereads_the_truth(
    zk_server: ZooKeeperServer, realm: str, mirror_on: MakeMirror
) -> None:
    """A pre-reads, writes v1; B pre-reads, writes v2 and commits first (another process).
    A's v1 is older than what B published: A must not commit it but the truth (v2)."""
    truth = ScriptedTruth([svc("s")], [])
    a, b = mirror_on(truth), mirror_on(truth)
    a.put_service(svc("s"))
    write(a, truth, 1, weight=1)
    older, newer = inst("s", 1, weight=10), inst("s", 1, weight=20)
    prepared_a = a.prepare_instance("s", older.id)
    truth.put(older)
    prepared_b = b.prepare_instance("s", newer.id)
    truth.put(newer)
    assert isinstance(b.instance_changed("s", newer.id, newer, prepared_b), int)
    assert isinstance(a.instance_changed("s", older.id, older, prepared_a), int)
    assert tree(zk_server.address, realm) == expected(truth, realm)
    assert b'"weight":20' in tree(zk_server.address, realm)[a.layout.instance("s", newer.id)]
    wait_until(lambda: a.counters["stale_retries"] == 1, what="A re-read the truth")


def test_a_whole_service_sync_makes_every_earlier_pre_read_stale(
    zk_server: ZooKeeperServer, realm: str, mirror_on: MakeMirror
) -> None:
    """A sync vouches for nothing in the guard's log: a change pre-read before it re-reads."""
    truth = ScriptedTruth([svc("s")], [])
    a, b = mirror_on(truth), mirror_on(truth)
    a.put_service(svc("s"))
    record = inst("s", 1)
    prepared_a = a.prepare_instance("s", record.id)
    truth.put(record)
    truth.remove("s", record.id)  # and someone detached it again, then synced the service
    assert isinstance(b.put_service(svc("s")), int)
    assert isinstance(a.instance_changed("s", record.id, record, prepared_a), int)
    assert tree(zk_server.address, realm) == expected(truth, realm)
    assert a.client.exists(a.layout.instance("s", record.id)) is None
    wait_until(lambda: a.counters["stale_retries"] == 1, what="A re-read the truth")


def test_many_writers_of_one_service_through_two_atlas_processes(
    zk_server: ZooKeeperServer, moto_server: MotoServer, start_atlas: StartAtlas, realm: str
) -> None:
    """Eight writers, each on its own instance of one service, through two Atlas processes
    of two workers: every write acknowledged, and when the last is, ZooKeeper equals
    DynamoDB and every node holds its writer's last weight (no reconciler to help)."""
    env = {"ATLAS_ZK_HOSTS": zk_server.address, "ATLAS_RECONCILER": "false"}
    a = start_atlas(realm, workers=2, **env)
    b = start_atlas(realm, workers=2, **env)
    api = ApiClient(a.url)
    assert api.post("/v1/services", json={"name": "hot"}).status_code == 201
    for n in range(8):
        assert api.put(f"/v1/services/hot/instances/10.9.0.{n}:80", json={}).status_code == 201
    statuses: list[int] = []
    last: dict[int, int] = {}

    def writer(n: int, url: str) -> None:
        client = ApiClient(url)
        for i in range(25):
            weight = (n * 25 + i) % 256
            r = client.patch(f"/v1/services/hot/instances/10.9.0.{n}:80", json={"weight": weight})
            statuses.append(r.status_code)
            last[n] = weight

    threads = [threading.Thread(target=writer, args=(n, (a, b)[n % 2].url)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 200
    nodes: dict[str, Any] = zk_tree(zk_server.address, realm)
    assert nodes == truth_tree(moto_server.url, realm)
    for n, weight in last.items():
        assert nodes[f"/atlas/{realm}/services/hot/10.9.0.{n}:80"]["weight"] == weight
