"""Pure decisions: the last-known-good guard and runtime-vs-reload planning, per service.

Everything here is a function of its arguments (no I/O, no clock), so the loop can run it for
the one service a change touched, and tests can run it for whole snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from atlas.contract import is_ip
from atlas.sidecar.model import Instance, Service, Snapshot
from atlas.sidecar.render import server_args, server_ids, server_name


@dataclass(frozen=True)
class Guarded:
    """The snapshot to apply, and which services are held at their last-known-good state."""

    snapshot: Snapshot
    held: tuple[str, ...]
    held_since: dict[str, float] = field(compare=False)


def guard_service(
    previous: Service | None,
    current: Service | None,
    now: float,
    since: float | None,
    grace_s: float,
    deliberate: bool = False,
) -> tuple[Service | None, float | None]:
    """One service through the last-known-good guard: (service to apply, held since or None).

    A wiped tree being rebuilt, or a half-read view, shows a backend with no instance. A service
    whose node says it has 0 instances was emptied on purpose and is applied at once, and so is
    a service deleted on purpose (its guard was bumped by the delete); any other service that
    suddenly has no instance keeps its last instances for up to grace_s.
    """
    if previous is None or not previous.instances:
        return current, None
    if current is not None and (current.instances or current.declared == 0):
        return current, None  # still has instances, or Atlas says it was emptied on purpose
    if current is None and deliberate:
        return None, None
    started = now if since is None else since
    if now - started >= grace_s:
        return current, None  # a real removal, in the end
    if current is None:
        return previous, started
    return current.with_instances(previous.instances), started


def guard(
    previous: Snapshot | None,
    view: Snapshot,
    now: float,
    held_since: dict[str, float],
    grace_s: float,
    deliberate: frozenset[str] = frozenset(),
) -> Guarded:
    """`guard_service` over a whole snapshot (services absent from both are left out)."""
    if previous is None:
        return Guarded(view, (), {})
    services = {s.name: s for s in view.services}
    new_since: dict[str, float] = {}
    for old in previous.services:
        kept, since = guard_service(
            old, services.get(old.name), now, held_since.get(old.name), grace_s,
            old.name in deliberate,
        )  # fmt: skip
        if since is not None:
            new_since[old.name] = since
        if kept is None:
            services.pop(old.name, None)
        else:
            services[old.name] = kept
    return Guarded(Snapshot(tuple(services.values())), tuple(sorted(new_since)), new_since)


def structure(service: Service) -> tuple[object, ...]:
    """What of a service's own backend cannot change at runtime (anything but its servers)."""
    return (service.name, service.health_check)


@dataclass(frozen=True)
class RuntimeOp:
    """One change to one server of a backend, or to a map, as HAProxy CLI commands."""

    kind: str  # add | delete | state | weight | addr | replace | map
    backend: str
    server: str
    commands: tuple[str, ...]


def admin_state(inst: Instance) -> str:
    """The HAProxy administrative state an instance asks for."""
    if not inst.enabled:
        return "maint"
    return "drain" if inst.drain else "ready"


def add_op(backend: str, service: Service, inst: Instance, server_id: int) -> RuntimeOp:
    """Create one server at runtime (created in maintenance, then put in its state)."""
    s = server_name(inst)
    cmds = [f"add server {backend}/{s} {server_args(service, inst, server_id)}"]
    if service.health_check is not None:
        cmds.append(f"enable health {backend}/{s}")
    state = admin_state(inst)
    if state == "ready":
        cmds.append(f"enable server {backend}/{s}")
    elif state == "drain":
        cmds.append(f"set server {backend}/{s} state drain")
    return RuntimeOp("add", backend, s, tuple(cmds))


def delete_op(backend: str, inst: Instance) -> RuntimeOp:
    """Take one server out of traffic, then delete it."""
    s = server_name(inst)
    return RuntimeOp(
        "delete", backend, s, (f"disable server {backend}/{s}", f"del server {backend}/{s}")
    )


def addable(inst: Instance) -> bool:
    """True when HAProxy can create this instance's server at runtime.

    `add server` (and `set server ... addr`) does not resolve names (2.6 leaves such a server
    with no address): only a reload, which resolves them, routes a hostname instance.
    """
    return is_ip(inst.address or inst.host)


