"""Pure rendering: snapshot → HAProxy configuration text (no I/O, no clock).

Two ways to route by the service header:

- one ACL and one `use_backend` per service (`RenderOptions.map_file` unset): a new service
  needs a reload; used by static HAProxies (`atlas.client.testing`) and the golden files;
- a map (`map_file` set): `use_backend %[req.hdr(H),lower,map(file)]`, the map naming each
  service's backend. HAProxy's runtime API changes the map (`add map`/`set map`/`del map`) and
  `spares` empty backends wait for new services, so a new service needs no reload: the sidecar
  fills a spare with servers and adds the map entry. A spare checks health on the path its
  entry in `check_map_file` gives (`be_name` → path), also set at runtime.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from atlas.contract import HEADER_NAME_RE, REALM_RE, is_ip
from atlas.sidecar.model import Instance, Service, Snapshot

UNKNOWN_BACKEND = "atlas_unknown"
SPARE_PREFIX = "atlas_spare_"
_SERVER_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True)
class RenderOptions:
    """Everything the config depends on besides the snapshot."""

    port: int = 4000
    bind_address: str = "127.0.0.1"
    header: str = "Atlas-Service"
    admin_socket: str = "/tmp/atlas-sidecar/admin.sock"
    realm: str = "local"
    connect_timeout_ms: int = 2000
    client_timeout_ms: int = 60000
    server_timeout_ms: int = 60000
    hard_stop_after_s: int = 60
    map_file: str | None = None  # route by this map file (runtime-changeable); None: ACLs
    check_map_file: str | None = None  # spare backend → health-check path (map mode)
    server_state_file: str | None = None  # carries health and runtime states across reloads
    spares: int = 0  # empty backends kept for new services (map mode only)

    def __post_init__(self) -> None:
        if not HEADER_NAME_RE.match(self.header):
            raise ValueError(f"invalid header name {self.header!r}")
        if not REALM_RE.fullmatch(self.realm):
            raise ValueError(f"invalid realm {self.realm!r}")
        if self.spares < 0 or (self.spares and not (self.map_file and self.check_map_file)):
            raise ValueError("spare backends need map_file and check_map_file")

    @property
    def map_mode(self) -> bool:
        """True when routing goes through the runtime-changeable map."""
        return self.map_file is not None


def spare_name(index: int) -> str:
    """The name of the index-th spare backend."""
    return f"{SPARE_PREFIX}{index:04d}"


def is_spare(backend: str) -> bool:
    """True for a spare backend's name (never a service name: those have no `_`)."""
    return backend.startswith(SPARE_PREFIX)


def config_word(value: str) -> str:
    """A contract-valid path as one word of HAProxy's config: `'` would open a quoted string.

    The contract already refuses space, `"`, `\\` and `#`; `$` is expanded only inside
    double quotes, so nothing else needs escaping.
    """
    return value.replace("'", "\\'")


def server_name(instance: Instance) -> str:
    """The stable HAProxy server name of an instance (its `host:port`)."""
    return _SERVER_NAME_BAD.sub("_", instance.key)


def server_ids(service: Service) -> dict[str, int]:
    """Stable numeric server ids derived from host:port (collisions probed in sorted order)."""
    return service.server_ids


def server_args(service: Service, instance: Instance, server_id: int) -> str:
    """The server keywords after the name, shared by the config file and runtime `add server`."""
    parts = [instance.target, f"id {server_id}", f"weight {instance.weight}"]
    if not is_ip(instance.address or instance.host):
        # A name that does not resolve must not fail `haproxy -c` for every service: that
        # server starts without an address (out of rotation) until a reload resolves it.
        parts.append("init-addr libc,none")
    if service.health_check is not None:
        parts.append(f"check inter {service.health_check.interval_ms}ms")
    if instance.slow_start_s:
        parts.append(f"slowstart {instance.slow_start_s}s")
    return " ".join(parts)


def _acl(service: Service) -> str:
    return f"svc_{service.name.replace('-', '_')}"


def _servers(service: Service) -> list[str]:
    lines = []
    ids = server_ids(service)
    for inst in service.instances:
        line = f"    server {server_name(inst)} {server_args(service, inst, ids[inst.key])}"
        if not inst.enabled:
            line += " disabled"
        lines.append(line)
    return lines


def _backend(service: Service) -> list[str]:
    lines = [f"backend {service.name}", "    balance roundrobin"]
    hc = service.health_check
    if hc is not None:
        lines.append(f"    option httpchk GET {config_word(hc.path)}")
        lines.append(f"    timeout check {hc.timeout_ms}ms")
    # Not `http-request return ... if { nbsrv eq 0 }`: a freshly reloaded worker briefly
    # counts 0 servers and would answer 503 to requests it could serve.
    lines.append(
        "    http-error status 503 content-type text/plain hdr X-Atlas-Error no-instance"
        f' string "atlas-sidecar: no available instance of service {service.name}\\n"'
    )
    return lines + _servers(service)


