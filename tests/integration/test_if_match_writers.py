"""Four writers doing read-modify-write with If-Match on one resource, through real gunicorn on
the session's moto server: every acknowledged write is reflected, and no version is won twice.

Each writer reads a counter and its version, writes counter+1 with If-Match: <version>, and
retries on 412 until it has its share of acknowledged writes. If two writers could both win
the same version (a non-atomic conditional write), one of their increments would be lost.
Run with ATLAS_TEST_MOTO_MODE=stock to see it fail on stock moto.server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from atlas.config import Settings
from atlas.registry import build_models_for
from atlas.stack import MotoServer
from tests.helpers import ApiClient
from tests.integration.conftest import StartAtlas

WRITERS = 4
ACKS_PER_WRITER = 24  # 96 acknowledged writes per resource
NEIGHBOURS, NEIGHBOUR_INSTANCES = 40, 10
MAX_ATTEMPTS = 2000  # per writer: far more than contention needs, so a hang cannot happen


@dataclass
class Resource:
    """How to read a resource's counter and version, and write counter+1 with If-Match."""

    url: str
    read: Callable[[dict[str, Any]], int]
    write: Callable[[ApiClient, str, int, int], requests.Response]


def _labels(n: int) -> dict[str, Any]:
    return {"labels": {"n": str(n)}}


RESOURCES: dict[str, Resource] = {
    "instance PATCH": Resource(
        "/v1/services/hot/instances/10.0.0.1:80",
        lambda body: int(body["labels"]["n"]),
        lambda api, url, v, n: api.patch(url, json=_labels(n), headers={"If-Match": f'"{v}"'}),
    ),
    "instance PUT": Resource(
        "/v1/services/hot/instances/10.0.0.1:80",
        lambda body: int(body["labels"]["n"]),
        lambda api, url, v, n: api.put(url, json=_labels(n), headers={"If-Match": f'"{v}"'}),
    ),
    "service PATCH": Resource(
        "/v1/services/hot",
        lambda body: int(body["description"]),
        lambda api, url, v, n: api.patch(
            url, json={"description": str(n)}, headers={"If-Match": f'"{v}"'}
        ),
    ),
    "config PUT": Resource(
        "/v1/services/hot/config/counter",
        lambda body: int(body["value"]["n"]),
        lambda api, url, v, n: api.put(
            url, json={"value": {"n": n}}, headers={"If-Match": f'"{v}"'}
        ),
    ),
}


@dataclass
class Tally:
    """What the writers saw (appended from several threads: list.append is atomic)."""

    acked: list[tuple[int, int]] = field(default_factory=list)  # (version won, value written)
    unknown: list[int] = field(default_factory=list)  # 5xx: the write may or may not have landed
    errors: list[str] = field(default_factory=list)


def _writer(api: ApiClient, res: Resource, tally: Tally) -> None:
    mine = 0
    for _ in range(MAX_ATTEMPTS):
        if mine == ACKS_PER_WRITER:
            return
        try:
            got = api.get(res.url)
            if got.status_code != 200:
                tally.errors.append(f"GET {got.status_code}")
                continue
            version = int(got.json()["version"])
            value = res.read(got.json()) + 1
            resp = res.write(api, res.url, version, value)
        except requests.RequestException as exc:
            tally.unknown.append(-1)
            tally.errors.append(repr(exc))
            continue
        if resp.status_code in (200, 201):
            won = int(resp.json()["version"])
            if won != version + 1:
                tally.errors.append(f"If-Match {version} answered with version {won}")
            tally.acked.append((won, value))
            mine += 1
        elif resp.status_code == 412:
            continue  # another writer won this version: read again
        elif resp.status_code >= 500:
            tally.unknown.append(value)
        else:
            tally.errors.append(f"{resp.status_code} {resp.text[:200]}")
            return
    tally.errors.append("writer gave up")


def _load_neighbours(moto: MotoServer, realm: str) -> None:
    """Give the realm the size of a real one: other services, each with instances and config."""
    settings = Settings(realm=realm, dynamodb_endpoint=moto.url, admin_tokens=("x" * 16,))
    models = build_models_for(settings)
    now = "2026-01-01T00:00:00.000Z"
    with models.Service.batch_write() as batch:
        for s in range(NEIGHBOURS):
            batch.save(models.Service(f"svc-{s:03d}", created_at=now, updated_at=now, version=1))
    with models.Instance.batch_write() as batch:
        for s in range(NEIGHBOURS):
            for i in range(NEIGHBOUR_INSTANCES):
                host = f"10.1.{s}.{i}"
                batch.save(
                    models.Instance(
                        f"svc-{s:03d}", f"{host}:80", host=host, port=80, created_at=now,
                        updated_at=now, version=1,
                    )
                )  # fmt: skip


def test_four_if_match_writers_per_resource_lose_nothing(
    start_atlas: StartAtlas, moto_server: MotoServer, realm: str
) -> None:
    """All four resources of one service at once, four writers each (as in a rolling deploy
    beside an operator's edits): transactions that lose a race run beside the winners."""
    server = start_atlas(realm, workers=2, threads=8)
    _load_neighbours(moto_server, realm)
    api = ApiClient(server.url)
    assert api.post("/v1/services", json={"name": "hot", "description": "0"}).status_code == 201
    assert api.put("/v1/services/hot/instances/10.0.0.1:80", json=_labels(0)).status_code == 201
    assert api.put("/v1/services/hot/config/counter", json={"value": {"n": 0}}).status_code == 201
    starts = {name: api.get(res.url).json() for name, res in RESOURCES.items()}
    # The two instance writes share one counter (and version): one tally each, one check.
    tallies = {name: Tally() for name in RESOURCES}
    threads = [
        threading.Thread(target=_writer, args=(ApiClient(server.url), res, tallies[name]))
        for name, res in RESOURCES.items()
        for _ in range(WRITERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, tally in tallies.items():
        assert not tally.errors, (name, tally.errors[:5])
        acked = len(tally.acked)
        assert acked == WRITERS * ACKS_PER_WRITER, name
    checks = {
        "instance": ["instance PATCH", "instance PUT"],
        "service": ["service PATCH"],
        "config": ["config PUT"],
    }
    for what, names in checks.items():
        res = RESOURCES[names[0]]
        acked_all = [a for n in names for a in tallies[n].acked]
        unknown = sum(len(tallies[n].unknown) for n in names)
        won = [v for v, _ in acked_all]
        twice = sorted({v for v in won if won.count(v) > 1})
        assert not twice, f"{what}: versions won by two writers: {twice}"
        start, final = starts[names[0]], api.get(res.url).json()
        # Every acknowledged write is reflected: the counter went up once per ack (and at most
        # once more per 5xx, a write that may have landed unanswered), the version with it.
        increments = res.read(final) - res.read(start)
        assert increments >= len(acked_all), (
            f"{what}: {len(acked_all) - increments} of {len(acked_all)} acknowledged writes lost"
        )
        assert increments <= len(acked_all) + unknown, what
        assert int(final["version"]) - int(start["version"]) == increments, what
