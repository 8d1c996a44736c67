"""The ZooKeeper mirror of DynamoDB's truth, and its reconciler."""

from atlas.mirror.payloads import config_payload, instance_payload, service_payload
from atlas.mirror.plan import Op, Plan, plan
from atlas.mirror.reconciler import Reconciler
from atlas.mirror.zk import MirrorConflict, ZkMirror

__all__ = [
    "MirrorConflict",
    "Op",
    "Plan",
    "Reconciler",
    "ZkMirror",
    "config_payload",
    "instance_payload",
    "plan",
    "service_payload",
]
