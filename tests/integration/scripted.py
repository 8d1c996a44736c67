"""A scripted truth (a TruthSource in memory) and connected mirrors over it, for tests of the
mirror against a real ZooKeeper without DynamoDB."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient

from atlas.contract import Layout
from atlas.mirror import ZkMirror
from atlas.mirror.payloads import desired_tree
from atlas.registry import Instance, Service
from atlas.stack import ZooKeeperServer

MakeMirror = Callable[["ScriptedTruth"], ZkMirror]


def svc(name: str) -> Service:
    """A service record."""
    t = "2026-01-01T00:00:00.000Z"
    return Service(name, "", "", 80, None, (), 1, t, t)


def inst(service: str, n: int, weight: int = 100) -> Instance:
    """Instance 10.0.0.<n>:80 of a service."""
    t = "2026-01-01T00:00:00.000Z"
    return Instance(service, f"10.0.0.{n}", 80, True, weight, None, {}, None, 1, t, t)


class ScriptedTruth:
    """A TruthSource whose instance scan returns items in a given (possibly split) order.

    Tests may assign `order` directly, or `put`/`remove` instances (thread-safe).
    """

    def __init__(self, services: list[Service], scan_order: list[Instance]) -> None:
        self.services = services
        self.order = scan_order
        self._lock = threading.Lock()

    def put(self, record: Instance) -> None:
        """Store (replace) one instance, as a DynamoDB write would."""
        with self._lock:
            key = (record.service, record.id)
            self.order = [i for i in self.order if (i.service, i.id) != key] + [record]

    def remove(self, service: str, iid: str) -> None:
        """Delete one instance, as a DynamoDB delete would."""
        with self._lock:
            self.order = [i for i in self.order if (i.service, i.id) != (service, iid)]

    def find_service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def find_instance(self, service: str, iid: str) -> Instance | None:
        return next((i for i in self.order if i.service == service and i.id == iid), None)

    def all_instances(self, service: str) -> list[Instance]:
        return [i for i in self.order if i.service == service]

    def scan_services(self) -> list[Service]:
        return list(self.services)

    def iter_instances(self) -> Iterator[Instance]:
        yield from self.order


def tree(zk: str, realm: str) -> dict[str, bytes]:
    """Every service, instance and config node of the realm, raw."""
    k = KazooClient(zk)
    k.start()
    out = {}
    layout = Layout(realm)
    for root in (layout.services, layout.config):
        for name in k.get_children(root):
            out[f"{root}/{name}"] = k.get(f"{root}/{name}")[0]
            for child in k.get_children(f"{root}/{name}"):
                out[f"{root}/{name}/{child}"] = k.get(f"{root}/{name}/{child}")[0]
    k.stop()
    k.close()
    return out


def expected(truth: ScriptedTruth, realm: str) -> dict[str, bytes]:
    """What the mirror must hold for the scripted truth."""
    out: dict[str, bytes] = {}
    for s in truth.services:
        out.update(desired_tree(Layout(realm), s, truth.all_instances(s.name)))
    return out


@pytest.fixture
def mirror_on(zk_server: ZooKeeperServer, realm: str) -> Iterator[MakeMirror]:
    """Connected mirrors of the test's realm over a scripted truth, stopped at teardown."""
    made: list[ZkMirror] = []

    def make(truth: ScriptedTruth) -> ZkMirror:
        m = ZkMirror(zk_server.address, realm, timeout=5)
        m.bind(truth)
        m.connect()
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()
