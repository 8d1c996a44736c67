"""Instances and hosts: attach/replace, enable/disable, If-Match, host-wide flips."""

from __future__ import annotations

from tests.unit.conftest import Client


def setup_service(client: Client, name: str = "api") -> None:
    assert client.post("/v1/services", json={"name": name}).status_code == 201


def test_put_creates_then_replaces(client: Client) -> None:
    setup_service(client)
    first = client.put(
        "/v1/services/api/instances/app1.example.com:8080",
        json={"weight": 50, "zone": "a", "labels": {"canary": "yes"}},
    )
    assert first.status_code == 201
    assert first.json["id"] == "app1.example.com:8080"
    assert first.json["enabled"] is True
    assert first.headers["Location"] == "/v1/services/api/instances/app1.example.com:8080"
    second = client.put("/v1/services/api/instances/app1.example.com:8080", json={"weight": 7})
    assert second.status_code == 200
    assert second.json["weight"] == 7
    assert second.json["labels"] == {}  # PUT replaces
    assert second.json["version"] == 2
    assert second.json["created_at"] == first.json["created_at"]


def test_put_to_missing_service_is_404_and_writes_nothing(client: Client) -> None:
    resp = client.put("/v1/services/ghost/instances/10.0.0.1:80", json={})
    assert resp.status_code == 404
    assert client.get("/v1/hosts/10.0.0.1").json["items"] == []


def test_if_none_match_star_creates_only(client: Client) -> None:
    setup_service(client)
    url = "/v1/services/api/instances/10.0.0.1:80"
    assert client.put(url, json={}, headers={"If-None-Match": "*"}).status_code == 201
    assert client.put(url, json={}, headers={"If-None-Match": "*"}).status_code == 412


def test_if_match_on_put_patch_delete(client: Client) -> None:
    setup_service(client)
    url = "/v1/services/api/instances/10.0.0.1:80"
    assert client.put(url, json={}, headers={"If-Match": "*"}).status_code == 412
    client.put(url, json={})
    assert client.put(url, json={"weight": 1}, headers={"If-Match": '"2"'}).status_code == 412
    assert client.patch(url, json={"weight": 1}, headers={"If-Match": '"7"'}).status_code == 412
    assert client.patch(url, json={"weight": 1}, headers={"If-Match": 'W/"1"'}).status_code == 200
    assert client.delete(url, headers={"If-Match": '"1"'}).status_code == 412
    assert client.delete(url, headers={"If-Match": '"2"'}).status_code == 204
    assert client.get(url).status_code == 404


def test_disable_keeps_instance_attached_and_enable_clears_reason(client: Client) -> None:
    setup_service(client)
    url = "/v1/services/api/instances/10.0.0.1:80"
    client.put(url, json={})
    off = client.patch(url, json={"enabled": False, "disabled_reason": "deploy"})
    assert off.json["enabled"] is False
    assert off.json["disabled_reason"] == "deploy"
    assert len(client.get("/v1/services/api/instances").json["items"]) == 1
    on = client.patch(url, json={"enabled": True})
    assert on.json["enabled"] is True
    assert on.json["disabled_reason"] is None


def test_instances_list_paginates_in_id_order(client: Client) -> None:
    setup_service(client)
    for i in range(5):
        client.put(f"/v1/services/api/instances/10.0.0.{i}:80", json={})
    first = client.get("/v1/services/api/instances?limit=2").json
    assert [x["id"] for x in first["items"]] == ["10.0.0.0:80", "10.0.0.1:80"]
    second = client.get(f"/v1/services/api/instances?limit=2&cursor={first['next_cursor']}").json
    assert [x["id"] for x in second["items"]] == ["10.0.0.2:80", "10.0.0.3:80"]
    third = client.get(f"/v1/services/api/instances?limit=2&cursor={second['next_cursor']}").json
    assert [x["id"] for x in third["items"]] == ["10.0.0.4:80"]
    assert third["next_cursor"] is None


def test_host_disable_and_enable_flip_every_service(client: Client) -> None:
    setup_service(client, "api")
    setup_service(client, "web")
    client.put("/v1/services/api/instances/node7:80", json={})
    client.put("/v1/services/web/instances/node7:81", json={})
    client.put("/v1/services/web/instances/node8:81", json={})
    off = client.post("/v1/hosts/node7/disable", json={"reason": "disk failing"})
    assert off.status_code == 200
    assert {(i["service"], i["enabled"], i["disabled_reason"]) for i in off.json["items"]} == {
        ("api", False, "disk failing"),
        ("web", False, "disk failing"),
    }
    assert client.get("/v1/services/web/instances/node8:81").json["enabled"] is True
    listed = client.get("/v1/hosts/NODE7").json  # hostnames are case-insensitive
    assert listed["host"] == "node7"
    assert all(not i["enabled"] for i in listed["items"])
    on = client.post("/v1/hosts/node7/enable")
    assert all(i["enabled"] and i["disabled_reason"] is None for i in on.json["items"])


def test_ipv6_instance(client: Client) -> None:
    setup_service(client)
    resp = client.put("/v1/services/api/instances/[2001:db8::1]:443", json={})
    assert resp.status_code == 201
    assert resp.json["host"] == "2001:db8::1"
    assert resp.json["id"] == "[2001:db8::1]:443"
    assert client.get("/v1/hosts/2001:db8::1").json["items"][0]["port"] == 443
