"""Bad input: every case is a 4xx problem+json naming the field, never a 5xx, never a partial write."""

from __future__ import annotations

import pytest

from tests.unit.conftest import Client


def assert_problem(resp, status: int, field: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json"
    body = resp.json
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"] and body["detail"]
    if field is not None:
        assert field in body["errors"], body
        assert body["errors"][field] and all(isinstance(m, str) for m in body["errors"][field])
    return body


def no_services(client: Client) -> bool:
    return client.get("/v1/services").json["items"] == []


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "-x"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "ok", "port": 0}, "port"),
        ({"name": "ok", "port": 65536}, "port"),
        ({"name": "ok", "port": "80"}, "port"),
        ({"name": "ok", "port": True}, "port"),
        ({"name": "ok", "port": 80.5}, "port"),
        ({"name": "ok", "unknown": 1}, "unknown"),
        ({"name": 5}, "name"),
        ({"name": "ok", "tags": "x"}, "tags"),
        ({"name": "ok", "health_check": {"path": "nope"}}, "health_check.path"),
        ({"name": "ok", "health_check": {"path": "/", "interval_s": 0}}, "health_check.interval_s"),
        ({"name": "ok", "health_check": {"path": "/", "timeout_s": 99}}, "health_check.timeout_s"),
        ({"name": "ok", "health_check": {"path": "/", "x": 1}}, "health_check.x"),
    ],
)
def test_invalid_service_bodies_are_422(client: Client, body: dict, field: str) -> None:
    assert_problem(client.post("/v1/services", json=body), 422, field)
    assert no_services(client)


@pytest.mark.parametrize(
    "instance,field",
    [
        ("10.0.0.1:0", "port"),
        ("10.0.0.1:65536", "port"),
        ("10.0.0.1:http", "port"),
        ("10.0.0.1", "instance_id"),
        ("bad_host!:80", "host"),
        ("999.1.1.1:80", "host"),
        ("-lead.example.com:80", "host"),
        ("2001:db8::1:80", "host"),
    ],
)
def test_invalid_instance_ids_are_422(client: Client, instance: str, field: str) -> None:
    client.post("/v1/services", json={"name": "api"})
    assert_problem(client.put(f"/v1/services/api/instances/{instance}", json={}), 422, field)
    assert client.get("/v1/services/api/instances").json["items"] == []


@pytest.mark.parametrize(
    "body,field",
    [
        ({"enabled": "false"}, "enabled"),
        ({"enabled": 0}, "enabled"),
        ({"weight": 257}, "weight"),
        ({"weight": -1}, "weight"),
        ({"labels": {"k": 1}}, "labels.k.value"),
        ({"labels": ["a"]}, "labels"),
        ({"host": "10.0.0.2"}, "host"),
        ({"port": 81}, "port"),
        ({"zone": ""}, "zone"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_invalid_instance_bodies_are_422(client: Client, body: dict, field: str) -> None:
    client.post("/v1/services", json={"name": "api"})
    resp = client.put("/v1/services/api/instances/10.0.0.1:80", json=body)
    assert_problem(resp, 422, field)
    assert client.get("/v1/services/api/instances").json["items"] == []


def test_invalid_patch_changes_nothing(client: Client) -> None:
    client.post("/v1/services", json={"name": "api"})
    client.put("/v1/services/api/instances/10.0.0.1:80", json={"weight": 5})
    resp = client.patch(
        "/v1/services/api/instances/10.0.0.1:80", json={"enabled": False, "weight": 999}
    )
    assert_problem(resp, 422, "weight")
    inst = client.get("/v1/services/api/instances/10.0.0.1:80").json
    assert inst["enabled"] is True and inst["weight"] == 5 and inst["version"] == 1


def test_malformed_json_is_400(client: Client) -> None:
    resp = client.post("/v1/services", data='{"name": ', content_type="application/json")
    assert_problem(resp, 400, "body")
    assert no_services(client)


def test_non_object_json_is_422(client: Client) -> None:
    assert_problem(client.post("/v1/services", json=["api"]), 422, "body")


def test_non_json_content_type_is_415(client: Client) -> None:
    resp = client.post(
        "/v1/services", data="name=api", content_type="application/x-www-form-urlencoded"
    )
    assert_problem(resp, 415, "Content-Type")
    assert no_services(client)


def test_oversized_body_is_413(client: Client) -> None:
    big = '{"name": "api", "description": "' + "x" * (1024 * 1024 + 10) + '"}'
    resp = client.post("/v1/services", data=big, content_type="application/json")
    assert_problem(resp, 413)
    assert no_services(client)


def test_missing_resources_are_404(client: Client) -> None:
    assert_problem(client.get("/v1/services/ghost"), 404)
    assert_problem(client.get("/v1/services/ghost/instances"), 404)
    assert_problem(client.get("/v1/services/ghost/instances/10.0.0.1:80"), 404)
    assert_problem(client.patch("/v1/services/ghost", json={}), 404)
    assert_problem(client.get("/v1/no/such/route"), 404)
    client.post("/v1/services", json={"name": "api"})
    assert_problem(client.get("/v1/services/api/instances/10.0.0.1:80"), 404)
    assert_problem(client.delete("/v1/services/api/instances/10.0.0.1:80"), 404)


def test_invalid_name_in_path_is_422(client: Client) -> None:
    assert_problem(client.get("/v1/services/Not_Valid"), 422, "name")
    assert_problem(client.get("/v1/hosts/bad_host!"), 422, "host")


@pytest.mark.parametrize(
    "query,field",
    [("limit=0", "limit"), ("limit=abc", "limit"), ("limit=5000", "limit"),
     ("cursor=!!!", "cursor"), ("cursor=eyJ4IjoxfQ", "cursor"), ("bogus=1", "bogus")],
)  # fmt: skip
def test_bad_query_parameters_are_422(client: Client, query: str, field: str) -> None:
    assert_problem(client.get(f"/v1/services?{query}"), 422, field)


def test_wrong_method_is_405_with_allow(client: Client) -> None:
    resp = client.delete("/v1/services")
    assert_problem(resp, 405)
    assert "POST" in resp.headers["Allow"]


def test_malformed_if_match_is_412(client: Client) -> None:
    client.post("/v1/services", json={"name": "api"})
    assert_problem(client.patch("/v1/services/api", json={}, headers={"If-Match": "junk"}), 412)
