"""The reconciler against a real ZooKeeper with a scripted truth: streaming, split scans, drift."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient

from atlas.contract import Layout
from atlas.mirror import MirrorConflict, diff_subtree
from atlas.mirror.payloads import desired_tree
from atlas.stack import ZooKeeperServer
from tests.integration import scripted
from tests.integration.scripted import MakeMirror, ScriptedTruth, expected, inst, svc, tree

mirror_on = scripted.mirror_on


def test_split_scan_and_every_kind_of_drift_converge(
    zk_server: ZooKeeperServer, realm: str, mirror_on: MakeMirror
) -> None:
    a, b, c = svc("a"), svc("b"), svc("c")
    # "a" comes back after "b": its first chunk must not delete a's later instances.
    order = [inst("a", 1), inst("a", 2), inst("b", 1), inst("a", 3), inst("c", 1)]
    truth = ScriptedTruth([a, b, c], order)
    m = mirror_on(truth)
    first = m.reconcile()
    assert tree(zk_server.address, realm) == expected(truth, realm)
    assert first["drift_found"]["missing"] == len(expected(truth, realm))

    k = KazooClient(zk_server.address)
    k.start()
    base = f"/atlas/{realm}/services"
    k.delete(f"{base}/a/10.0.0.2:80")  # missing
    k.set(f"{base}/c/10.0.0.1:80", b'{"stale": true}')  # stale
    k.create(f"{base}/b/10.9.9.9:80", b"{}")  # extra instance
    k.create(f"{base}/zombie", b"{}")  # extra service
    k.create(f"{base}/zombie/10.1.1.1:80", b"{}")
    k.stop()
    k.close()
    truth.order = [inst("c", 1, weight=7), *order[:4]]  # and a real change meanwhile
    second = m.reconcile()
    assert tree(zk_server.address, realm) == expected(truth, realm)
    assert second["drift_found"] == {"missing": 1, "stale": 1, "extra": 3}
    assert json.loads(tree(zk_server.address, realm)[f"{base}/c/10.0.0.1:80"])["weight"] == 7
    assert m.reconcile()["drift_found"] == {"missing": 0, "stale": 0, "extra": 0}


def test_a_put_and_a_delete_racing_on_an_absent_node_leave_no_ghost(
    zk_server: ZooKeeperServer, realm: str, mirror_on: MakeMirror
) -> None:
    """A reads "absent" and writes DynamoDB; B reads "absent", deletes in DynamoDB, and has
    nothing to change in ZooKeeper; A's create must not land on top of B's delete."""
    truth = ScriptedTruth([svc("s")], [])
    m = mirror_on(truth)
    m.put_service(svc("s"))
    record = inst("s", 1)
    prepared_a = m.prepare_instance("s", record.id)
    truth.order = [record]  # A's DynamoDB put
    prepared_b = m.prepare_instance("s", record.id)
    truth.order = []  # B's DynamoDB delete
    m.instance_changed("s", record.id, None, prepared_b)
    m.instance_changed("s", record.id, record, prepared_a)  # A's mirror step lands last
    assert m.client.exists(m.layout.instance("s", record.id)) is None
    assert tree(zk_server.address, realm) == expected(truth, realm)
    assert not m.dirty


def test_a_service_delete_and_create_racing_leave_the_truth(
    zk_server: ZooKeeperServer, realm: str, mirror_on: MakeMirror
) -> None:
    """Both writers read an empty tree; the deleter has nothing to remove yet."""
    truth = ScriptedTruth([], [])
    m = mirror_on(truth)
    m._ensure_roots(m.client)
    seen_a = m._read_subtree(m.client, "s")  # the creator reads (nothing), then DynamoDB
    m.sync_service("s")  # the deleter: an empty plan, but it still bumps the guard
    actual, guard = seen_a
    creator_ops = [
        *diff_subtree(desired_tree(Layout(realm), svc("s"), []), actual).ops,
        *m._guard_ops("s", guard),
    ]
    with pytest.raises(MirrorConflict):
        m._commit(m.client, creator_ops)  # the stale creator loses
    assert tree(zk_server.address, realm) == {}


def test_a_commit_landing_inside_a_pre_read_cannot_slip_past_the_guard(
    zk_server: ZooKeeperServer, realm: str, mirror_on: MakeMirror
) -> None:
    """B's mirror commit lands while A is still reading (right at A's guard read): A must
    either have seen all of B's commit or fail its CAS. Ends with ZooKeeper == DynamoDB."""
    truth = ScriptedTruth([svc("s")], [])
    m = mirror_on(truth)
    m.put_service(svc("s"))
    x = inst("s", 1)
    prepared_b = m.prepare_instance("s", x.id)
    truth.order = [x]  # B's DynamoDB put
    guard_path = m.layout.guard("s")
    client = m.client
    fired: list[bool] = []

    def hook(real: Callable[..., object]) -> Callable[..., object]:
        def hooked(path: str, *args: object, **kwargs: object) -> object:
            if path == guard_path and not fired:
                fired.append(True)
                m.instance_changed("s", x.id, x, prepared_b)  # B's commit lands now
            return real(path, *args, **kwargs)

        return hooked

    real_get, real_exists = client.get_async, client.exists_async
    client.get_async, client.exists_async = hook(real_get), hook(real_exists)  # type: ignore[method-assign]
    prepared_a = m.prepare_instance("s", x.id)
    client.get_async, client.exists_async = real_get, real_exists  # type: ignore[method-assign]
    assert fired
    truth.order = []  # A's DynamoDB delete, the last write
    m.instance_changed("s", x.id, None, prepared_a)
    assert tree(zk_server.address, realm) == expected(truth, realm)
