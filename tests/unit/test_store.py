"""The store layer: named transaction reasons, cursors, race retries, scans that survive failed
pages (retried where they stopped, never restarted, never skipped), parallel segments that keep
a partition key's items together, typed models bound per realm, TTL caches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pynamodb.exceptions import ScanError

from atlas.config import Settings
from atlas.errors import Conflict, Unavailable, ValidationFailed
from atlas.migrate import Migrator
from atlas.registry import Registry, ScanPolicy, build_models_for
from atlas.registry.crypto import DataKeyCache
from atlas.registry.models import Models
from atlas.registry.store import CursorKey, Store, TransactionCanceled, race_retries
from atlas.registry.tokens import TokenStore
from tests.helpers import wait_until

NOW = "2026-01-01T00:00:00.000Z"


def _models(realm: str) -> Models:
    s = Settings(realm=realm, admin_tokens=("x" * 16,))
    Migrator(s).run()
    return build_models_for(s)


@pytest.fixture
def models(aws: None) -> Models:
    return _models("store")


def _service(models: Models, name: str) -> None:
    models.Service(name, created_at=NOW, updated_at=NOW, version=1).save()


def _instances(models: Models, services: int, per: int) -> None:
    with models.Instance.batch_write() as batch:
        for s in range(services):
            for i in range(per):
                batch.save(
                    models.Instance(
                        f"svc-{s:02d}", f"10.0.{s}.{i}:80", host=f"10.0.{s}.{i}", port=80,
                        created_at=NOW, updated_at=NOW, version=1,
                    )
                )  # fmt: skip


# ------------------------------------------------------------------ transactions

ROLES = ("service", "entry", "guard", "gone")


@pytest.mark.parametrize("failing", ROLES)
def test_cancellation_reasons_are_named_by_role_whatever_the_call_order(
    models: Models, failing: str
) -> None:
    """pynamodb sends checks, deletes, puts, updates; the reasons still name the right item."""
    store = Store(models)
    svc, cfg = models.Service, models.Config
    _service(models, "a")
    _service(models, "b")
    cfg("a", "k", version=1, created_at=NOW, updated_at=NOW).save()

    def cond(role: str, holds: Any, fails: Any) -> Any:
        return fails if role == failing else holds

    with pytest.raises(TransactionCanceled) as caught, store.transaction("a test") as tx:
        # added in an order unlike the wire order on purpose
        tx.update(
            "service",
            svc("a"),
            [svc.config_version.add(1)],
            condition=cond("service", svc.name.exists(), svc.name.does_not_exist()),
        )
        tx.save(
            "entry",
            cfg("a", "new", version=1, created_at=NOW, updated_at=NOW),
            condition=cond("entry", cfg.key.does_not_exist(), cfg.key.exists()),
        )
        tx.check(
            "guard",
            svc,
            "b",
            condition=cond("guard", svc.version == 1, svc.version == 2),
        )
        tx.delete(
            "gone",
            cfg("a", "k"),
            condition=cond("gone", cfg.version == 1, cfg.version == 9),
        )
    canceled = caught.value
    assert set(canceled.reasons) == set(ROLES)
    assert [r for r in ROLES if canceled.failed(r)] == [failing]
    # nothing of it was written
    assert svc.get("a", consistent_read=True).config_version == 0
    assert cfg.get("a", "k", consistent_read=True).version == 1
    assert store.get(cfg, "a", "new", action="reading") is None


def test_a_transaction_role_is_unique(models: Models) -> None:
    store = Store(models)
    svc = models.Service
    with pytest.raises(ValueError, match="used twice"), store.transaction("a test") as tx:
        tx.check("service", svc, "a", condition=svc.name.exists())
        tx.check("service", svc, "b", condition=svc.name.exists())


def test_a_block_that_raises_commits_nothing(models: Models) -> None:
    store = Store(models)
    with pytest.raises(RuntimeError), store.transaction("a test") as tx:
        tx.save("service", models.Service("a", created_at=NOW, updated_at=NOW, version=1))
        raise RuntimeError("changed my mind")
    assert store.get(models.Service, "a", action="reading") is None


# ---------------------------------------------------------------- cursors, races


def test_cursor_round_trip_and_refusals(models: Models) -> None:
    key = CursorKey(("entry", "version"), numbers=frozenset({"version"}))
    item = models.ConfigHistory("s/k", 7, service="s", key="k", created_at=NOW, updated_at=NOW)
    cursor = key.encode(item)
    assert key.decode(cursor, entry="s/k") == {"entry": {"S": "s/k"}, "version": {"N": "7"}}
    assert key.decode(None) is None
    with pytest.raises(ValidationFailed) as other:
        key.decode(cursor, entry="s/other")
    assert other.value.errors == {"cursor": ["Not a cursor of this listing."]}
    for junk in ("%%%", "bm90LWpzb24", CursorKey(("name",)).encode(models.Service("x"))):
        with pytest.raises(ValidationFailed) as bad:
            key.decode(junk)
        assert bad.value.errors == {"cursor": ["Not a cursor Atlas issued."]}


def test_race_retries_gives_up_with_a_conflict() -> None:
    attempts = []
    with pytest.raises(Conflict, match="kept changing"):
        for n in race_retries("thing x", tries=3):
            attempts.append(n)
    assert attempts == [0, 1, 2]


# ------------------------------------------------------------------------ scans


class FlakyScans:
    """Wraps a model's scan: the calls listed in `fail` raise ScanError, as a timeout does."""

    def __init__(self, model: Any, fail: set[int]) -> None:
        self.real = model.scan
        self.fail = fail
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if len(self.calls) in self.fail:
            raise ScanError("Failed to scan table: Read timeout on endpoint URL")
        return self.real(*args, **kwargs)


