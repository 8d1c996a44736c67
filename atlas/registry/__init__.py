"""The registry: Atlas's domain logic over DynamoDB, free of Flask."""

from atlas.registry.mirror import Mirror, NullMirror
from atlas.registry.models import Models, build_models, build_models_for
from atlas.registry.records import HealthCheck, Instance, Page, Service, instance_id
from atlas.registry.service import Registry
from atlas.registry.store import ScanPolicy, Store

__all__ = [
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
