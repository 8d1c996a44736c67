"""Group commit: one multi that publishes every queued instance change of one service (pure).

Writers of one service post "instance X changed to this record; before my DynamoDB write the
guard was at version g". The mirror's owner thread reads the guard, the service node and the
instance nodes once, then plans one transaction for all of them with one guard check+bump:

- a change whose instance was touched by a commit after its pre-read (per the guard's log) is
  stale: its writer re-reads the truth and posts again;
- of two changes to the same instance in one batch, which DynamoDB write came last is not
  known: the last posted is committed and the others are stale (they re-read after it);
- a change that needs the service node's `instances` count changed, when that node is missing
  or not what Atlas wrote, needs a full service sync;
- the rest commit together, their instance ops computed against the nodes as just read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from atlas.contract import Layout
from atlas.mirror.guard import GuardLog
from atlas.mirror.payloads import dumps, instance_payload
from atlas.mirror.plan import Op
from atlas.registry.records import Instance


@dataclass(frozen=True)
class Change:
    """One posted instance change: the record written (None: detached) and the guard version
    read before the DynamoDB write."""

    iid: str
    record: Instance | None
    since: int


@dataclass(frozen=True)
class BatchPlan:
    """The multi to commit, and what becomes of each change (by index into the batch)."""

    ops: tuple[Op, ...]
    commit: tuple[int, ...]
    stale: tuple[int, ...]
    resync: tuple[int, ...]


def count_op(
    layout: Layout, service: str, parent: tuple[bytes, int, int], delta: int
) -> tuple[bool, Op | None]:
    """The service node update that keeps its `instances` count (None: unchanged).

    Not patchable when the node's data is not what Atlas wrote (a count that disagrees with
    the children, or not Atlas's JSON): the caller must take the full sync.
    """
    if delta == 0:
        return True, None
    data, version, children = parent
    try:
        obj = json.loads(data or b"null")
    except (TypeError, ValueError):
        return False, None
    count = obj.get("instances") if isinstance(obj, dict) else None
    if isinstance(count, bool) or count != children:
        return False, None
    obj["instances"] = children + delta
    return True, Op("set", layout.service(service), dumps(obj), version)


def plan_batch(
    layout: Layout,
    service: str,
    changes: Sequence[Change],
    guard: tuple[bytes, int],
    parent: tuple[bytes, int, int] | None,
    nodes: Mapping[str, tuple[bytes, int]],
) -> BatchPlan:
    """Plan one group commit; `guard` = (data, version), `parent` = the service node
    (data, version, children) or None, `nodes` = the batch's instance nodes that exist."""
    every = tuple(range(len(changes)))
    if parent is None:
        return BatchPlan((), (), (), every)
    guard_data, current = guard
    log = GuardLog.parse(guard_data, current)
    stale: list[int] = []
    last: dict[str, int] = {}  # iid -> the change to commit for it
    for n, change in enumerate(changes):
        if not log.untouched(change.iid, change.since, current):
            stale.append(n)
            continue
        if change.iid in last:
            stale.append(last[change.iid])
        last[change.iid] = n
    ops: list[Op] = []
    moves: list[tuple[int, int]] = []  # (change index, +1 created / -1 deleted)
    for iid, n in last.items():
        record = changes[n].record
        path = layout.instance(service, iid)
        actual = nodes.get(path)
        if record is None:
            if actual is not None:
                ops.append(Op("delete", path, version=actual[1]))
                moves.append((n, -1))
            continue
        payload = instance_payload(record)
        if actual is None:
            ops.append(Op("create", path, payload))
            moves.append((n, 1))
        elif actual[0] != payload:
            ops.append(Op("set", path, payload, actual[1]))
    resync: list[int] = []
    patchable, count = count_op(layout, service, parent, sum(d for _, d in moves))
    if not patchable:
        moved = {n for n, _ in moves}
        resync = sorted(moved)
        moving_paths = {layout.instance(service, changes[n].iid) for n in moved}
        ops = [o for o in ops if o.path not in moving_paths]
    elif count is not None:
        ops.append(count)
    commit = sorted(n for n in last.values() if n not in resync)
    if commit:
        touched = {changes[n].iid for n in commit}
        ops.append(
            Op("set", layout.guard(service), log.encode_after(current + 1, touched), current)
        )
    else:
        ops = []
    return BatchPlan(tuple(ops), tuple(commit), tuple(sorted(stale)), tuple(resync))
