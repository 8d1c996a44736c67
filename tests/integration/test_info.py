"""/v1/info under 2 gunicorn workers: the realm's part is the same whichever worker answers,
and each worker labels its own view (pid, leads or not, its mirror counters)."""

from __future__ import annotations

from typing import Any

import requests

from atlas.stack import ZooKeeperServer
from tests.helpers import ADMIN_TOKEN, wait_until
from tests.integration.conftest import StartAtlas

N = 60


def info(url: str) -> dict[str, Any]:
    """/v1/info on a new connection each time (so any worker may answer)."""
    r = requests.get(
        f"{url}/v1/info",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Connection": "close"},
        timeout=30,
    )
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def test_the_realm_part_is_the_same_whichever_worker_answers(
    zk_server: ZooKeeperServer, zk_hosts: str, start_atlas: StartAtlas, realm: str
) -> None:
    atlas = start_atlas(
        realm, workers=2, ATLAS_ZK_HOSTS=zk_hosts, ATLAS_RECONCILE_INTERVAL_S="3600"
    )
    assert requests.post(
        f"{atlas.url}/v1/services", json={"name": "seen"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30,
    ).status_code == 201  # fmt: skip
    # Both workers up and contending, and the leader's first reconcile published.
    pids: set[int] = set()

    def settled() -> bool:
        body = info(atlas.url)
        pids.add(body["process"]["pid"])
        view = body["reconciler"]
        return len(pids) == 2 and len(view["contenders"]) == 2 and bool(view["last_reconcile"])

    wait_until(settled, timeout=120, what="two workers and a published reconcile")

    bodies = [info(atlas.url) for _ in range(N)]
    realm_parts = [b["reconciler"] for b in bodies]
    assert all(part == realm_parts[0] for part in realm_parts), realm_parts
    view = realm_parts[0]
    assert view["known"] is True
    last = view["last_reconcile"]
    assert set(last) >= {"at", "duration_s", "services", "drift_found", "drift_fixed"}
    assert last["services"] >= 1 and last["reconciles"] >= 1
    assert all(isinstance(v, int) for v in last["drift_found"].values())

    # Each process says who it is; exactly one of them leads, and it is the realm's leader.
    by_pid = {b["process"]["pid"]: b for b in bodies}
    leaders = [pid for pid, b in by_pid.items() if b["process"]["leads"]]
    assert len(leaders) <= 1
    for pid, b in by_pid.items():
        assert b["process"]["id"].endswith(f":{pid}")
        assert b["process"]["leads"] is (b["process"]["id"] == view["leader"])
        assert b["mirror"]["leader"] is b["process"]["leads"]  # the process's own mirror view
    assert view["leader"] in view["contenders"]
    assert view["leader"].rsplit(":", 1)[1] in {str(p) for p in pids}


def test_without_zookeeper_the_realm_part_says_it_is_unknown(
    start_atlas: StartAtlas, realm: str
) -> None:
    atlas = start_atlas(realm, workers=1)
    body = info(atlas.url)
    assert body["reconciler"] == {"known": False, "reason": "no ZooKeeper mirror configured"}
    assert body["process"]["leads"] is False