def fill_ops(backend: str, service: Service) -> list[RuntimeOp]:
    """Every server of a service, into an empty backend."""
    ids = server_ids(service)
    return [add_op(backend, service, inst, ids[inst.key]) for inst in service.instances]


def empty_ops(backend: str, service: Service) -> list[RuntimeOp]:
    """Remove every server of a service from its backend."""
    return [delete_op(backend, inst) for inst in service.instances]


@dataclass(frozen=True)
class ServerPlan:
    """Runtime ops for one backend's servers, and the service state they lead to."""

    ops: tuple[RuntimeOp, ...]
    after: Service  # what the backend runs once the ops are done
    complete: bool  # False: something is left for a reload (after != the wanted service)


def server_ops(backend: str, old: Service, new: Service) -> ServerPlan | None:
    """The runtime ops turning `old`'s servers into `new`'s in one backend.

    None when it cannot be done at runtime (server ids would shift, or a server for a hostname
    would be created or readdressed: see `addable`). A slow start change on a server that stays
    in traffic waits for a reload (HAProxy cannot change `slowstart` at runtime); the rest is
    applied now.
    """
    ops: list[RuntimeOp] = []
    b = backend
    old_map, new_map = old.instance_map(), new.instance_map()
    # Ids depend on the set of instances only: the same set, the same ids.
    same_set = old_map.keys() == new_map.keys()
    ids = server_ids(old) if same_set else server_ids(new)
    old_ids = ids if same_set else server_ids(old)
    after: dict[str, Instance] = {}
    complete = True
    # Deletes go last: a backend whose instances are replaced must never pass through a moment
    # with no server at all (that moment answers 503).
    deletes = [delete_op(b, inst) for key, inst in old_map.items() if key not in new_map]
    for key, inst in new_map.items():
        s = server_name(inst)
        before = old_map.get(key)
        if before is None:
            if not addable(inst):
                return None
            ops.append(add_op(b, new, inst, ids[key]))
            after[key] = inst
            continue
        if old_ids.get(key) != ids[key]:
            return None  # an id collision shift
        if before.target != inst.target and not addable(inst):
            return None
        if before.slow_start_s != inst.slow_start_s:
            if before.enabled or not addable(inst):
                complete = False  # takes effect at the next reload
                inst_now = replace(inst, slow_start_s=before.slow_start_s)
            else:
                # Out of traffic: replace the server with one that has the new slow start.
                add = add_op(b, new, inst, ids[key])
                ops.append(RuntimeOp("replace", b, s, (f"del server {b}/{s}", *add.commands)))
                after[key] = inst
                continue
        else:
            inst_now = inst
        if before.target != inst.target:
            addr, _, port = inst.target.rpartition(":")
            ops.append(
                RuntimeOp(
                    "addr", b, s, (f"set server {b}/{s} addr {addr.strip('[]')} port {port}",)
                )
            )
        if before.weight != inst.weight:
            ops.append(RuntimeOp("weight", b, s, (f"set weight {b}/{s} {inst.weight}",)))
        if admin_state(before) != admin_state(inst):
            ops.append(RuntimeOp("state", b, s, (f"set server {b}/{s} state {admin_state(inst)}",)))
        after[key] = inst_now
    result = new.with_instances(tuple(after.values()))
    return ServerPlan(tuple(ops + deletes), result, complete and result == new)


@dataclass(frozen=True)
class Plan:
    """Runtime ops to run now, the state they lead to, and whether a reload is still needed."""

    ops: tuple[RuntimeOp, ...]
    after_runtime: Snapshot
    needs_reload: bool


def plan_changes(running: Snapshot | None, desired: Snapshot) -> Plan:
    """Split running → desired, every service in its own backend, into runtime ops and a
    remaining structural reload (new or deleted services, health-check changes)."""
    if running is None:
        return Plan((), Snapshot(), True)
    ops: list[RuntimeOp] = []
    after: list[Service] = []
    for old in running.services:
        new = desired.get(old.name)
        if new is None or structure(new) != structure(old) or new == old:
            after.append(old)
            continue
        p = server_ops(old.name, old, new)
        if p is None:
            after.append(old)  # not expressible at runtime; left for the reload
            continue
        ops.extend(p.ops)
        after.append(p.after)
    after_snapshot = Snapshot(tuple(after))
    return Plan(tuple(ops), after_snapshot, after_snapshot != desired)
