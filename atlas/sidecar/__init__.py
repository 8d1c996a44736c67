"""atlas-sidecar: ZooKeeper → local HAProxy, routing by the Atlas-Service request header.

Pipeline (Synapse / consul-template style): watch → per-service changes → HAProxy's runtime
API (servers, the routing map, spare backends for new services) → pure render → write if
changed, atomically → `haproxy -c` off the loop → paced hitless reload only where the runtime
API cannot do it. Nothing escapes the loop; HAProxy outlives the sidecar; each sidecar says
what it has applied in `/atlas/<realm>/sidecars/<host-id>`.

Modules: `model` (immutable view, lenient parsing), `render` (pure config), `plan` (pure
guard and runtime plans), `watch` (ZooKeeper), `haproxy` (the process and its sockets),
`core` (the loop), `status` (/status, /metrics), `timing`, `cli`.
"""

from atlas.sidecar.model import HealthCheck, Instance, Service, Snapshot
from atlas.sidecar.render import RenderOptions, render

__all__ = ["HealthCheck", "Instance", "RenderOptions", "Service", "Snapshot", "render"]
