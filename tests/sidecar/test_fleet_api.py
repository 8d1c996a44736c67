"""The fleet's view on real parts: gunicorn Atlas (moto server, ZooKeeper) and three real
`atlas-sidecar` processes with their HAProxy. `GET /v1/sidecars` lists them; after a PATCH,
`GET /v1/services/{name}/convergence` shows all three converged; a stopped sidecar (SIGSTOP)
is listed as lagging, with how long, until it runs again; a killed one disappears once its
session expires. Conditions are waited for, never timed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner, Result
from kazoo.client import KazooClient

from atlas.admin.cli import admin
from atlas.contract import Layout, SidecarReport
from atlas.fleet import ZkFleet, ZooKeeperUnavailable
from atlas.stack import AtlasServer, MotoServer
from tests.helpers import ADMIN_TOKEN, ApiClient, wait_until
from tests.integration.conftest import atlas_env, migrate
from tests.sidecar.conftest import Backend, SidecarProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def atlas(
    moto_server: MotoServer, zk_hosts: str, realm: str, tmp_path: Path
) -> Iterator[AtlasServer]:
    """One gunicorn Atlas of this test's realm, on this test's ZooKeeper chroot."""
    env = atlas_env(moto_server, realm, ATLAS_ZK_HOSTS=zk_hosts)
    migrate(env)
    server = AtlasServer(tmp_path / "atlas", env, workers=1, threads=4)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for state dirs (UNIX socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def zk(zk_hosts: str) -> Iterator[KazooClient]:
    client = KazooClient(hosts=zk_hosts)
    client.start(timeout=15)
    yield client
    client.stop()
    client.close()


def test_zk_fleet_reads_reports_and_service_stats_without_leaving_watches(
    zk: KazooClient, realm: str, zk_hosts: str
) -> None:
    layout = Layout(realm)
    report = SidecarReport(host_id="b:1", realm=realm, applied_index=7, reloads=2)
    zk.create(layout.sidecar("b:1"), report.to_json(), ephemeral=True, makepath=True)
    zk.create(layout.sidecar("a:1"), b"not json", ephemeral=True)
    zk.create(layout.service("web"), b"{}", makepath=True)
    zk.create(layout.instance("web", "10.0.0.1:80"), b"{}")
    last = zk.set(layout.instance("web", "10.0.0.1:80"), b'{"x":1}')
    fleet = ZkFleet(lambda: zk, realm)

    assert fleet.host_ids() == ["a:1", "b:1"]
    nodes = fleet.sidecars()
    assert [n.host_id for n in nodes] == ["a:1", "b:1"]
    assert nodes[0].report is None and nodes[0].problem
    assert nodes[1].report is not None and nodes[1].report.reloads == 2
    assert nodes[1].node.session == zk.client_id[0]
    assert fleet.sidecars(["b:1", "gone:1"]) == [nodes[1]]  # a node gone meanwhile: omitted

    state = fleet.service_state("web")
    assert state is not None and state.index == last.mzxid and state.instances == 1
    assert fleet.service_state("nope") is None
    # Nothing was read with a watch.
    assert not zk._data_watchers and not zk._child_watchers

    zk.delete(layout.sidecar("a:1"))
    assert fleet.host_ids() == ["b:1"]
    with pytest.raises(ZooKeeperUnavailable, match="did not answer"):
        ZkFleet(lambda: zk, realm, timeout=0).sidecars()
    stopped = KazooClient(hosts=zk_hosts)  # never started
    with pytest.raises(ZooKeeperUnavailable):
        ZkFleet(lambda: stopped, realm).host_ids()


DOC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())


def conforms(body: Any, schema: str) -> None:
    """The body is what openapi.yaml's components/schemas/<schema> says."""
    jsonschema.validate(
        body,
        {"$ref": f"#/components/schemas/{schema}", "components": DOC["components"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def _sidecars(api: ApiClient) -> list[dict[str, Any]]:
    resp = api.get("/v1/sidecars")
    assert resp.status_code == 200, resp.text
    conforms(resp.json(), "SidecarPage")
    return list(resp.json()["items"])


def _convergence(api: ApiClient, name: str) -> dict[str, Any]:
    resp = api.get(f"/v1/services/{name}/convergence")
    assert resp.status_code == 200, resp.text
    conforms(resp.json(), "Convergence")
    return dict(resp.json())


def cli(atlas: AtlasServer, *argv: str) -> Result:
    """Run an `atlas` admin command against this Atlas."""
    return CliRunner().invoke(admin, [*argv, "--url", atlas.url, "--token", ADMIN_TOKEN])


def test_three_sidecars_converge_a_stopped_one_lags_a_killed_one_disappears(
    atlas: AtlasServer,
    short_dir: Path,  # before sidecar_process: torn down after it has stopped every HAProxy
    sidecar_process: Callable[..., SidecarProcess],
    backends: Callable[[str], Backend],
) -> None:
    api = ApiClient(atlas.url)
    b1, b2 = backends("b1"), backends("b2")
    assert api.post("/v1/services", json={"name": "web"}).status_code == 201
    for b in (b1, b2):
        assert api.put(f"/v1/services/web/instances/127.0.0.1:{b.port}", json={}).ok

    procs = []
    for i, session_timeout in enumerate(("10", "2", "30")):
        procs.append(
            sidecar_process(
                "--host-id", f"sc-{i}", "--spares", "2", "--stop-haproxy-on-exit",
                "--zk-session-timeout", session_timeout, state=short_dir / f"s{i}",
            ).start()
        )  # fmt: skip
    wait_until(lambda: len(_sidecars(api)) == 3, timeout=60, what="three sidecars listed")
    items = _sidecars(api)
    assert [i["host_id"] for i in items] == ["sc-0", "sc-1", "sc-2"]
    for item in items:
        assert item["valid"] is True
        assert item["zookeeper"]["session_age_s"] >= 0
        assert item["haproxy_version"]
    wait_until(lambda: _convergence(api, "web")["converged"], timeout=60, what="first convergence")

    # A PATCH: wait until every sidecar has applied it.
    patched = api.patch(f"/v1/services/web/instances/127.0.0.1:{b1.port}", json={"enabled": False})
    assert patched.ok, patched.text
    index = int(patched.headers["X-Atlas-Index"])

    def converged_past(n: int, total: int = 3) -> dict[str, Any] | None:
        body = _convergence(api, "web")
        ok = body["converged"] and body["index"] >= n and body["summary"]["total"] == total
        return body if ok else None

    body = wait_until(lambda: converged_past(index), timeout=60, what="PATCH converged")
    assert body["summary"] == {"total": 3, "converged": 3, "lagging": 0, "unreadable": 0}
    assert all(s["applied_index"] >= index for s in body["sidecars"])
    # The CLI's way of waiting for a write to reach every host.
    waited = cli(atlas, "convergence", "web", "--wait", "60", "--min-index", str(index), "--json")
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.output)["converged"] is True
    listed = cli(atlas, "sidecars")
    assert listed.exit_code == 0 and all(f"sc-{i}" in listed.output for i in range(3))

    # A stopped sidecar keeps its node (30 s session) but applies nothing: it lags.
    stopped = procs[2].proc.proc
    assert stopped is not None
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        patched = api.patch(
            f"/v1/services/web/instances/127.0.0.1:{b1.port}", json={"enabled": True}
        )
        index = int(patched.headers["X-Atlas-Index"])

        def lagging_one() -> dict[str, Any] | None:
            body = _convergence(api, "web")
            by_host = {s["host_id"]: s for s in body["sidecars"]}
            ok = (
                body["index"] >= index
                and by_host["sc-0"]["status"] == by_host["sc-1"]["status"] == "converged"
                and by_host["sc-2"]["status"] == "lagging"
            )
            return body if ok else None

        body = wait_until(lagging_one, timeout=60, what="sc-2 lagging, the others converged")
        assert body["converged"] is False and body["state"] == "lagging"
        assert body["summary"] == {"total": 3, "converged": 2, "lagging": 1, "unreadable": 0}
        lag = body["sidecars"][2]
        assert lag["applied_index"] < index
        assert lag["behind_s"] is not None and lag["behind_s"] >= 0
        assert lag["behind_since"] is not None
        assert "sc-2" in [i["host_id"] for i in _sidecars(api)]
        late = cli(atlas, "convergence", "web", "--wait", "0")
        assert late.exit_code == 3, late.output
        assert "sc-2" in late.output and "lagging" in late.output
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    wait_until(lambda: converged_past(index), timeout=60, what="sc-2 caught up")

    # A killed sidecar (2 s session) disappears once ZooKeeper expires its session.
    procs[1].crash()
    wait_until(
        lambda: [i["host_id"] for i in _sidecars(api)] == ["sc-0", "sc-2"],
        timeout=60,
        what="killed sidecar gone",
    )
    body = _convergence(api, "web")
    assert body["summary"]["total"] == 2 and body["converged"] is True
    for p in (procs[0], procs[2]):
        assert "Traceback" not in p.log_text(), p.log_text()[-3000:]
