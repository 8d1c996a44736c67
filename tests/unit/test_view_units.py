"""The view's pure parts and the read paths without ZooKeeper: payload decoding, write notes,
freshness parameters, the token cache's generations, the config document cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from atlas.api.config_resources import DocumentCache
from atlas.mirror.payloads import instance_payload, service_payload
from atlas.registry import HealthCheck, Instance, Registry, Service
from atlas.registry.config import ConfigDocument, SealedEntry
from atlas.registry.models import Models
from atlas.registry.tokens import TokenStore
from atlas.view import IndexedMirror, ServiceEntry
from atlas.view import index as write_index
from atlas.view.decode import decode_instance, decode_number, decode_service
from tests.unit.conftest import Client

T = "2026-01-01T00:00:00.000Z"


def svc(**kw: Any) -> Service:
    base: dict[str, Any] = dict(name="api", description="d", owner="o", port=80,
                                health_check=HealthCheck("/h", 5, 1), tags=("a",), version=3,
                                created_at=T, updated_at=T, config_version=4)  # fmt: skip
    base.update(kw)
    return Service(**base)


def inst(**kw: Any) -> Instance:
    base: dict[str, Any] = dict(service="api", host="10.0.0.1", port=80, enabled=True,
                                weight=100, zone=None, labels={}, disabled_reason=None,
                                version=1, created_at=T, updated_at=T)  # fmt: skip
    base.update(kw)
    return Instance(**base)


def test_znode_payloads_decode_to_the_records_the_api_returns() -> None:
    # every field the API returns, the guard-rail fields too, survives the round trip
    for s in (svc(), svc(health_check=None, port=None, tags=()), svc(min_enabled=2)):
        assert decode_service(service_payload(s, 2), 4) == (s, 2)
    for i in (inst(), inst(enabled=False, disabled_reason="x", zone="z", labels={"k": "v"}),
              inst(host="2001:db8::1"), inst(drain=True, slow_start_s=30),
              inst(enabled=False, disabled_until="2026-01-02T00:00:00.000Z")):  # fmt: skip
        assert decode_instance("api", instance_payload(i)) == i
    assert decode_number(b'{"version": 7}', "version") == 7
    assert decode_number(b'{"version": "7"}', "version") is None


def test_a_payload_that_lacks_an_api_field_decodes_to_none() -> None:
    body = json.loads(service_payload(svc(), 1))
    del body["owner"]  # a node written by an older Atlas
    assert decode_service(json.dumps(body).encode(), 0) is None
    node = json.loads(instance_payload(inst()))
    del node["created_at"]
    assert decode_instance("api", json.dumps(node).encode()) is None
    assert decode_instance("other", instance_payload(inst())) is None  # another service's
    assert decode_service(b"not json", 0) is None and decode_instance("api", None) is None


class Inner:
    """A mirror that answers what it is told to."""

    def __init__(self, zxid: int | None) -> None:
        self.zxid = zxid

    def put_service(self, service: Service) -> int | None:
        return self.zxid

    def delete_service(self, name: str) -> int | None:
        return self.zxid

    def prepare_instance(self, service: str, instance_id: str) -> Any:
        return None

    def instance_changed(self, service: str, iid: str, record: Any, prepared: Any) -> int | None:
        return self.zxid

    def status(self) -> dict[str, Any]:
        return {}


class Listener:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.unpublished: list[tuple[str, Any]] = []

    def note_write(self, zxid: int) -> None:
        self.acked.append(zxid)

    def note_unpublished(self, service: str, shows: Any) -> None:
        self.unpublished.append((service, shows))


def entry(
    instances: tuple[Instance, ...] = (), service: Service | None = None, stamp: int = 4
) -> ServiceEntry:
    return ServiceEntry("api", service or svc(), instances, True, 1, 1, stamp, 1,
                        by_id={i.id: i for i in instances})  # fmt: skip


def test_writes_note_their_zxid_and_unpublished_writes_say_when_the_view_shows_them() -> None:
    listener = Listener()
    note = write_index.begin()
    try:
        IndexedMirror(Inner(41), listener).put_service(svc())  # type: ignore[arg-type]
        IndexedMirror(Inner(40), listener).delete_service("api")  # type: ignore[arg-type]
        assert note.zxid == 41 and not note.pending and listener.acked == [41, 40]
        mirror = IndexedMirror(Inner(None), listener)  # type: ignore[arg-type]
        record = inst(version=5)
        mirror.instance_changed("api", record.id, record, None)
        mirror.put_service(svc(version=3, config_version=4))
        mirror.delete_service("gone")
    finally:
        write_index.end()
    assert note.pending and write_index.current() is None
    (s1, shows_inst), (s2, shows_svc), (s3, shows_gone) = listener.unpublished
    assert s1 == s2 == "api" and s3 == "gone"
    assert not shows_inst(entry((inst(version=4),))) and shows_inst(entry((inst(version=5),)))
    assert not shows_inst(None)
    assert not shows_svc(entry(service=svc(version=2))) and shows_svc(entry())
    assert not shows_svc(entry(stamp=3))  # the config stamp is not there yet
    assert shows_gone(None) and not shows_gone(entry())


def test_freshness_parameters_are_validated(client: Client) -> None:
    client.post("/v1/services", json={"name": "web"})
    for query, field in (("consistent=maybe", "consistent"), ("min_index=-1", "min_index"),
                         ("min_index=x", "min_index"), ("index=1&wait=soon", "wait"),
                         ("index=99999999999999999999", "index")):  # fmt: skip
        r = client.get(f"/v1/services/web/instances?{query}")
        assert r.status_code == 422 and field in r.json["errors"], query
    # index/wait are no parameters of a single read: its own rules apply (as before).
    assert client.get("/v1/services/web?consistent=true").status_code == 200
    ok = client.get("/v1/services/web/instances?index=5&wait=1s&limit=2")
    assert ok.status_code == 200


def test_without_zookeeper_reads_come_from_the_store_and_writes_say_so(client: Client) -> None:
    r = client.post("/v1/services", json={"name": "web"})
    assert r.status_code == 201 and "X-Atlas-Index" not in r.headers
    assert r.headers["X-Atlas-Index-Pending"] == "true"  # nothing mirrored it
    for path in ("/v1/services", "/v1/services/web", "/v1/services/web/instances",
                 "/v1/hosts/10.0.0.1", "/v1/services/web/config"):  # fmt: skip
        got = client.get(path)
        assert got.status_code == 200 and got.headers["X-Atlas-Source"] == "store", path
    blocking = client.get("/v1/services/web/instances?index=7&wait=10ms")
    assert blocking.headers["X-Atlas-Source"] == "store"
    assert blocking.headers["X-Atlas-Index"] == "7"  # the caller's index: poll again
    info = client.get("/v1/info").json["view"]
    assert info["enabled"] is False and info["reads"]["store_fallbacks.no_view"] >= 5


class Gen:
    def __init__(self) -> None:
        self.value: Any = (1, 10)

    def __call__(self) -> Any:
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_lookups_are_dropped_when_the_revocation_stamp_moves(models: Models) -> None:
    registry = Registry(models)
    registry.create_service({"name": "api"})
    gen, clock = Gen(), Clock()
    bumps: list[int] = []
    tokens = TokenStore(registry, cache_s=300, clock=clock, generation=gen, unwatched_s=1.0,
                        on_revoke=lambda: bumps.append(1) or 99)  # fmt: skip
    record, token = tokens.issue("api")
    assert tokens.lookup(token) == record
    for m in models.Token.by_service.query("api", models.Token.id == record.id):
        m.delete()  # revoked by another process, which bumps the stamp
    clock.now += 200
    assert tokens.lookup(token) == record  # the stamp has not moved: still cached
    gen.value = (1, 11)
    assert tokens.lookup(token) is None and tokens.counters["dropped"] >= 1
    record2, token2 = tokens.issue("api")
    assert tokens.lookup(token2) == record2
    gen.value = None  # ZooKeeper unreachable: a short TTL instead
    assert tokens.lookup(token2) == record2
    for m in models.Token.by_service.query("api", models.Token.id == record2.id):
        m.delete()
    clock.now += 1.5
    assert tokens.lookup(token2) is None
    _, token3 = tokens.issue("api")
    assert tokens.revoke("api", tokens.lookup(token3).id) == 99 and bumps == [1]  # type: ignore[union-attr]


@pytest.fixture
def models(aws: None) -> Models:
    from atlas.config import Settings
    from atlas.migrate import Migrator
    from atlas.registry import build_models_for

    s = Settings(realm="unitview", admin_tokens=("x" * 16,))
    Migrator(s).run()
    return build_models_for(s)


def test_the_config_document_cache_holds_ciphertexts_and_yields_to_a_newer_stamp() -> None:
    cache = DocumentCache()
    doc = ConfigDocument("api", 3, (SealedEntry("A", 1, False, '"x"', None),
                                    SealedEntry("S", 2, True, None, '{"sealed":"..."}')))  # fmt: skip
    assert doc.secrets == ["S"]
    cache.put(doc)
    assert cache.get("api", 3) is doc and cache.get("api", 2) is doc
    cache.put(ConfigDocument("api", 2, ()))  # an older read loses
    assert cache.get("api", 3) is doc
    assert cache.get("api", 4) is None and cache.get("api", 3) is None  # a newer stamp drops it
