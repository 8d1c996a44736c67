"""Services: create, read, list with pagination, patch with If-Match, delete with cascade."""

from __future__ import annotations

from tests.unit.conftest import Client


def make(client: Client, name: str = "api", **extra: object) -> dict:
    resp = client.post("/v1/services", json={"name": name, **extra})
    assert resp.status_code == 201, resp.json
    return resp.json


def test_create_returns_stored_representation_with_etag(client: Client) -> None:
    resp = client.post(
        "/v1/services",
        json={"name": "identity", "port": 8000, "health_check": {"path": "/health"}, "tags": ["t"]},
    )
    assert resp.status_code == 201
    body = resp.json
    assert body["name"] == "identity"
    assert body["health_check"] == {"path": "/health", "interval_s": 10, "timeout_s": 2}
    assert body["version"] == 1
    assert resp.headers["ETag"] == '"1"'
    assert resp.headers["Location"] == "/v1/services/identity"
    assert client.get("/v1/services/identity").json == body


def test_create_twice_is_409(client: Client) -> None:
    make(client)
    resp = client.post("/v1/services", json={"name": "api"})
    assert resp.status_code == 409
    assert resp.content_type == "application/problem+json"
    assert resp.json["errors"] == {"name": ["Already exists."]}


def test_list_paginates_through_every_service_once(client: Client) -> None:
    names = {f"svc-{i:02d}" for i in range(7)}
    for n in names:
        make(client, n)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/v1/services?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).json
        seen += [s["name"] for s in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(names)
    assert pages == 3


def test_patch_bumps_version_and_honours_if_match(client: Client) -> None:
    make(client, description="old")
    stale = client.patch("/v1/services/api", json={"description": "x"}, headers={"If-Match": '"9"'})
    assert stale.status_code == 412
    ok = client.patch("/v1/services/api", json={"description": "new"}, headers={"If-Match": '"1"'})
    assert ok.status_code == 200
    assert ok.json["description"] == "new"
    assert ok.json["version"] == 2
    assert ok.headers["ETag"] == '"2"'
    # the stale write did not land
    assert client.get("/v1/services/api").json["description"] == "new"


def test_patch_can_clear_health_check(client: Client) -> None:
    make(client, health_check={"path": "/h"})
    resp = client.patch("/v1/services/api", json={"health_check": None})
    assert resp.status_code == 200
    assert resp.json["health_check"] is None


def test_delete_with_instances_is_409_unless_cascade(client: Client) -> None:
    make(client)
    assert client.put("/v1/services/api/instances/10.0.0.1:80", json={}).status_code == 201
    resp = client.delete("/v1/services/api")
    assert resp.status_code == 409
    # the refused delete changed nothing: same version, still attachable
    assert client.get("/v1/services/api").json["version"] == 1
    assert client.put("/v1/services/api/instances/10.0.0.2:80", json={}).status_code == 201
    assert client.delete("/v1/services/api?cascade=true").status_code == 204
    assert client.get("/v1/services/api").status_code == 404
    assert client.get("/v1/hosts/10.0.0.1").json["items"] == []


def test_delete_empty_service_and_if_match(client: Client) -> None:
    make(client)
    assert client.delete("/v1/services/api", headers={"If-Match": '"5"'}).status_code == 412
    assert client.delete("/v1/services/api", headers={"If-Match": '"1"'}).status_code == 204
    assert client.delete("/v1/services/api").status_code == 404


def test_metrics_count_requests(client: Client) -> None:
    make(client)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'atlas_http_requests_total{method="POST",route="/v1/services",status="201"} 1' in text
