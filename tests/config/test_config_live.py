"""Live: Atlas under gunicorn on the session moto server (DynamoDB + KMS over HTTP) with the
ZooKeeper mirror, driven over HTTP and through `atlas.client.config.load()`."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import boto3
import pytest
from flask import Flask
from kazoo.client import KazooClient

from atlas.client.config import (
    ConfigLoadError,
    MissingSettings,
    ServiceSettings,
    init_app,
    load,
    watch,
)
from atlas.stack import AtlasServer, MotoServer, ZooKeeperServer
from tests.config import defaults_example
from tests.config.conftest import SECRET, raw_items
from tests.helpers import ApiClient, wait_until

pytestmark = pytest.mark.integration

CACHE_KEY = base64.b64encode(b"c" * 32).decode()


def setup_services(atlas: AtlasServer) -> tuple[ApiClient, str, str]:
    """Services web and api with config; returns (admin, web token, api token)."""
    admin = ApiClient(atlas.url)
    for name in ("web", "api"):
        assert admin.post("/v1/services", json={"name": name}).status_code == 201
    cfg = "/v1/services/web/config"
    assert admin.put(f"{cfg}/DATABASE_URL", json={"value": "postgres://db/web"}).status_code == 201
    assert admin.put(f"{cfg}/DB_PASSWORD", json={"value": SECRET, "secret": True}).ok
    assert admin.put(f"{cfg}/FLAGS", json={"value": {"beta": True}}).ok
    assert admin.put("/v1/services/api/config/KEY", json={"value": "api-only", "secret": True}).ok
    tokens = [admin.post(f"/v1/services/{n}/tokens").json()["token"] for n in ("web", "api")]
    return admin, tokens[0], tokens[1]


def zk_tree(client: KazooClient, path: str) -> dict[str, bytes]:
    """Every znode under path with its data."""
    out: dict[str, bytes] = {}
    data, _ = client.get(path)
    out[path] = data
    for child in client.get_children(path):
        out.update(zk_tree(client, f"{path}/{child}"))
    return out


def test_round_trip_matrix_and_no_plaintext_anywhere(
    start_atlas: Any, zk_server: ZooKeeperServer, moto_server: MotoServer, realm: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    atlas = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address, ATLAS_LOG_LEVEL="DEBUG")
    admin, web_token, api_token = setup_services(atlas)
    web = ApiClient(atlas.url, token=web_token)
    anon = ApiClient(atlas.url, token=None)
    cfg = "/v1/services/web/config"

    # Round trip through the client library, as a booting service does.
    settings = load("web", defaults=defaults_example, atlas_url=atlas.url, token=web_token,
                    cache_dir=tmp_path / "cache", cache_key=CACHE_KEY)  # fmt: skip
    assert settings.realm == realm and settings.source == "atlas"
    assert settings.DATABASE_URL == "postgres://db/web"  # Atlas overrides the default
    assert settings["DB_PASSWORD"] == SECRET
    assert settings.WORKERS == 4 and settings.FLAGS == {"beta": True}
    assert "lowercase_is_ignored" not in settings
    assert SECRET not in repr(settings)

    # 401/403 matrix.
    assert web.get(cfg).json()["values"]["DB_PASSWORD"] == SECRET
    assert web.get("/v1/services").status_code == 200
    assert web.get("/v1/services/web/instances").status_code == 200
    for path in ("/v1/services/api/config", "/v1/services/api/config/KEY"):
        resp = web.get(path)
        assert resp.status_code == 403 and "api-only" not in resp.text
    assert ApiClient(atlas.url, token=api_token).get(cfg).status_code == 403
    assert web.put(f"{cfg}/X", json={"value": 1}).status_code == 403
    assert web.post("/v1/services/web/tokens").status_code == 403
    assert web.get("/v1/audit").status_code == 403
    assert anon.get(cfg).status_code == 401
    assert admin.get("/v1/services/api/config").json()["values"]["KEY"] == "api-only"

    # History and check-and-set over HTTP.
    first = admin.get(f"{cfg}/DATABASE_URL")
    assert first.headers["ETag"] == '"1"'
    assert admin.put(f"{cfg}/DATABASE_URL", json={"value": "postgres://db2/web"},
                     headers={"If-Match": '"1"'}).status_code == 200  # fmt: skip
    assert admin.put(f"{cfg}/DATABASE_URL", json={"value": "lost update"},
                     headers={"If-Match": '"1"'}).status_code == 412  # fmt: skip
    versions = admin.get(f"{cfg}/DATABASE_URL/versions").json()["items"]
    assert [v["value"] for v in versions] == ["postgres://db2/web", "postgres://db/web"]
    version = admin.get(cfg).json()["version"]
    assert version == 4

    # The ZooKeeper stamp is the number only; nothing in the realm's tree holds a secret.
    zk = KazooClient(zk_server.address)
    zk.start(timeout=15)
    try:
        stamp = f"/atlas/{realm}/config/web"
        wait_until(lambda: zk.exists(stamp) and json.loads(zk.get(stamp)[0]) == {"version": 4},
                   what="config stamp")  # fmt: skip
        tree = zk_tree(zk, f"/atlas/{realm}")
    finally:
        zk.stop()
        zk.close()
    blob = b"".join(tree.values())
    assert SECRET.encode() not in blob and b"api-only" not in blob

    # Raw DynamoDB items (moto over HTTP), /metrics and the audit trail.
    items = json.dumps(raw_items(f"atlas-{realm}-", endpoint=moto_server.url))
    assert SECRET not in items and "api-only" not in items
    assert SECRET not in admin.get("/metrics").text
    audit = wait_until(
        lambda: [r for r in admin.get("/v1/audit?service=web").json()["items"]
                 if r["principal"] == "service" and r["method"] == "GET"],
        what="audited secret reads",
    )  # fmt: skip
    assert audit[0]["target"].startswith("secrets read: ") and "DB_PASSWORD" in audit[0]["target"]
    assert web_token not in admin.get("/v1/audit").text

    # Logs (DEBUG level, access log included) hold no secret.
    atlas.stop()
    logs = list(Path(atlas.base_dir).glob("*.log"))
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert SECRET not in text and "api-only" not in text, path
        assert web_token not in text, path


def test_fallback_to_last_known_good_when_atlas_is_stopped(
    start_atlas: Any, realm: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    atlas = start_atlas(realm)
    _, token, _ = setup_services(atlas)
    cache = tmp_path / "cache"
    kw: dict[str, Any] = {"atlas_url": atlas.url, "token": token, "cache_dir": cache,
                          "cache_key": CACHE_KEY, "timeout": 1.0}  # fmt: skip
    fresh = load("web", defaults=defaults_example, **kw)
    copy = cache / "web.json"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert SECRET not in copy.read_text() and "postgres://db/web" not in copy.read_text()

    atlas.stop()
    with caplog.at_level(logging.WARNING, logger="atlas.client.config"):
        stale = load("web", defaults=defaults_example, required=("DB_PASSWORD",), **kw)
    assert stale.source == "cache" and stale.realm == realm
    assert dict(stale) == dict(fresh) and stale["DB_PASSWORD"] == SECRET
    assert "LAST-KNOWN-GOOD" in caplog.text and "seconds old" in caplog.text
    assert SECRET not in caplog.text

    with pytest.raises(ConfigLoadError, match="ATLAS_CONFIG_CACHE_KEY"):
        load("web", **{**kw, "cache_key": ""})
    with pytest.raises(ConfigLoadError, match="does not decrypt"):
        load("web", **{**kw, "cache_key": base64.b64encode(b"x" * 32).decode()})
    with pytest.raises(ConfigLoadError, match=r"did not answer.*no last-known-good copy at"):
        load("web", **{**kw, "cache_dir": tmp_path / "empty"})
    with pytest.raises(ConfigLoadError, match="not 'production'"):
        load("web", realm="production", **kw)
    with pytest.raises(MissingSettings, match="NOT_THERE"):
        load("web", required=("DB_PASSWORD", "NOT_THERE"), **kw)


def test_missing_required_and_refusals_are_clear(
    start_atlas: Any, realm: str, tmp_path: Path
) -> None:
    atlas = start_atlas(realm)
    _, token, api_token = setup_services(atlas)
    kw: dict[str, Any] = {"atlas_url": atlas.url, "cache_dir": tmp_path, "cache_key": CACHE_KEY}
    with pytest.raises(MissingSettings, match="SENTRY_DSN"):
        load("web", token=token, required=("DATABASE_URL", "SENTRY_DSN"), **kw)
    with pytest.raises(ConfigLoadError, match="403"):
        load("web", token=api_token, **kw)
    with pytest.raises(ConfigLoadError, match=r"401.*ATLAS_TOKEN"):
        load("web", token="", **kw)


def test_tampered_ciphertext_is_a_clear_error(
    start_atlas: Any, moto_server: MotoServer, realm: str, tmp_path: Path
) -> None:
    atlas = start_atlas(realm)
    admin, token, _ = setup_services(atlas)
    db = boto3.client("dynamodb", endpoint_url=moto_server.url, region_name="us-east-1")
    table = f"atlas-{realm}-config"
    key = {"service": {"S": "web"}, "key": {"S": "DB_PASSWORD"}}
    item = db.get_item(TableName=table, Key=key)["Item"]
    env = json.loads(item["sealed"]["S"])
    ct = bytearray(base64.b64decode(env["ct"]))
    ct[-1] ^= 0x01
    env["ct"] = base64.b64encode(bytes(ct)).decode()
    item["sealed"] = {"S": json.dumps(env)}
    db.put_item(TableName=table, Item=item)

    resp = admin.get("/v1/services/web/config/DB_PASSWORD")
    assert resp.status_code == 500
    assert resp.headers["Content-Type"] == "application/problem+json"
    problem = resp.json()
    assert problem["type"].endswith("/secret-unreadable")
    assert "'DB_PASSWORD'" in problem["detail"] and "'web'" in problem["detail"]
    # The client refuses to boot on it (it does not fall back to an older copy silently).
    with pytest.raises(ConfigLoadError, match=r"500.*DB_PASSWORD"):
        load("web", atlas_url=atlas.url, token=token, cache_dir=tmp_path, cache_key=CACHE_KEY)


def test_live_reload_by_poll_and_by_zookeeper_stamp(
    start_atlas: Any, zk_server: ZooKeeperServer, realm: str, tmp_path: Path
) -> None:
    atlas = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address)
    admin, token, _ = setup_services(atlas)
    kw: dict[str, Any] = {"atlas_url": atlas.url, "token": token, "cache_dir": tmp_path,
                          "cache_key": CACHE_KEY}  # fmt: skip
    current = load("web", **kw)
    polled: list[ServiceSettings] = []
    stamped: list[ServiceSettings] = []
    w1 = watch("web", polled.append, current=current, interval=0.1, **kw)
    w2 = watch("web", stamped.append, current=current, zk_hosts=zk_server.address, **kw)
    try:
        admin.put("/v1/services/web/config/MODE", json={"value": "fast"})
        wait_until(lambda: polled and polled[-1].get("MODE") == "fast", what="poll reload")
        wait_until(lambda: stamped and stamped[-1].get("MODE") == "fast", what="zk reload")
        assert stamped[-1].version == current.version + 1
    finally:
        w1.stop()
        w2.stop()


def test_flask_init_app(start_atlas: Any, realm: str, tmp_path: Path) -> None:
    atlas = start_atlas(realm)
    _, token, _ = setup_services(atlas)
    app = Flask("web")
    app.config.from_object(defaults_example)
    settings = init_app(app, service="web", atlas_url=atlas.url, token=token, cache_dir=tmp_path,
                        cache_key=CACHE_KEY)  # fmt: skip
    assert app.realm == realm  # type: ignore[attr-defined]
    assert app.config["DATABASE_URL"] == "postgres://db/web"
    assert app.config["WORKERS"] == 4 and app.config["DB_PASSWORD"] == SECRET
    assert app.extensions["atlas_config"] is settings


def test_client_module_imports_neither_flask_nor_pynamodb() -> None:
    import subprocess
    import sys

    code = (
        "import sys, atlas.client.config; "
        "bad = [m for m in ('flask', 'pynamodb', 'kazoo') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ})  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
