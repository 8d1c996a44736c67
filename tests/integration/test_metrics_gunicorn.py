"""/metrics of a real gunicorn Atlas (2 workers, real ZooKeeper, moto over HTTP).

- one scrape, answered by either worker, counts the requests both workers served (read back
  from each worker's own files too), and `promtool check metrics` passes on it after traffic;
- the mirror, reconcile, DynamoDB, ZooKeeper and audit metrics say what happened;
- a worker that exits takes its live gauges with it but leaves its counts; a restart of the
  server starts from an empty metrics directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from atlas.stack import AtlasServer, MotoServer
from tests.helpers import ADMIN_TOKEN, ApiClient, wait_until
from tests.integration.conftest import atlas_env, migrate

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ONE_SERVICE = "/v1/services/<string:name>"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(server: AtlasServer) -> str:
    resp = requests.get(f"{server.url}/metrics", timeout=10)
    assert resp.status_code == 200
    return resp.text


def value(text: str, name: str, **labels: str) -> float | None:
    return parse(text).get((name, frozenset(labels.items())))


def by_pid(text: str, name: str) -> dict[str, float]:
    """A per-process gauge's values by worker pid."""
    return {dict(labels)["pid"]: v for (n, labels), v in parse(text).items() if n == name}


def per_worker_requests(server: AtlasServer, route: str) -> dict[str, float]:
    """GET <route> 200 as each worker's own counter file has it, by pid."""
    out: dict[str, float] = {}
    for path in sorted(server.metrics_dir.glob("counter_*.db")):
        pid = path.stem.split("_")[1]
        for metric in MultiProcessCollector.merge([str(path)]):
            for s in metric.samples:
                if s.name == "atlas_http_requests_total" and s.labels == {
                    "method": "GET", "route": route, "status": "200",
                }:  # fmt: skip
                    out[pid] = out.get(pid, 0.0) + s.value
    return out


