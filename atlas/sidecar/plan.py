"""Pure decisions: last-known-good guard and runtime-vs-reload planning."""

from __future__ import annotations

from dataclasses import dataclass, field

from atlas.contract import is_ip
from atlas.sidecar.model import Instance, Service, Snapshot
from atlas.sidecar.render import server_args, server_ids, server_name


@dataclass(frozen=True)
class Guarded:
    """The snapshot to apply, and which services are held at their last-known-good state."""

    snapshot: Snapshot
    held: tuple[str, ...]
    held_since: dict[str, float] = field(compare=False)


def guard(
    previous: Snapshot | None,
    view: Snapshot,
    now: float,
    held_since: dict[str, float],
    grace_s: float,
) -> Guarded:
    """Keep a service's last instances when the view suddenly empties it, for up to grace_s.

    A wiped tree being rebuilt, or a half-read view, shows a backend with no instance. A service
    whose node says it has 0 instances was emptied on purpose and is applied at once; a whole
    service that vanished is held for the grace period, then applied.
    """
    if previous is None:
        return Guarded(view, (), {})
    services = {s.name: s for s in view.services}
    new_since: dict[str, float] = {}
    held: list[str] = []
    for old in previous.services:
        if not old.instances:
            continue
        current = services.get(old.name)
        if current is not None and (current.instances or current.declared == 0):
            continue  # still has instances, or Atlas says it was emptied on purpose
        since = held_since.get(old.name, now)
        if now - since < grace_s:
            new_since[old.name] = since
            held.append(old.name)
            services[old.name] = old if current is None else current.with_instances(old.instances)
    return Guarded(Snapshot(tuple(services.values())), tuple(sorted(held)), new_since)


def structure(service: Service) -> tuple[object, ...]:
    """What of a backend cannot change at runtime (anything but its servers)."""
    return (service.name, service.health_check)


@dataclass(frozen=True)
class RuntimeOp:
    """One change to one server of an existing backend, as HAProxy CLI commands."""

    kind: str  # add | delete | state | weight
    backend: str
    server: str
    commands: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Runtime ops to run now, the state they lead to, and whether a reload is still needed."""

    ops: tuple[RuntimeOp, ...]
    after_runtime: Snapshot
    needs_reload: bool


def _server_ops(old: Service, new: Service) -> list[RuntimeOp]:
    ops: list[RuntimeOp] = []
    b = new.name
    old_map, new_map = old.instance_map(), new.instance_map()
    ids = server_ids(new)
    # Deletes go last: a backend whose instances are replaced must never pass through a moment
    # with no server at all (that moment answers 503).
    deletes = [
        RuntimeOp("delete", b, s, (f"disable server {b}/{s}", f"del server {b}/{s}"))
        for key, inst in old_map.items()
        if key not in new_map
        for s in (server_name(inst),)
    ]
    for key, inst in new_map.items():
        s = server_name(inst)
        before: Instance | None = old_map.get(key)
        if before is None:
            if not is_ip(inst.address or inst.host):
                # `add server` does not resolve names (HAProxy 2.6 leaves it with no address):
                # only a reload, which resolves them, can route a new hostname instance.
                return []
            cmds = [f"add server {b}/{s} {server_args(new, inst, ids[key])}"]
            if new.health_check is not None:
                cmds.append(f"enable health {b}/{s}")
            if inst.enabled:
                cmds.append(f"enable server {b}/{s}")
            ops.append(RuntimeOp("add", b, s, tuple(cmds)))
            continue
        if before.target != inst.target or server_ids(old).get(key) != ids[key]:
            # An address change or an id collision shift: simplest to replace the server.
            return []
        if before.weight != inst.weight:
            ops.append(RuntimeOp("weight", b, s, (f"set weight {b}/{s} {inst.weight}",)))
        if before.enabled != inst.enabled:
            state = "ready" if inst.enabled else "maint"
            ops.append(RuntimeOp("state", b, s, (f"set server {b}/{s} state {state}",)))
    return ops + deletes


def plan(running: Snapshot | None, desired: Snapshot) -> Plan:
    """Split the change running → desired into runtime ops and a remaining structural reload."""
    if running is None:
        return Plan((), Snapshot(), True)
    ops: list[RuntimeOp] = []
    after: list[Service] = []
    for old in running.services:
        new = desired.get(old.name)
        if new is None or structure(new) != structure(old) or new == old:
            after.append(old)
            continue
        service_ops = _server_ops(old, new)
        if not service_ops:
            after.append(old)  # not expressible at runtime; left for the reload
            continue
        ops.extend(service_ops)
        after.append(new)
    after_snapshot = Snapshot(tuple(after))
    return Plan(tuple(ops), after_snapshot, after_snapshot != desired)
