"""Config API in-process (mock_aws DynamoDB + KMS): round trips, history, CAS, validation,
encryption at rest, tampering, tokens and the 401/403 matrix, audit, service deletion."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest
from flask import Flask

from atlas.app import create_app
from atlas.config import ConfigError, Settings
from atlas.errors import SecretUnreadable
from atlas.registry.crypto import DataKeyCache, LocalKeyProvider, Sealer, SecretContext
from tests.config.conftest import SECRET, raw_items
from tests.unit.conftest import Client

CFG = "/v1/services/web/config"


@pytest.fixture
def web(client: Client) -> Client:
    """An admin client, with services `web` and `api` registered."""
    assert client.post("/v1/services", json={"name": "web"}).status_code == 201
    assert client.post("/v1/services", json={"name": "api"}).status_code == 201
    return client


def issue(client: Client, service: str) -> str:
    resp = client.post(f"/v1/services/{service}/tokens", json={"description": "boot"})
    assert resp.status_code == 201, resp.json
    assert resp.headers["Cache-Control"] == "no-store"
    token: str = resp.json["token"]
    assert token.startswith("atl_") and len(token) > 40
    return token


def test_plain_round_trip_and_config_version(web: Client) -> None:
    resp = web.put(f"{CFG}/DB_URL", json={"value": "postgres://db/web"})
    assert resp.status_code == 201
    assert resp.headers["ETag"] == '"1"'
    assert resp.json["value"] == "postgres://db/web" and resp.json["secret"] is False
    assert web.put(f"{CFG}/FEATURES", json={"value": {"beta": True, "n": 3}}).status_code == 201
    assert web.put(f"{CFG}/DEBUG", json={"value": False}).status_code == 201
    body = web.get(CFG).json
    assert body == {
        "realm": "unit",
        "service": "web",
        "version": 3,
        "values": {
            "DB_URL": "postgres://db/web",
            "FEATURES": {"beta": True, "n": 3},
            "DEBUG": False,
        },
        "secrets": [],  # which keys are secrets (names only): none here
    }
    assert web.get(f"{CFG}/FEATURES").json["value"] == {"beta": True, "n": 3}
    # The service's own version (its ETag) does not move with its config.
    assert web.get("/v1/services/web").json["version"] == 1


def test_secret_round_trip_encrypted_at_rest(web: Client, settings: Settings) -> None:
    resp = web.put(f"{CFG}/DB_PASSWORD", json={"value": SECRET, "secret": True})
    assert resp.status_code == 201
    assert resp.json["value"] == {"secret": True}  # a write never echoes the secret
    assert SECRET not in resp.get_data(as_text=True)
    assert web.get(CFG).json["values"]["DB_PASSWORD"] == SECRET
    assert web.get(f"{CFG}/DB_PASSWORD").json["value"] == SECRET
    items = raw_items(settings.table_prefix)
    dumped = json.dumps(items)
    assert SECRET not in dumped
    assert base64.b64encode(SECRET.encode()).decode() not in dumped
    sealed = [i for i in items if "sealed" in i]
    assert len(sealed) == 2  # the current entry and its history version
    envelope = json.loads(sealed[0]["sealed"]["S"])
    assert envelope["alg"] == "AES-256-GCM" and envelope["provider"] == "kms"
    aliases = boto3.client("kms").list_aliases()["Aliases"]
    assert "alias/atlas-unit" in {a["AliasName"] for a in aliases}


def test_history_versions_and_cas(web: Client) -> None:
    for value in ("a", "b", "c"):
        web.put(f"{CFG}/MODE", json={"value": value})
    assert web.get(f"{CFG}/MODE").json["version"] == 3
    assert web.get(f"{CFG}/MODE?version=1").json["value"] == "a"
    page = web.get(f"{CFG}/MODE/versions?limit=2").json
    assert [e["version"] for e in page["items"]] == [3, 2]
    rest = web.get(f"{CFG}/MODE/versions?limit=2&cursor={page['next_cursor']}").json
    assert [e["version"] for e in rest["items"]] == [1] and rest["next_cursor"] is None
    # Check-and-set.
    stale = web.put(f"{CFG}/MODE", json={"value": "x"}, headers={"If-Match": '"2"'})
    assert stale.status_code == 412 and stale.content_type == "application/problem+json"
    ok = web.put(f"{CFG}/MODE", json={"value": "d"}, headers={"If-Match": '"3"'})
    assert ok.status_code == 200 and ok.json["version"] == 4
    assert web.put(f"{CFG}/NEW", json={"value": 1}, headers={"If-Match": "*"}).status_code == 412
    # Delete keeps history; the next write continues the numbering.
    assert web.delete(f"{CFG}/MODE", headers={"If-Match": '"3"'}).status_code == 412
    assert web.delete(f"{CFG}/MODE").status_code == 204
    assert web.get(f"{CFG}/MODE").status_code == 404
    assert web.delete(f"{CFG}/MODE").status_code == 404
    assert "MODE" not in web.get(CFG).json["values"]
    assert web.get(f"{CFG}/MODE?version=5").status_code == 404
    assert web.get(f"{CFG}/MODE?version=4").json["value"] == "d"
    again = web.put(f"{CFG}/MODE", json={"value": "e"})
    assert again.status_code == 201 and again.json["version"] == 6
    assert web.get(CFG).json["version"] == 6


def test_versions_list_masks_secrets(web: Client) -> None:
    web.put(f"{CFG}/TOKEN", json={"value": SECRET, "secret": True})
    web.put(f"{CFG}/TOKEN", json={"value": "now-plain"})
    resp = web.get(f"{CFG}/TOKEN/versions")
    assert SECRET not in resp.get_data(as_text=True)
    assert [e["value"] for e in resp.json["items"]] == ["now-plain", {"secret": True}]
    assert web.get(f"{CFG}/TOKEN?version=1").json["value"] == SECRET


@pytest.mark.parametrize(
    "path,body,field",
    [
        (f"{CFG}/9BAD", {"value": 1}, "key"),
        (f"{CFG}/{'K' * 129}", {"value": 1}, "key"),
        (f"{CFG}/OK", {"value": [1, 2]}, "value"),
        (f"{CFG}/OK", {}, "value"),
        (f"{CFG}/OK", {"value": 1, "secret": "yes"}, "secret"),
        (f"{CFG}/OK", {"value": 1, "other": 1}, "other"),
        (f"{CFG}/OK", {"value": "x" * 70_000}, "value"),
        ("/v1/services/Bad/config/OK", {"value": 1}, "name"),
    ],
)
def test_bad_input_is_422_naming_the_field(web: Client, path: str, body: Any, field: str) -> None:
    resp = web.put(path, json=body)
    assert resp.status_code == 422, resp.json
    assert field in resp.json["errors"]


def test_nan_is_refused(web: Client) -> None:
    resp = web.put(f"{CFG}/X", data='{"value": NaN}', headers={"Content-Type": "application/json"})
    assert resp.status_code == 422


def test_config_of_missing_service_is_404(client: Client) -> None:
    assert client.get("/v1/services/nope/config").status_code == 404
    assert client.put("/v1/services/nope/config/K", json={"value": 1}).status_code == 404
    assert client.get("/v1/services/nope/config/K").status_code == 404


def test_delete_service_with_config_is_409_unless_cascade(web: Client) -> None:
    token = issue(web, "web")
    web.put(f"{CFG}/K", json={"value": SECRET, "secret": True})
    resp = web.delete("/v1/services/web")
    assert resp.status_code == 409 and "config" in resp.json["detail"]
    assert web.delete("/v1/services/web?cascade=true").status_code == 204
    # A new service of the same name inherits neither history nor tokens.
    web.post("/v1/services", json={"name": "web"})
    assert web.get(f"{CFG}/K/versions").status_code == 404
    assert web.get(CFG).json["values"] == {}
    svc = Client(web.client, token=token)
    assert svc.get(CFG).status_code == 401


def test_delete_service_whose_config_keys_are_all_deleted(web: Client) -> None:
    web.put(f"{CFG}/K", json={"value": 1})
    web.delete(f"{CFG}/K")
    assert web.delete("/v1/services/web").status_code == 204


def test_token_matrix(web: Client, make_client: Any) -> None:
    web.put(f"{CFG}/K", json={"value": SECRET, "secret": True})
    web.put("/v1/services/api/config/K", json={"value": "api-secret", "secret": True})
    own = make_client(issue(web, "web"))
    anon = make_client(None)
    # Topology reads are allowed to any valid token.
    for path in ("/v1/services", "/v1/services/web", "/v1/services/web/instances", "/v1/info",
                 "/v1/hosts/10.0.0.1"):  # fmt: skip
        assert own.get(path).status_code == 200, path
        assert anon.get(path).status_code == 401, path
    assert own.get("/v1/info").json["caller"]["kind"] == "service"
    # Own config, secrets included.
    assert own.get(CFG).json["values"]["K"] == SECRET
    assert own.get(f"{CFG}/K").json["value"] == SECRET
    assert own.get(f"{CFG}/K/versions").status_code == 200
    # Another service's config: 403, and the body names no secret.
    for path in ("/v1/services/api/config", "/v1/services/api/config/K",
                 "/v1/services/api/config/K/versions"):  # fmt: skip
        resp = own.get(path)
        assert resp.status_code == 403, path
        assert "api-secret" not in resp.get_data(as_text=True)
    # Any write: 403. Admin-only reads: 403.
    assert own.put(f"{CFG}/K", json={"value": 1}).status_code == 403
    assert own.delete(f"{CFG}/K").status_code == 403
    assert own.post("/v1/services", json={"name": "x"}).status_code == 403
    assert own.post("/v1/services/web/tokens").status_code == 403
    assert own.get("/v1/services/web/tokens").status_code == 403
    assert own.get("/v1/audit").status_code == 403
    assert anon.get(CFG).status_code == 401
    assert make_client("atl_" + "x" * 43).get(CFG).status_code == 401
    assert web.get(CFG).json["values"]["K"] == SECRET  # admin reads everything


def test_tokens_listed_without_values_and_revocable(web: Client, make_client: Any) -> None:
    token = issue(web, "web")
    issue(web, "web")
    listing = web.get("/v1/services/web/tokens")
    assert listing.status_code == 200
    assert len(listing.json["items"]) == 2
    assert token not in listing.get_data(as_text=True)
    assert all(set(t) == {"id", "service", "description", "created_at", "created_by"}
               for t in listing.json["items"])  # fmt: skip
    svc = make_client(token)
    assert svc.get(CFG).status_code == 200
    tid = svc.get("/v1/info").json["caller"]["token_id"]
    assert tid in {t["id"] for t in listing.json["items"]}
    assert web.delete(f"/v1/services/web/tokens/{tid}").status_code == 204
    assert svc.get(CFG).status_code == 401
    assert web.delete(f"/v1/services/web/tokens/{tid}").status_code == 404
    assert web.delete("/v1/services/web/tokens/nonsense").status_code == 422
    assert web.post("/v1/services/nope/tokens").status_code == 404
    page = web.get("/v1/services/web/tokens?limit=1").json
    assert len(page["items"]) == 1 and page["next_cursor"] is None


def test_audit_records_mutations_and_secret_reads(web: Client, make_client: Any) -> None:
    token = issue(web, "web")
    svc = make_client(token)
    web.put(f"{CFG}/K", json={"value": SECRET, "secret": True})
    web.put("/v1/services/web/instances/10.0.0.1:80", json={})
    svc.get(CFG)
    svc.put(f"{CFG}/K", json={"value": "x"})  # refused, still recorded
    resp = web.get("/v1/audit?service=web")
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    assert SECRET not in text and token not in text
    items = resp.json["items"]
    actions = [(i["action"], i["status"], i["principal"]) for i in items]
    assert ("PUT /v1/services/{name}/config/{key}", 201, "admin") in actions
    assert ("PUT /v1/services/{name}/instances/{instance}", 201, "admin") in actions
    assert ("PUT /v1/services/{name}/config/{key}", 403, "service") in actions
    reads = [i for i in items if i["method"] == "GET"]
    assert len(reads) == 1 and reads[0]["target"] == "secrets read: K"
    assert reads[0]["token_id"] == svc.get("/v1/info").json["caller"]["token_id"]
    assert reads[0]["remote_addr"] == "127.0.0.1"
    assert items == sorted(items, key=lambda i: i["at"], reverse=True)
    everything = web.get("/v1/audit?limit=2").json
    assert len(everything["items"]) == 2 and everything["next_cursor"]
    assert any(i["service"] is None or i["service"] == "web"
               for i in web.get("/v1/audit").json["items"])  # fmt: skip


def test_audit_failure_never_fails_the_request(app: Flask, web: Client, caplog: Any) -> None:
    audit = app.extensions["atlas"].audit
    model = audit.models.Audit
    model.delete_table()
    assert web.put(f"{CFG}/K", json={"value": 1}).status_code == 201
    audit.flush()
    assert "audit write failed" in caplog.text


def test_tampered_ciphertext_is_a_clear_error(web: Client, app: Flask) -> None:
    web.put(f"{CFG}/A", json={"value": SECRET, "secret": True})
    web.put(f"{CFG}/B", json={"value": "other-secret", "secret": True})
    models = app.extensions["atlas"].registry.models
    item = models.Config.get("web", "A")
    env = json.loads(item.sealed)
    ct = bytearray(base64.b64decode(env["ct"]))
    ct[0] ^= 1
    env["ct"] = base64.b64encode(bytes(ct)).decode()
    item.sealed = json.dumps(env)
    item.save()
    resp = web.get(f"{CFG}/A")
    assert resp.status_code == 500
    assert resp.content_type == "application/problem+json"
    assert "'A'" in resp.json["detail"] and "integrity" in resp.json["detail"]
    assert web.get(CFG).status_code == 500
    # An envelope copied from another key does not open either (AAD binds service/key/version).
    b = models.Config.get("web", "B")
    a = models.Config.get("web", "A")
    a.sealed = b.sealed
    a.save()
    resp = web.get(f"{CFG}/A")
    assert resp.status_code == 500 and "other-secret" not in resp.get_data(as_text=True)
    # The wrapped data key: KMS refuses it.
    env = json.loads(b.sealed)
    wk = bytearray(base64.b64decode(env["wk"]))
    wk[-1] ^= 1
    env["wk"] = base64.b64encode(bytes(wk)).decode()
    b.sealed = json.dumps(env)
    b.save()
    app.extensions["atlas"].config.sealer.cache = DataKeyCache(0)
    resp = web.get(f"{CFG}/B")
    assert resp.status_code == 500 and "'B'" in resp.json["detail"]


def test_local_master_key_provider(tmp_path: Any, aws: None) -> None:
    key = tmp_path / "master.key"
    key.write_bytes(base64.b64encode(b"k" * 32))
    key.chmod(0o600)
    provider = LocalKeyProvider(key)
    sealer = Sealer(provider)
    ctx = SecretContext("r", "web", "K", 1)
    envelope = sealer.seal({"password": SECRET}, ctx)
    assert SECRET not in envelope
    assert sealer.open(envelope, ctx) == {"password": SECRET}
    with pytest.raises(SecretUnreadable, match="'K'"):
        sealer.open(envelope, SecretContext("r", "web", "K", 2))
    other = tmp_path / "other.key"
    other.write_bytes(base64.b64encode(b"o" * 32))
    with pytest.raises(SecretUnreadable, match="another master key"):
        Sealer(LocalKeyProvider(other)).open(envelope, ctx)
    bad = tmp_path / "bad.key"
    bad.write_text("short")
    with pytest.raises(ConfigError, match="32 random bytes"):
        LocalKeyProvider(bad)
    with pytest.raises(ConfigError, match="ATLAS_MASTER_KEY_FILE"):
        Settings(realm="x", admin_tokens=("a" * 16,), key_provider="local")


def test_app_with_local_provider(tmp_path: Any, settings: Settings) -> None:
    key = tmp_path / "master.key"
    key.write_bytes(base64.b64encode(b"m" * 32))
    app = create_app(
        settings=settings.with_overrides(key_provider="local", master_key_file=str(key))
    )
    c = Client(app.test_client())
    c.post("/v1/services", json={"name": "web"})
    assert c.put(f"{CFG}/K", json={"value": SECRET, "secret": True}).status_code == 201
    assert c.get(CFG).json["values"]["K"] == SECRET
    assert SECRET not in json.dumps(raw_items(settings.table_prefix))
    app.extensions["atlas"].close()


class RecordingMirror:
    """A mirror that records what it is told (and can be made to fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.services: list[Any] = []

    def put_service(self, service: Any) -> None:
        if self.fail:
            raise RuntimeError("zookeeper is down")
        self.services.append(service)

    def delete_service(self, name: str) -> None:
        pass

    def prepare_instance(self, service: str, iid: str) -> Any:
        return None

    def instance_changed(self, *args: Any) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"configured": True}