def _no_sleep(seconds: float) -> None:
    pass


def test_a_failed_page_is_retried_where_it_stopped_with_a_smaller_page(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    _instances(models, 6, 5)
    flaky = FlakyScans(models.Instance, fail={3, 4})  # page 3 fails twice
    monkeypatch.setattr(models.Instance, "scan", flaky)
    store = Store(models, scan=ScanPolicy(page_size=8, min_page_size=2), sleep=_no_sleep)
    ids = [(m.service, m.instance_id) for m in store.scan(models.Instance, "scanning")]
    assert len(ids) == 30 and len(set(ids)) == 30  # nothing skipped, nothing twice
    starts = [c["last_evaluated_key"] for c in flaky.calls]
    assert starts[0] is None and all(s is not None for s in starts[1:])  # never restarted
    assert starts[2] == starts[3] == starts[4]  # the failed page, retried from its own start
    sizes = [c["page_size"] for c in flaky.calls]
    assert sizes[:6] == [8, 8, 8, 4, 2, 4]  # halved per failure, grown back after a success
    assert store.counters["scan_page_retries"] == 2


def test_a_page_that_keeps_failing_is_unavailable(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    _instances(models, 2, 5)
    flaky = FlakyScans(models.Instance, fail=set(range(2, 100)))
    monkeypatch.setattr(models.Instance, "scan", flaky)
    store = Store(models, scan=ScanPolicy(page_size=4, attempts=3), sleep=_no_sleep)
    got = []
    with pytest.raises(Unavailable, match="scanning"):
        for m in store.scan(models.Instance, "scanning"):
            got.append(m)
    assert len(got) == 4  # the first page, then nothing made up
    assert len(flaky.calls) == 4 and store.counters["scan_page_retries"] == 2


def _runs(items: list[tuple[str, str]]) -> list[str]:
    runs: list[str] = []
    for service, _ in items:
        if not runs or runs[-1] != service:
            runs.append(service)
    return runs


@pytest.mark.parametrize("segments", [1, 3])
def test_a_scan_streams_each_partition_key_in_one_run(models: Models, segments: int) -> None:
    _instances(models, 12, 7)
    registry = Registry(models, scan=ScanPolicy(page_size=5, segments=segments))
    items = [(i.service, i.id) for i in registry.iter_instances()]
    assert sorted(items) == sorted({(f"svc-{s:02d}", f"10.0.{s}.{i}:80")
                                    for s in range(12) for i in range(7)})  # fmt: skip
    runs = _runs(items)
    assert sorted(runs) == [f"svc-{s:02d}" for s in range(12)]  # one run per service


def test_a_parallel_scan_raises_a_segment_failure_and_stops_its_readers(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    _instances(models, 12, 7)
    real = models.Instance.scan

    def fail_segment_one(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("segment") == 1:
            raise ScanError("Failed to scan table: Read timeout on endpoint URL")
        return real(*args, **kwargs)

    monkeypatch.setattr(models.Instance, "scan", fail_segment_one)
    store = Store(models, scan=ScanPolicy(page_size=3, segments=3, attempts=2), sleep=_no_sleep)
    with pytest.raises(Unavailable):
        list(store.scan(models.Instance, "scanning"))
    wait_until(lambda: not _scan_threads(), what="scan readers to stop")


def _scan_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("atlas-scan-")]


def test_a_consumer_that_stops_early_stops_the_readers(models: Models) -> None:
    _instances(models, 12, 7)
    store = Store(models, scan=ScanPolicy(page_size=2, segments=3))
    stream: Iterator[Any] = store.scan(models.Instance, "scanning")
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    wait_until(lambda: not _scan_threads(), what="scan readers to stop")


# ----------------------------------------------------------------------- models


def test_models_of_two_realms_share_no_table_or_index(aws: None) -> None:
    a, b = _models("realm-a"), _models("realm-b")
    assert a.Instance.Meta.table_name != b.Instance.Meta.table_name
    a.Instance("svc", "10.0.0.1:80", host="10.0.0.1", port=80, created_at=NOW, updated_at=NOW,
               version=1).save()  # fmt: skip
    assert [m.service for m in a.Instance.by_host.query("10.0.0.1")] == ["svc"]
    assert list(b.Instance.by_host.query("10.0.0.1")) == []
    assert a.Instance.port.attr_name == "port"  # the typed base's attributes, inherited


# ------------------------------------------------------------------------ caches


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_cache_expires_and_revocation_drops_it(models: Models) -> None:
    clock = Clock()
    registry = Registry(models)
    registry.create_service({"name": "api"})
    tokens = TokenStore(registry, cache_s=5.0, clock=clock)
    record, token = tokens.issue("api")
    assert tokens.lookup(token) == record
    tokens.revoke("api", record.id)
    assert tokens.lookup(token) is None  # revocation is immediate in this process
    record2, token2 = tokens.issue("api")
    assert tokens.lookup(token2) == record2
    for m in models.Token.by_service.query("api", models.Token.id == record2.id):
        m.delete()  # revoked by another process: this one's cache holds it for cache_s
    assert tokens.lookup(token2) == record2
    clock.now += 5.1
    assert tokens.lookup(token2) is None


def test_data_key_cache_expires_and_is_bounded() -> None:
    clock = Clock()
    cache = DataKeyCache(10.0, max_entries=2, clock=clock)
    cache.put(b"a", b"key-a")
    cache.put(b"b", b"key-b")
    assert cache.get(b"a") == b"key-a"  # a is now the most recently used
    cache.put(b"c", b"key-c")
    assert cache.get(b"b") is None and cache.get(b"a") == b"key-a"
    clock.now += 10.1
    assert cache.get(b"a") is None and cache.get(b"c") is None
    off = DataKeyCache(0)
    off.put(b"a", b"key-a")
    assert off.get(b"a") is None
