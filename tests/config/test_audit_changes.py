"""Audit records say what changed (fields before/after, never a secret's value); instance lists
and hosts filter by `?enabled=`; a host-disable records its reason on what it disables and says
what it left alone."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from atlas.registry.audit import MAX_CHANGES, MAX_VALUE_CHARS, bounded_changes, diff
from tests.config.conftest import SECRET
from tests.unit.conftest import Client

pytestmark = pytest.mark.usefixtures("aws")


def audit(client: Client, service: str | None = None) -> list[dict[str, Any]]:
    """The audit trail (of one service, newest first)."""
    query = f"?service={service}&limit=1000" if service else "?limit=1000"
    resp = client.get(f"/v1/audit{query}")
    assert resp.status_code == 200
    items: list[dict[str, Any]] = resp.json["items"]
    return items


def one(items: list[dict[str, Any]], action: str, status: int = 200) -> dict[str, Any]:
    found = [i for i in items if i["action"] == action and i["status"] == status]
    assert len(found) == 1, [(i["action"], i["status"]) for i in items]
    return found[0]


def by_field(record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {c["field"]: (c["before"], c["after"]) for c in record["changes"] if "before" in c}


def test_service_creation_names_the_service_and_what_it_was_created_with(client: Client) -> None:
    body = {"name": "identity", "port": 8000, "health_check": {"path": "/health"}}
    assert client.post("/v1/services", json=body).status_code == 201
    assert client.post("/v1/services", json=body).status_code == 409  # refused, still named
    items = audit(client, "identity")
    created = one(items, "POST /v1/services", 201)
    assert created["service"] == "identity"
    fields = by_field(created)
    assert fields["name"] == (None, "identity") and fields["port"] == (None, 8000)
    assert fields["health_check"][1]["path"] == "/health" and fields["version"] == (None, 1)
    assert "created_at" not in fields
    refused = one(items, "POST /v1/services", 409)
    assert refused["service"] == "identity" and refused["changes"] is None


def test_updates_record_fields_before_and_after(client: Client) -> None:
    client.post("/v1/services", json={"name": "web", "owner": "a"})
    client.patch("/v1/services/web", json={"owner": "b", "description": "same"})
    client.put("/v1/services/web/instances/10.0.0.1:80", json={"zone": "a"})
    client.patch("/v1/services/web/instances/10.0.0.1:80",
                 json={"enabled": False, "disabled_reason": "deploying"})  # fmt: skip
    client.put("/v1/services/web/instances/10.0.0.1:80", json={"zone": "b", "weight": 5})
    client.delete("/v1/services/web/instances/10.0.0.1:80")
    items = audit(client, "web")
    patch = by_field(one(items, "PATCH /v1/services/{name}"))
    assert patch == {"owner": ("a", "b"), "description": ("", "same"), "version": (1, 2)}
    attach = by_field(one(items, "PUT /v1/services/{name}/instances/{instance}", 201))
    assert attach["zone"] == (None, "a") and attach["enabled"] == (None, True)
    disable = by_field(one(items, "PATCH /v1/services/{name}/instances/{instance}"))
    assert disable == {
        "enabled": (True, False), "disabled_reason": (None, "deploying"), "version": (1, 2)
    }  # fmt: skip
    replace = by_field(one(items, "PUT /v1/services/{name}/instances/{instance}", 200))
    assert replace["zone"] == ("a", "b") and replace["weight"] == (100, 5)
    assert replace["enabled"] == (False, True)
    detach = by_field(one(items, "DELETE /v1/services/{name}/instances/{instance}", 204))
    assert detach["zone"] == ("b", None) and detach["version"] == (3, None)


def test_config_records_key_version_and_secret_flag_never_the_value(client: Client) -> None:
    client.post("/v1/services", json={"name": "web"})
    cfg = "/v1/services/web/config/DB_PASSWORD"
    assert client.put(cfg, json={"value": SECRET, "secret": True}).status_code == 201
    assert client.put(cfg, json={"value": SECRET + "2", "secret": True}).status_code == 200
    assert client.delete(cfg).status_code == 204
    resp = client.get("/v1/audit?service=web")
    assert SECRET not in resp.get_data(as_text=True)
    items = audit(client, "web")
    first = by_field(one(items, "PUT /v1/services/{name}/config/{key}", 201))
    assert first == {"key": (None, "DB_PASSWORD"), "version": (None, 1), "secret": (None, True),
                     "deleted": (None, False)}  # fmt: skip
    second = by_field(one(items, "PUT /v1/services/{name}/config/{key}", 200))
    assert second == {"version": (1, 2)}
    gone = by_field(one(items, "DELETE /v1/services/{name}/config/{key}", 204))
    assert gone["version"] == (2, None) and gone["secret"] == (True, None)
    assert all("value" not in c["field"] for i in items for c in i["changes"] or [])
    # A read that reveals a secret is recorded, and it changed nothing.
    assert client.put(cfg, json={"value": SECRET, "secret": True}).status_code == 201
    assert client.get(cfg).status_code == 200  # an admin read opens the secret
    read = one(audit(client, "web"), "GET /v1/services/{name}/config/{key}", 200)
    assert read["target"].startswith("secrets read: DB_PASSWORD") and read["changes"] is None


def test_tokens_record_id_and_description_never_the_token(client: Client) -> None:
    client.post("/v1/services", json={"name": "web"})
    issued = client.post("/v1/services/web/tokens", json={"description": "deploys"}).json
    text = client.get("/v1/audit?service=web").get_data(as_text=True)
    assert issued["token"] not in text
    fields = by_field(one(audit(client, "web"), "POST /v1/services/{name}/tokens", 201))
    assert fields == {"id": (None, issued["id"]), "description": (None, "deploys")}


def test_filters_by_enabled(client: Client) -> None:
    client.post("/v1/services", json={"name": "web"})
    client.post("/v1/services", json={"name": "api"})
    for svc, iid in (("web", "10.0.0.1:80"), ("web", "10.0.0.2:80"), ("api", "10.0.0.2:81")):
        client.put(f"/v1/services/{svc}/instances/{iid}", json={})
    client.patch("/v1/services/web/instances/10.0.0.2:80", json={"enabled": False})

    def ids(path: str) -> list[str]:
        resp = client.get(path)
        assert resp.status_code == 200, resp.json
        return [f"{i['service']}/{i['id']}" for i in resp.json["items"]]

    assert ids("/v1/services/web/instances?enabled=false") == ["web/10.0.0.2:80"]
    assert ids("/v1/services/web/instances?enabled=true") == ["web/10.0.0.1:80"]
    assert len(ids("/v1/services/web/instances")) == 2
    assert ids("/v1/hosts/10.0.0.2?enabled=false") == ["web/10.0.0.2:80"]
    assert ids("/v1/hosts/10.0.0.2?enabled=true") == ["api/10.0.0.2:81"]
    assert sorted(ids("/v1/hosts/10.0.0.2")) == ["api/10.0.0.2:81", "web/10.0.0.2:80"]
    # Pages are filtered after paging: following next_cursor still finds every match.
    page = client.get("/v1/services/web/instances?enabled=false&limit=1").json
    found = [i["id"] for i in page["items"]]
    while page["next_cursor"]:
        page = client.get(
            f"/v1/services/web/instances?enabled=false&limit=1&cursor={page['next_cursor']}"
        ).json
        found += [i["id"] for i in page["items"]]
    assert found == ["10.0.0.2:80"]
    bad = client.get("/v1/services/web/instances?enabled=maybe")
    assert bad.status_code == 422 and "enabled" in bad.json["errors"]
    assert client.get("/v1/hosts/10.0.0.2?enabled=2").status_code == 422


def test_host_disable_records_its_reason_and_says_what_it_left_alone(client: Client) -> None:
    client.post("/v1/services", json={"name": "web"})
    client.post("/v1/services", json={"name": "api"})
    client.put("/v1/services/web/instances/10.0.0.2:80", json={})
    client.put("/v1/services/api/instances/10.0.0.2:81", json={})
    client.patch("/v1/services/api/instances/10.0.0.2:81",
                 json={"enabled": False, "disabled_reason": "deploying"})  # fmt: skip
    resp = client.post("/v1/hosts/10.0.0.2/disable", json={"reason": "disk failing"})
    assert resp.status_code == 200
    body = resp.json
    assert body["changed"] == [{"service": "web", "id": "10.0.0.2:80"}]
    assert body["unchanged"] == [{"service": "api", "id": "10.0.0.2:81"}]
    reasons = {i["service"]: (i["enabled"], i["disabled_reason"]) for i in body["items"]}
    assert reasons == {"web": (False, "disk failing"), "api": (False, "deploying")}
    stored = client.get("/v1/services/web/instances/10.0.0.2:80").json
    assert stored["disabled_reason"] == "disk failing"
    record = one(audit(client), "POST /v1/hosts/{host}/disable")
    assert record["target"] == "10.0.0.2"
    assert {(c["instance"], c["field"], c["before"], c["after"]) for c in record["changes"]} == {
        ("web/10.0.0.2:80", "enabled", True, False),
        ("web/10.0.0.2:80", "disabled_reason", None, "disk failing"),
        ("web/10.0.0.2:80", "version", 1, 2),
    }
    enabled = client.post("/v1/hosts/10.0.0.2/enable").json
    assert len(enabled["changed"]) == 2 and enabled["unchanged"] == []
    assert all(i["enabled"] and i["disabled_reason"] is None for i in enabled["items"])


def test_changes_are_bounded() -> None:
    long = "x" * (MAX_VALUE_CHARS * 2)
    (change,) = diff({"description": ""}, {"description": long})
    assert len(change["after"]) == MAX_VALUE_CHARS and change["after"].endswith("…")
    many = [{"field": str(i), "before": 0, "after": 1} for i in range(MAX_CHANGES + 10)]
    kept = bounded_changes(many)
    assert len(kept) == MAX_CHANGES and kept[-1] == {"field": "…", "omitted": 11}


def test_a_failed_read_before_still_records_the_mutation(
    app: Flask, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/v1/services", json={"name": "web"})
    ext = app.extensions["atlas"]

    def broken(name: str) -> None:
        raise RuntimeError("store hiccup")

    monkeypatch.setattr(ext.registry, "find_service", broken)
    assert client.patch("/v1/services/web", json={"owner": "b"}).status_code == 200
    assert ext.audit.unread_before == 1
    record = one(audit(client, "web"), "PATCH /v1/services/{name}")
    # Without the state before, the record still says what the write left, and that the
    # state before is unknown.
    assert by_field(record)["owner"] == (None, "b")
    assert {"field": "…", "before_unknown": True} in record["changes"]