def _spare(name: str, service: Service | None, o: RenderOptions) -> list[str]:
    """A spare backend, empty or holding a service placed in it at runtime.

    Its health check path comes from the check map by backend name, so any service fits;
    without `timeout check` a check times out after its `inter`.
    """
    lines = [
        f"backend {name}",
        "    balance roundrobin",
        "    option httpchk",
        f"    http-check send meth GET uri-lf %[be_name,map({o.check_map_file},/)]",
        "    http-error status 503 content-type text/plain hdr X-Atlas-Error no-instance"
        ' lf-string "atlas-sidecar: no available instance of service'
        f' %[req.hdr({o.header}),lower]\\n"',
    ]
    return lines + (_servers(service) if service is not None else [])


def backend_of(name: str, placement: Mapping[str, str] | None) -> str:
    """The backend a service is routed to: its own, or the spare it was placed in."""
    return (placement or {}).get(name, name)


def render_map(snapshot: Snapshot, placement: Mapping[str, str] | None = None) -> str:
    """The routing map file: one `service backend` line per service (map mode)."""
    return "".join(f"{s.name} {backend_of(s.name, placement)}\n" for s in snapshot.services)


def render_check_map(snapshot: Snapshot, placement: Mapping[str, str] | None = None) -> str:
    """The spare backends' health-check paths: one `spare path` line per placed service."""
    lines = []
    for s in snapshot.services:
        backend = backend_of(s.name, placement)
        if is_spare(backend) and s.health_check is not None:
            lines.append(f"{backend} {s.health_check.path}\n")
    return "".join(sorted(lines))


def render(
    snapshot: Snapshot, options: RenderOptions, placement: Mapping[str, str] | None = None
) -> str:
    """Render the complete HAProxy configuration for a snapshot (deterministic).

    `placement` (map mode) names the spare backend of each service placed in one at runtime;
    every other service has its own backend. Spares 0 .. `options.spares`-1 are always there,
    and so is any spare a placement names beyond them.
    """
    o = options
    placement = placement or {}
    out = [
        "# Generated by atlas-sidecar; do not edit: it is rewritten from ZooKeeper.",
        f"# realm {o.realm}: {len(snapshot.services)} services,"
        f" {snapshot.instance_count()} instances",
        "global",
        f"    stats socket {o.admin_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 2m",
        f"    hard-stop-after {o.hard_stop_after_s}s",
    ]
    if o.server_state_file:
        out.append(f"    server-state-file {o.server_state_file}")
    out += [
        "",
        "defaults",
        "    mode http",
        "    option redispatch",
        "    retries 2",
        f"    timeout connect {o.connect_timeout_ms}ms",
        f"    timeout client {o.client_timeout_ms}ms",
        f"    timeout server {o.server_timeout_ms}ms",
        "    timeout http-keep-alive 10s",
    ]
    if o.server_state_file:
        out.append("    load-server-state-from-file global")
    out += [
        "",
        "frontend atlas",
        f"    bind {o.bind_address}:{o.port}",
        "    http-request return status 404 content-type text/plain hdr X-Atlas-Error"
        f' no-service-header string "atlas-sidecar: missing {o.header} request header\\n"'
        f" unless {{ req.hdr({o.header}) -m found }}",
    ]
    if o.map_mode:
        out.append(
            f"    use_backend %[req.hdr({o.header}),lower,map({o.map_file},{UNKNOWN_BACKEND})]"
        )
    else:
        for service in snapshot.services:
            out.append(f"    acl {_acl(service)} req.hdr({o.header}) -m str -i {service.name}")
        for service in snapshot.services:
            out.append(f"    use_backend {service.name} if {_acl(service)}")
    out += [
        f"    default_backend {UNKNOWN_BACKEND}",
        "",
        f"backend {UNKNOWN_BACKEND}",
        "    http-request return status 503 content-type text/plain hdr X-Atlas-Error"
        f' unknown-service lf-string "atlas-sidecar: unknown service'
        f" '%[req.hdr({o.header})]' in realm {o.realm}\\n\"",
    ]
    in_spares: dict[str, Service] = {}
    for service in snapshot.services:
        spare = placement.get(service.name) if o.map_mode else None
        if spare is not None:
            in_spares[spare] = service
            continue
        out.append("")
        out += _backend(service)
    if o.map_mode:
        for name in sorted({spare_name(i) for i in range(o.spares)} | set(in_spares)):
            out.append("")
            out += _spare(name, in_spares.get(name), o)
    out.append("")
    return "\n".join(out)
