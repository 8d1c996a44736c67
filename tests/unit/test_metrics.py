"""Metrics in-process: bounded HTTP labels, per-app registries, the store's DynamoDB timings and
failure kinds, the audit counts, the mirror's counters/state/ZooKeeper errors/swallowed errors,
the multiprocess directory hooks, and the sidecar exposition of a status dict; every exposition
passes `promtool check metrics`."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError
from flask import Flask
from kazoo.client import KazooState
from kazoo.exceptions import ConnectionLoss
from prometheus_client.parser import text_string_to_metric_families
from pynamodb.exceptions import GetError

from atlas.app import create_app
from atlas.config import Settings
from atlas.errors import Unavailable, ValidationFailed
from atlas.metrics import multiproc
from atlas.metrics.instruments import AtlasMetrics
from atlas.metrics.sidecar import render as render_sidecar
from atlas.metrics.web import METHODS, UNMATCHED
from atlas.mirror import ZkMirror
from atlas.registry import Registry, build_models
from atlas.registry.audit import AuditLog
from atlas.registry.mirror import NullMirror
from atlas.registry.store import ConditionFailed, Store, TransactionCanceled
from tests.unit.conftest import Client
from tests.unit.test_mirror_units import svc


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value, None when it is not exposed."""
    return samples(text).get((name, frozenset(labels.items())))


