"""Reads from memory: every Atlas process's watch-fed view of its realm (see `zkview`)."""

from atlas.view.index import IndexedMirror, WriteNote
from atlas.view.snapshot import SERVICES, ServiceEntry, Snapshot, config_key, instances_key
from atlas.view.zkview import TooManyWaiters, ZkView

__all__ = [
    "SERVICES",
    "IndexedMirror",
    "ServiceEntry",
    "Snapshot",
    "TooManyWaiters",
    "WriteNote",
    "ZkView",
    "config_key",
    "instances_key",
]