def serve_from_both_workers(server: AtlasServer, service: str) -> int:
    """GET one service over fresh connections until each worker has answered some; the count."""
    sent = 0

    def one(_: int) -> int:
        r = requests.get(f"{server.url}/v1/services/{service}", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        return 1

    with ThreadPoolExecutor(8) as pool:
        for _ in range(100):
            sent += sum(pool.map(one, range(16)))
            counts = per_worker_requests(server, ONE_SERVICE)
            if len([c for c in counts.values() if c > 0]) >= 2:
                return sent
    raise AssertionError(f"one worker answered all {sent} requests: {counts}")


def promtool_check(text: str) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def atlas_2w(start_atlas: Callable[..., AtlasServer], zk_hosts: str, realm: str) -> AtlasServer:
    server = start_atlas(realm, workers=2, ATLAS_ZK_HOSTS=zk_hosts)
    wait_until(
        lambda: sorted(by_pid(scrape(server), "atlas_mirror_connected").values()) == [1, 1],
        timeout=60,
        what="both workers' mirrors connected",
    )
    return server


def test_one_scrape_counts_both_workers_and_passes_promtool(atlas_2w: AtlasServer) -> None:
    server = atlas_2w
    api = ApiClient(server.url)
    name = f"m{uuid.uuid4().hex[:8]}"
    assert api.post("/v1/services", json={"name": name}).status_code == 201
    assert api.post("/v1/services", json={"name": name}).status_code == 409
    for i in range(3):
        assert api.put(f"/v1/services/{name}/instances/10.0.0.{i}:80", json={}).status_code == 201
    assert api.patch(f"/v1/services/{name}/instances/10.0.0.1:80",
                     json={"enabled": False, "disabled_reason": "test"}).status_code == 200  # fmt: skip
    assert api.delete(f"/v1/services/{name}/instances/10.0.0.2:80").status_code == 204
    assert api.get(f"/v1/services/{name}/instances").status_code == 200
    assert api.request("BREW", "/v1/services").status_code == 405
    assert requests.get(f"{server.url}/{uuid.uuid4().hex}", timeout=10).status_code == 404

    sent = serve_from_both_workers(server, name)
    workers = per_worker_requests(server, ONE_SERVICE)
    text = scrape(server)
    total = value(text, "atlas_http_requests_total", method="GET", route=ONE_SERVICE, status="200")
    assert total == sent == sum(workers.values())
    assert len(workers) == 2 and all(v > 0 for v in workers.values())
    assert value(text, "atlas_http_requests_total", method="other", route="unmatched",
                 status="405") == 1  # fmt: skip
    assert value(text, "atlas_http_request_duration_seconds_count", method="GET",
                 route=ONE_SERVICE) == sent  # fmt: skip

    def settled() -> str | None:
        t = scrape(server)
        ok = (
            (value(t, "atlas_reconcile_runs_total", outcome="ok") or 0) >= 1
            and sum(by_pid(t, "atlas_reconcile_leader").values()) == 1
            and value(t, "atlas_audit_queue_depth") == 0
            and (value(t, "atlas_audit_records_written_total") or 0) >= 7
            and value(t, "atlas_mirror_dirty_services") == 0
            and value(t, "atlas_mirror_lag_seconds") == 0
        )
        return t if ok else None

    text = wait_until(settled, timeout=60, what="reconciled, audit written, mirror caught up")
    assert value(text, "atlas_audit_records_lost_total") == 0
    assert value(text, "atlas_audit_records_dropped_total") == 0
    assert value(text, "atlas_dynamodb_errors_total", action="creating the service",
                 error="condition_failed") == 1  # fmt: skip
    assert (value(text, "atlas_dynamodb_request_duration_seconds_count",
                  action="attaching the instance") or 0) == 3  # fmt: skip
    assert (value(text, "atlas_zk_request_duration_seconds_count", op="prepare") or 0) >= 4
    assert (value(text, "atlas_mirror_syncs_total") or 0) >= 5
    assert not [k for k in parse(text) if k[0] == "atlas_zk_errors_total"]
    assert not [k for k in parse(text) if k[0] == "atlas_swallowed_errors_total"]
    assert name not in text  # no service name from a path in any label
    promtool_check(text)


def test_a_dead_worker_leaves_its_counts_and_a_restart_starts_empty(
    atlas_2w: AtlasServer,
) -> None:
    server = atlas_2w
    name = f"m{uuid.uuid4().hex[:8]}"
    assert ApiClient(server.url).post("/v1/services", json={"name": name}).status_code == 201
    sent = serve_from_both_workers(server, name)
    pids = by_pid(scrape(server), "atlas_mirror_connected")
    victim = sorted(pids)[0]
    os.kill(int(victim), signal.SIGTERM)  # gunicorn starts a new worker in its place

    def replaced() -> str | None:
        t = scrape(server)
        now = by_pid(t, "atlas_mirror_connected")
        return t if victim not in now and sorted(now.values()) == [1, 1] else None

    text = wait_until(replaced, timeout=60, what="the worker replaced, its live gauges gone")
    assert value(text, "atlas_http_requests_total", method="GET", route=ONE_SERVICE,
                 status="200") == sent  # fmt: skip
    files = {p.name for p in server.metrics_dir.iterdir()}
    assert f"counter_{victim}.db" in files and f"gauge_liveall_{victim}.db" not in files
    promtool_check(text)

    server.stop()
    server.start()
    assert not any(Path(server.metrics_dir).glob(f"*_{victim}.db"))
    text = scrape(server)
    assert value(text, "atlas_http_requests_total", method="GET", route=ONE_SERVICE,
                 status="200") is None  # fmt: skip


def test_preloaded_master_shows_no_worker_state(
    moto_server: MotoServer, zk_hosts: str, realm: str, tmp_path: Path
) -> None:
    # With --preload the app (and its metrics) is built in the master before the fork: the
    # per-process gauges must name the workers only, never the master as a disconnected one.
    env = atlas_env(moto_server, realm, ATLAS_ZK_HOSTS=zk_hosts)
    migrate(env)
    server = AtlasServer(tmp_path / "atlas", env, workers=2, preload=True)
    server.start()
    try:
        connected = wait_until(
            lambda: (
                (c := by_pid(scrape(server), "atlas_mirror_connected"))
                and sorted(c.values()) == [1, 1]
                and c
            ),
            timeout=60,
            what="both workers connected",
        )
        assert str(server.process.pid) not in connected
        assert str(server.process.pid) not in by_pid(scrape(server), "atlas_reconcile_leader")
    finally:
        server.stop()
