"""Migrations: versioned, recorded, idempotent, and safe when two processes run them at once."""

from __future__ import annotations

import threading

import boto3

from atlas.config import Settings
from atlas.migrate import Migrator, discover


def test_discovers_migrations_in_order() -> None:
    ids = [m.id for m in discover()]
    assert ids[0] == "0001_initial"
    assert ids == sorted(ids)


def test_applies_once_and_records(aws: None) -> None:
    s = Settings(realm="mig", auth_disabled=False, admin_tokens=("x" * 16,))
    assert Migrator(s).run() == [m.id for m in discover()]
    assert Migrator(s).run() == []
    tables = boto3.client("dynamodb").list_tables()["TableNames"]
    assert {"atlas-mig-services", "atlas-mig-instances", "atlas-mig-migrations"} <= set(tables)
    desc = boto3.client("dynamodb").describe_table(TableName="atlas-mig-instances")["Table"]
    assert desc["GlobalSecondaryIndexes"][0]["IndexName"] == "by-host"


def test_concurrent_runs_apply_each_migration_exactly_once(aws: None) -> None:
    # `aws` serves one DynamoDB request at a time, as DynamoDB makes each request atomic.
    s = Settings(realm="race", admin_tokens=("x" * 16,))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(Migrator(s).run())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    applied = [m for r in results for m in r]
    assert sorted(applied) == sorted(m.id for m in discover())


def test_expired_lock_is_taken_over(aws: None) -> None:
    s = Settings(realm="stale", admin_tokens=("x" * 16,))
    now = [1000.0]
    crashed = Migrator(s, clock=lambda: now[0])
    crashed._ensure_table()
    crashed._acquire(timeout=1)  # a process that died holding the lock
    now[0] += 1000
    fresh = Migrator(s, clock=lambda: now[0], sleep=lambda _: None)
    assert fresh.run() == [m.id for m in discover()]
