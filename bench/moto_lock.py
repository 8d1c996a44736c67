"""What serializing moto costs: the same store operations against stock `moto.server`, Atlas's
moto server without its lock, and with it (the default), side by side in one run.

Each figure is operations per second through Atlas's own store layer (pynamodb), by 1 and by
4 client threads: PutItem of new items, conditional UpdateItem (version == the one read, each
thread on its own item), and the TransactWriteItems an instance attach makes (a condition
check on the service and a conditional put). Rounds alternate between the servers so that
machine noise falls on all of them alike; the best round of each is printed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atlas.config import Settings
from atlas.errors import AtlasError
from atlas.migrate import Migrator
from atlas.registry import Store, build_models_for
from atlas.registry.models import Models
from bench._stack import ADMIN, start_moto

MODES = ("stock", "unserialized", "serialized")
SECONDS = 2.0
ROUNDS = 3
NOW = "2026-01-01T00:00:00.000Z"


def _stores(ops: list[str]) -> dict[tuple[str, str], Store]:
    """A realm (its own tables) per server and operation: moto copies whole tables in a
    transaction, so one operation's items must not slow another's."""
    stores = {}
    for mode in MODES:
        moto = start_moto(mode)
        for i, op in enumerate(ops):
            settings = Settings(realm=f"lock{i}", dynamodb_endpoint=moto.url, admin_tokens=(ADMIN,))
            Migrator(settings).run()
            models = build_models_for(settings)
            models.Service("svc", created_at=NOW, updated_at=NOW, version=1).save()
            stores[(mode, op)] = Store(models)
    return stores


def _put(store: Store, worker: int, n: int) -> None:
    m = store.models.Instance
    m(f"put-{worker}", f"10.0.0.{n % 250}:{n}", host="10.0.0.1", port=n % 65535 + 1,
      created_at=NOW, updated_at=NOW, version=1).save()  # fmt: skip


def _update(store: Store, worker: int, n: int) -> None:
    m = store.models.Instance
    item = m(f"upd-{worker}", "10.0.0.1:80")
    if n == 0:
        m(f"upd-{worker}", "10.0.0.1:80", host="10.0.0.1", port=80, created_at=NOW,
          updated_at=NOW, version=0).save()  # fmt: skip
    # n updates done so far, so the item is at version n: condition on it, as If-Match does.
    store.update(item, [m.version.add(1)], action="bench", condition=m.version == n)


def _transact(store: Store, worker: int, n: int) -> None:
    models: Models = store.models
    svc, inst = models.Service, models.Instance
    # An instance replaced n times is at version n (the table keeps its size).
    item = inst(f"tx-{worker}", "10.0.1.1:80", host="10.0.1.1", port=80,
                created_at=NOW, updated_at=NOW, version=n + 1)  # fmt: skip
    unchanged = inst.instance_id.does_not_exist() if n == 0 else inst.version == n
    with store.transaction("bench") as tx:
        tx.check("service", svc, "svc", condition=svc.name.exists())
        tx.save("instance", item, condition=unchanged)


def _rate(
    store: Store, op: Callable[[Store, int, int], None], threads: int, salt: int
) -> tuple[float, int]:
    """(operations per second, failed operations) of `threads` clients for SECONDS."""
    counts = [0] * threads
    failed = [0] * threads
    deadline = time.perf_counter() + SECONDS

    def run(w: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            try:
                op(store, salt * 100 + w, n)
            except AtlasError:  # a 500 from moto, or a write that went missing
                failed[w] += 1
                return
            n += 1
        counts[w] = n

    started = time.perf_counter()
    workers = [threading.Thread(target=run, args=(w,)) for w in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts) / (time.perf_counter() - started), sum(failed)


def main() -> None:
    """Measure and print the table."""
    ops = {"PutItem": _put, "conditional UpdateItem": _update, "TransactWriteItems": _transact}
    stores = _stores(list(ops))
    best: dict[tuple[str, int, str], float] = {}
    failures: dict[str, int] = dict.fromkeys(MODES, 0)
    salt = 0
    for _ in range(ROUNDS):
        for name, op in ops.items():
            for threads in (1, 4):
                for mode in MODES:
                    salt += 1
                    rate, failed = _rate(stores[(mode, name)], op, threads, salt)
                    key = (name, threads, mode)
                    best[key] = max(best.get(key, 0.0), rate)
                    failures[mode] += failed
    print(f"ops/s, best of {ROUNDS} rounds of {SECONDS:.0f} s (client and server on this machine)")
    print(f"{'operation':24} {'threads':>7} " + " ".join(f"{m:>12}" for m in MODES)
          + "   serialized/stock")  # fmt: skip
    for name in ops:
        for threads in (1, 4):
            rates = [best[(name, threads, m)] for m in MODES]
            ratio = rates[2] / rates[0]
            print(f"{name:24} {threads:>7} " + " ".join(f"{r:12.0f}" for r in rates)
                  + f"   {ratio:17.2f}")  # fmt: skip
    print("operations that failed (moto 500s, conditions broken by a lost write): "
          + ", ".join(f"{m} {failures[m]}" for m in MODES))  # fmt: skip


if __name__ == "__main__":
    main()
