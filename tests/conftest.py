"""Session-wide real servers shared by every test tier.

Servers are started lazily, once per test session, on free 127.0.0.1 ports,
and stopped when the session ends. Each test gets its own namespace (a fresh
ZooKeeper chroot, a fresh realm / table prefix) so tests never see each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas.envvars import TESTS
from atlas.stack import MotoServer, ZooKeeperServer
from atlas.stack.servers import zookeeper_available

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A real ZooKeeper 3.8 from Debian's package, shared by the session."""
    if not zookeeper_available():
        pytest.fail("Debian's zookeeper package is required (apt-get install zookeeper)")
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def zk_chroot(zk_server: ZooKeeperServer) -> str:
    """A unique chroot path for one test (not created)."""
    return f"/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def zk_hosts(zk_server: ZooKeeperServer, zk_chroot: str) -> str:
    """A kazoo hosts string for the session ZooKeeper, confined to a fresh chroot."""
    from kazoo.client import KazooClient

    root = KazooClient(hosts=zk_server.address)
    root.start(timeout=15)
    root.ensure_path(zk_chroot)
    root.stop()
    root.close()
    return zk_server.address + zk_chroot


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A real moto server over HTTP (DynamoDB + KMS), shared by the session.

    Serialized (one request at a time), so it is linearizable like DynamoDB.
    ATLAS_TEST_MOTO_MODE=stock runs stock `moto.server` instead, to show what fails there.
    """
    mode = TESTS.get("ATLAS_TEST_MOTO_MODE")
    server = MotoServer(Path(tmp_path_factory.mktemp("moto")), mode=mode)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def realm() -> str:
    """A unique realm name so tables and znodes never collide between tests."""
    return f"t{uuid.uuid4().hex[:10]}"
