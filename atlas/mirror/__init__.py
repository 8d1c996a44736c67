"""The ZooKeeper mirror of DynamoDB's truth, and its reconciler."""

from atlas.mirror.payloads import config_payload, instance_payload, service_payload
from atlas.mirror.plan import Op, Plan, diff_subtree
from atlas.mirror.reconciler import Reconciler
from atlas.mirror.zk import MirrorConflict, Prepared, Synced, TruthSource, ZkMirror

__all__ = [
    "MirrorConflict",
    "Op",
    "Plan",
    "Prepared",
    "Reconciler",
    "Synced",
    "TruthSource",
    "ZkMirror",
    "config_payload",
    "diff_subtree",
    "instance_payload",
    "service_payload",
]
