"""The registry: Atlas's domain logic over DynamoDB, free of Flask."""

from atlas.registry.mirror import Mirror, NullMirror
from atlas.registry.models import Models, build_models, build_models_for
from atlas.registry.records import HealthCheck, Instance, Page, Service, instance_id
from atlas.registry.service import Registry
from atlas.registry.store import CursorKey, ScanPolicy, Store

__all__ = [
    "CursorKey",
    "HealthCheck",
    "Instance",
    "Mirror",
    "Models",
    "NullMirror",
    "Page",
    "Registry",
    "ScanPolicy",
    "Service",
    "Store",
    "build_models",
    "build_models_for",
    "instance_id",
]