def promtool(text: str | bytes) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on an exposition (Debian's prometheus package)."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; make deps)")
    data = text.decode() if isinstance(text, bytes) else text
    return subprocess.run([tool, "check", "metrics"], input=data, capture_output=True, text=True)


def scrape(client: Client) -> str:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return str(resp.get_data(as_text=True))


# ------------------------------------------------------------------------------------- HTTP


def test_requests_are_counted_with_bounded_labels(app: Flask, client: Client) -> None:
    assert client.post("/v1/services", json={"name": "api"}).status_code == 201
    assert client.post("/v1/services", json={"name": "api"}).status_code == 409
    assert client.get("/v1/services/api").status_code == 200
    assert client.open("/v1/services", method="BREW").status_code == 405
    for path in ("/nope", "/v1/x/y/z/w", "/" + "a" * 300):
        assert client.get(path).status_code == 404
    text = scrape(client)
    http = "atlas_http_requests_total"
    assert value(text, http, method="POST", route="/v1/services", status="201") == 1
    assert value(text, http, method="POST", route="/v1/services", status="409") == 1
    assert value(text, http, method="GET", route="/v1/services/<string:name>", status="200") == 1
    assert value(text, http, method="other", route=UNMATCHED, status="405") == 1
    # Three unknown paths, one series.
    assert value(text, http, method="GET", route=UNMATCHED, status="404") == 3
    count = "atlas_http_request_duration_seconds_count"
    assert value(text, count, method="POST", route="/v1/services") == 2
    assert value(text, "atlas_http_request_duration_seconds_bucket",
                 method="POST", route="/v1/services", le="+Inf") == 2  # fmt: skip
    routes = {rule.rule for rule in app.url_map.iter_rules()} | {UNMATCHED}
    for name, labels in samples(text):
        labels_d = dict(labels)
        if name.startswith("atlas_http_"):
            assert labels_d.get("method", "GET") in METHODS | {"other"}
            assert labels_d.get("route", UNMATCHED) in routes
    result = promtool(text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_app_counts_only_its_own_requests(settings: Settings) -> None:
    one, two = create_app(settings=settings), create_app(settings=settings)
    try:
        one.test_client().get("/healthz")
        one.test_client().get("/healthz")
        two.test_client().get("/healthz")
        text_one = one.test_client().get("/metrics").get_data(as_text=True)
        text_two = two.test_client().get("/metrics").get_data(as_text=True)
        labels = {"method": "GET", "route": "/healthz", "status": "200"}
        assert value(text_one, "atlas_http_requests_total", **labels) == 2
        assert value(text_two, "atlas_http_requests_total", **labels) == 1
    finally:
        one.extensions["atlas"].close()
        two.extensions["atlas"].close()


def test_metrics_carry_no_secret_and_no_token(app: Flask, client: Client) -> None:
    client.post("/v1/services", json={"name": "api"})
    secret = "s3cr3t-value-never-shown"
    resp = client.put("/v1/services/api/config/db_password", json={"value": secret, "secret": True})
    assert resp.status_code in (200, 201), resp.json
    token = client.post("/v1/services/api/tokens", json={}).json["token"]
    text = scrape(client)
    assert secret not in text and token not in text
    assert "db_password" not in text  # config keys are in paths, never in labels


# ------------------------------------------------------------------------------- DynamoDB


def test_store_actions_are_timed_and_condition_failures_counted(app: Flask, client: Client) -> None:
    client.post("/v1/services", json={"name": "api"})
    client.post("/v1/services", json={"name": "api"})
    client.put("/v1/services/api/instances/10.0.0.1:80", json={})
    client.get("/v1/services/api/instances")
    text = scrape(client)
    duration = "atlas_dynamodb_request_duration_seconds_count"
    assert value(text, duration, action="creating the service") == 2
    assert value(text, duration, action="attaching the instance") == 1
    assert (value(text, duration, action="listing instances") or 0) >= 1
    errors = "atlas_dynamodb_errors_total"
    assert value(text, errors, action="creating the service", error="condition_failed") == 1
    assert value(text, errors, action="attaching the instance", error="condition_failed") is None


class Recorder:
    """A StoreMetrics that remembers what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.pages: list[int] = []

    def dynamodb_call(self, action: str, seconds: float, error: str | None) -> None:
        assert seconds >= 0
        self.calls.append((action, error))

    def scan_page(self, retries: int) -> None:
        self.pages.append(retries)

    def swallowed(self, where: str) -> None:
        self.calls.append((where, "swallowed"))


def _client_error(code: str | None) -> GetError:
    if code is None:
        return GetError("no answer", cause=TimeoutError("read timeout"))
    return GetError("failed", cause=ClientError({"Error": {"Code": code}}, "GetItem"))


@pytest.mark.parametrize(
    ("raised", "kind"),
    [
        (ConditionFailed("x"), "condition_failed"),
        (TransactionCanceled("x", {"a": "ConditionalCheckFailed"}), "transaction_canceled"),
        (_client_error("ProvisionedThroughputExceededException"), "throttled"),
        (_client_error("SomethingNew"), "other"),
        (_client_error(None), "no_response"),
    ],
)
def test_store_classifies_dynamodb_failures(aws: None, raised: Exception, kind: str) -> None:
    rec = Recorder()
    store = Store(build_models("unit-"), metrics=rec)
    with pytest.raises(type(raised)), store.timed("reading a service"):
        raise raised
    # The same failure seen through operation(): Unavailable caused by it.
    if not isinstance(raised, ConditionFailed | TransactionCanceled):
        with pytest.raises(Unavailable), store.operation("reading a service"):
            raise raised
    assert set(rec.calls) == {("reading a service", kind)}


def test_store_does_not_report_a_callers_own_error(aws: None) -> None:
    rec = Recorder()
    store = Store(build_models("unit-"), metrics=rec)
    with pytest.raises(ValidationFailed), store.operation("listing instances"):
        raise ValidationFailed("bad cursor")
    with store.operation("listing instances"):
        pass
    assert rec.calls == [("listing instances", None)]


def test_scans_report_their_pages(settings: Settings) -> None:
    rec = Recorder()
    reg = Registry(build_models(settings.table_prefix), metrics=rec)
    reg.scan_services()
    assert rec.pages == [0]
    assert ("scanning services", None) in rec.calls


class FailingMirror(NullMirror):
    """A mirror whose every call fails (ZooKeeper gone, a bug in the mirror)."""

    def put_service(self, svc: Any) -> int | None:
        raise RuntimeError("mirror down")


def test_a_mirror_failure_after_a_stored_write_is_counted_not_raised(settings: Settings) -> None:
    metrics = AtlasMetrics()
    reg = Registry(build_models(settings.table_prefix), mirror=FailingMirror(),
                   metrics=metrics.store)  # fmt: skip
    stored = reg.create_service({"name": "billing"})  # the write is in DynamoDB: no raise
    assert reg.get_service("billing").version == stored.version
    text = metrics.render().decode()
    assert value(text, "atlas_swallowed_errors_total", where="mirror_put_service") == 1
    assert promtool(text).returncode == 0


# ----------------------------------------------------------------------------------- audit


def _record(audit: AuditLog, n: int) -> None:
    audit.record(service="api", principal="admin", token_id=None, action="POST /v1/services",
                 method="POST", path=f"/v1/services/{n}", status=201)  # fmt: skip


class BlockingStoreMetrics(Recorder):
    """Holds the first DynamoDB call's thread until released (the audit writer, here)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def dynamodb_call(self, action: str, seconds: float, error: str | None) -> None:
        super().dynamodb_call(action, seconds, error)
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)


def test_audit_counts_queued_written_and_dropped(settings: Settings) -> None:
    metrics = AtlasMetrics()
    blocking = BlockingStoreMetrics()
    reg = Registry(build_models(settings.table_prefix), metrics=blocking)
    audit = AuditLog(reg, queue_size=1, linger_s=0, metrics=metrics.audit)
    try:
        _record(audit, 1)
        assert blocking.entered.wait(30)  # the writer thread is inside its first write
        _record(audit, 2)  # fills the queue
        _record(audit, 3)  # dropped
        text = metrics.render().decode()
        assert value(text, "atlas_audit_records_queued_total") == 2
        assert value(text, "atlas_audit_records_dropped_total") == 1
        assert value(text, "atlas_audit_queue_depth") == 2
        blocking.release.set()
        audit.flush()
        text = metrics.render().decode()
        assert value(text, "atlas_audit_records_written_total") == 2
        assert value(text, "atlas_audit_records_lost_total") == 0
        assert value(text, "atlas_audit_queue_depth") == 0
        assert audit.dropped == 1
    finally:
        blocking.release.set()
        audit.close()


def test_audit_write_failures_are_counted_as_lost(aws: None) -> None:
    metrics = AtlasMetrics()
    reg = Registry(build_models("no-such-realm-"), metrics=metrics.store)  # no tables
    audit = AuditLog(reg, metrics=metrics.audit)
    try:
        _record(audit, 1)
        audit.flush()
        text = metrics.render().decode()
        assert value(text, "atlas_audit_records_lost_total") == 1
        assert value(text, "atlas_audit_records_written_total") == 0
        assert value(text, "atlas_audit_queue_depth") == 0
        assert value(text, "atlas_dynamodb_errors_total",
                     action="writing the audit trail", error="table_not_found") == 1  # fmt: skip
        assert audit.failed == 1
    finally:
        audit.close()


# ---------------------------------------------------------------------------------- mirror


class FakeResult:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get(self, timeout: float | None = None) -> Any:
        raise self.exc


class FakeClient:
    """A kazoo client that never gets a session (and whose calls lose the connection)."""

    def __init__(self) -> None:
        self.state = KazooState.LOST
        self.listeners: list[Any] = []

    def add_listener(self, fn: Any) -> None:
        self.listeners.append(fn)

    def remove_listener(self, fn: Any) -> None:
        self.listeners.remove(fn)

    def start_async(self) -> None:
        pass

    def ensure_path_async(self, path: str) -> FakeResult:
        return FakeResult(ConnectionLoss())

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_mirror_reports_counters_state_zk_errors_and_swallowed_errors() -> None:
    now = [100.0]
    metrics = AtlasMetrics()
    client = FakeClient()
    m = ZkMirror("zk:2181", "prod", client_factory=lambda h, t: client, clock=lambda: now[0],  # type: ignore[arg-type,return-value]
                 recreate_after=1e9, metrics=metrics.mirror)  # fmt: skip
    text = metrics.render().decode()
    assert value(text, "atlas_mirror_connected") is None  # nothing before start
    m.start(background=False)
    try:
        m.put_service(svc(name="api"))
        m.run_once()
        now[0] += 7
        m.run_once()
        text = metrics.render().decode()
        assert value(text, "atlas_mirror_sync_failures_total") == 1
        assert value(text, "atlas_mirror_dirty_services") == 1
        assert value(text, "atlas_mirror_lag_seconds") == 7
        assert value(text, "atlas_mirror_connected") == 0
        assert value(text, "atlas_reconcile_leader") == 0

        def listener() -> None:
            raise RuntimeError("a listener bug")

        m.add_connect_listener(listener)
        m.set_leader(True)
        m.run_once()
        client.state = KazooState.CONNECTED
        client.listeners[0](KazooState.CONNECTED)
        m.run_once()
        text = metrics.render().decode()
        # The roots could not be made (the connection was lost again): counted, not raised.
        assert value(text, "atlas_zk_errors_total", op="ensure_roots", error="ConnectionLoss") == 1
        assert value(text, "atlas_zk_request_duration_seconds_count", op="ensure_roots") == 1
        assert value(text, "atlas_swallowed_errors_total", where="mirror_connect_listener") == 1
        assert value(text, "atlas_mirror_connected") == 1
        assert value(text, "atlas_reconcile_leader") == 1
        assert value(text, "atlas_mirror_dirty_services") == 1  # still dirty: no sync yet
        result = promtool(text)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        m.stop()


def test_reconcile_metrics() -> None:
    metrics = AtlasMetrics()
    metrics.mirror.reconciled(1.5, {"missing": 2, "stale": 0, "extra": 1}, 3)
    metrics.mirror.reconcile_failed("error")
    text = metrics.render().decode()
    assert value(text, "atlas_reconcile_runs_total", outcome="ok") == 1
    assert value(text, "atlas_reconcile_runs_total", outcome="error") == 1
    assert value(text, "atlas_reconcile_runs_total", outcome="crash") == 0
    assert value(text, "atlas_reconcile_drift_found_total", kind="missing") == 2
    assert value(text, "atlas_reconcile_drift_found_total", kind="extra") == 1
    assert value(text, "atlas_reconcile_drift_fixed_total") == 3
    assert value(text, "atlas_reconcile_duration_seconds_sum") == 1.5
    assert (value(text, "atlas_reconcile_last_success_timestamp_seconds") or 0) > 1e9


# ------------------------------------------------------------------- multiprocess directory


def test_prepare_empties_a_named_directory_or_makes_one(tmp_path: Any) -> None:
    named = tmp_path / "m"
    named.mkdir()
    (named / "counter_1.db").write_bytes(b"old")
    (named / "keep.txt").write_text("not ours")
    env = {multiproc.ENV: str(named)}
    where = multiproc.prepare(env)
    assert where.path == named and not where.owned
    assert sorted(p.name for p in named.iterdir()) == ["keep.txt"]
    multiproc.cleanup(where)
    assert named.is_dir()  # not ours to remove

    env = {}
    made = multiproc.prepare(env)
    assert made.owned and made.path.is_dir() and env[multiproc.ENV] == str(made.path)
    multiproc.cleanup(made)
    assert not made.path.exists()


def test_mark_dead_removes_only_live_gauges_of_that_pid(tmp_path: Any) -> None:
    where = multiproc.MetricsDir(tmp_path, owned=False)
    for name in ("gauge_liveall_7.db", "gauge_livesum_7.db", "gauge_max_7.db", "counter_7.db",
                 "histogram_7.db", "gauge_liveall_8.db"):  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    multiproc.mark_dead(7, where)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["counter_7.db", "gauge_liveall_8.db", "gauge_max_7.db", "histogram_7.db"]


def test_in_process_mode_without_a_directory() -> None:
    assert multiproc.ENV not in os.environ  # the test session runs in-process
    assert AtlasMetrics().multiprocess is False


# --------------------------------------------------------------------------------- sidecar

FAKE_STATUS: dict[str, Any] = {
    "realm": "prod",
    "reloads": 4,
    "runtime_updates": 17,
    "passes": 9,
    "haproxy_restarts": 1,
    "check_failures": 2,
    "failures": {"check": 2, "reload": 1, "Weird Kind!": 5},
    "failing": {"check": {"message": "haproxy -c: bad server line", "since": "x", "count": 2}},
    "stale": True,
    "stale_reasons": ["service web: config refused by haproxy -c"],
    "in_sync": False,
    "zk_connected": True,
    "reload_required": ["new service api"],
    "services": 12,
    "instances": 40,
    "applied_index": 4242,
    "lagging": {"web": {"applied_index": 4000, "reason": "refused", "since": None}},
    "pool": {"size": 8, "free": 5, "used": 3, "refills": 2},
    "last_apply": 1_790_000_000.5,
    "last_error": "secret-looking message that must not be a label",
}


def test_sidecar_exposition_of_a_status_dict() -> None:
    text = render_sidecar(FAKE_STATUS, failure_kinds=("check", "config_write")).decode()
    assert value(text, "atlas_sidecar_reloads_total") == 4
    assert value(text, "atlas_sidecar_runtime_updates_total") == 17
    assert value(text, "atlas_sidecar_failures_total", kind="check") == 2
    assert value(text, "atlas_sidecar_failures_total", kind="reload") == 1
    assert value(text, "atlas_sidecar_failures_total", kind="config_write") == 0
    assert value(text, "atlas_sidecar_failures_total", kind="other") == 5
    assert value(text, "atlas_sidecar_failing", kind="check") == 1
    assert value(text, "atlas_sidecar_failing", kind="reload") == 0
    assert value(text, "atlas_sidecar_stale") == 1
    assert value(text, "atlas_sidecar_reload_required") == 1
    assert value(text, "atlas_sidecar_lagging_services") == 1
    assert value(text, "atlas_sidecar_spare_backends", state="free") == 5
    assert value(text, "atlas_sidecar_applied_index") == 4242
    assert value(text, "atlas_sidecar_last_apply_timestamp_seconds") == 1_790_000_000.5
    assert "web" not in text and "secret-looking" not in text
    result = promtool(text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sidecar_exposition_of_a_sparse_status() -> None:
    text = render_sidecar({"realm": "prod", "stale": True, "pool": None}).decode()
    assert value(text, "atlas_sidecar_reloads_total") == 0
    assert value(text, "atlas_sidecar_stale") == 1
    assert value(text, "atlas_sidecar_spare_backends", state="used") == 0
    assert value(text, "atlas_sidecar_last_apply_timestamp_seconds") is None
    result = promtool(text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_info_names_version_and_realm(app: Flask, client: Client) -> None:
    from atlas import __version__

    text = scrape(client)
    assert value(text, "atlas_build_info", version=__version__, realm="unit") == 1
