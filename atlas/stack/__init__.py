"""Launchers for the real servers of the local stack (ZooKeeper, moto), shared by `make run` and tests."""

from atlas.stack.procs import ManagedProcess, free_port, wait_for_port
from atlas.stack.servers import AtlasServer, MotoServer, ZooKeeperServer

__all__ = [
    "AtlasServer",
    "ManagedProcess",
    "MotoServer",
    "ZooKeeperServer",
    "free_port",
    "wait_for_port",
]