@pytest.mark.parametrize("fail", [False, True])
def test_mirror_told_the_new_config_version(settings: Settings, fail: bool) -> None:
    mirror = RecordingMirror(fail=fail)
    app = create_app(settings=settings, mirror=mirror)
    c = Client(app.test_client())
    c.post("/v1/services", json={"name": "web"})
    mirror.services.clear()
    assert c.put(f"{CFG}/K", json={"value": 1}).status_code == 201
    assert c.put(f"{CFG}/K", json={"value": SECRET, "secret": True}).status_code == 200
    assert c.delete(f"{CFG}/K").status_code == 204
    if not fail:
        assert [s.config_version for s in mirror.services] == [1, 2, 3]
    assert c.get(CFG).json["version"] == 3
    app.extensions["atlas"].close()


def test_a_junk_service_name_cannot_get_other_audit_records_dropped(
    app: Flask, web: Client, make_client: Any
) -> None:
    token = issue(web, "web")
    svc = make_client(token)
    web.put(f"{CFG}/K", json={"value": SECRET, "secret": True})
    assert svc.get(CFG).status_code == 200  # a secret read, to be audited
    junk = "a" * 2100  # over DynamoDB's partition key limit if it were used as one
    assert svc.delete(f"/v1/services/{junk}").status_code in (403, 422)
    app.extensions["atlas"].audit.flush()
    items = web.get("/v1/audit?service=web").json["items"]
    assert any(i["target"] == "secrets read: K" for i in items)
    assert app.extensions["atlas"].audit.failed == 0


def test_readyz_is_public_but_tells_no_hosts(app: Flask, make_client: Any) -> None:
    body = make_client(None).get("/readyz").json
    assert body["status"] == "ready"
    assert set(body["checks"]["mirror"]) <= {"configured", "connected", "lagging", "leader"}
