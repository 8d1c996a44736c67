"""atlas-sidecar: ZooKeeper → local HAProxy, routing by the Atlas-Service request header.

Pipeline (Synapse / consul-template style): watch → immutable snapshot → pure render →
write-if-changed atomically → `haproxy -c` → paced hitless reload, with changes that need no
new structure applied through HAProxy's runtime API instead.
"""

from atlas.sidecar.model import HealthCheck, Instance, Service, Snapshot
from atlas.sidecar.render import RenderOptions, render

__all__ = ["HealthCheck", "Instance", "RenderOptions", "Service", "Snapshot", "render"]
