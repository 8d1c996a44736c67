"""Races found in review, pinned: stale read-modify-writes, overlapping deletes, odd PATCHes."""

from __future__ import annotations

import pytest
from flask import Flask

from atlas.errors import Conflict
from atlas.registry import Registry
from tests.unit.conftest import Client


def registry(app: Flask) -> Registry:
    reg: Registry = app.extensions["atlas"].registry
    return reg


def test_service_patch_never_writes_back_fields_other_writers_own(
    app: Flask, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registry(app)
    reg.create_service({"name": "api"})
    stale = reg.models.Service.get("api", consistent_read=True)
    svc = reg.models.Service
    # a config write lands after the PATCH read what it read
    reg.store.update(svc("api"), [svc.config_version.add(1)], action="a config write")
    monkeypatch.setattr(reg, "_load_service", lambda name: stale)
    reg.update_service("api", {"owner": "team-a"})
    monkeypatch.undo()
    after = reg.get_service("api")
    assert after.owner == "team-a" and after.config_version == 1 and after.version == 2


def test_patch_of_a_service_being_deleted_is_409(app: Flask, client: Client) -> None:
    reg = registry(app)
    reg.create_service({"name": "api"})
    reg._mark_deleting("api", "someone-else", None, take_over=False)
    resp = client.patch("/v1/services/api", json={"owner": "x"})
    assert resp.status_code == 409
    assert reg.get_service("api").deleting  # the flag survived the PATCH


def test_plain_delete_cannot_undo_a_cascade_in_progress(app: Flask, client: Client) -> None:
    reg = registry(app)
    reg.create_service({"name": "api"})
    reg.put_instance("api", "10.0.0.1", 80, {})
    reg._mark_deleting("api", "cascade-1", None, take_over=True)
    assert client.delete("/v1/services/api").status_code == 409  # being deleted
    assert reg.get_service("api").deleting
    with pytest.raises(Conflict):
        reg.put_instance("api", "10.0.0.2", 80, {})
    # a cascade finishes what a crashed cascade left
    assert client.delete("/v1/services/api?cascade=true").status_code == 204
    assert client.get("/v1/services/api").status_code == 404


def test_refused_plain_delete_releases_only_its_own_mark(app: Flask, client: Client) -> None:
    reg = registry(app)
    reg.create_service({"name": "api"})
    reg.put_instance("api", "10.0.0.1", 80, {})
    assert client.delete("/v1/services/api").status_code == 409
    svc = reg.get_service("api")
    assert not svc.deleting and svc.version == 1
    assert client.put("/v1/services/api/instances/10.0.0.2:80", json={}).status_code == 201


@pytest.mark.parametrize("reason", ["left over", None])
def test_enable_with_a_reason_in_the_same_patch(client: Client, reason: str | None) -> None:
    client.post("/v1/services", json={"name": "api"})
    url = "/v1/services/api/instances/10.0.0.1:80"
    client.put(url, json={"enabled": False, "disabled_reason": "deploy"})
    resp = client.patch(url, json={"enabled": True, "disabled_reason": reason})
    assert resp.status_code == 200, resp.json
    assert resp.json["enabled"] is True and resp.json["disabled_reason"] is None


def test_a_stale_cascade_does_not_delete_a_service_created_again(
    app: Flask, client: Client
) -> None:
    """A retried cascade DELETE that lost the mark stops; it never deletes the new service."""
    reg = registry(app)
    reg.create_service({"name": "api"})
    reg.put_instance("api", "10.0.0.1", 80, {})
    real_owns = reg._owns
    calls = {"n": 0}

    def owns_after_takeover(name: str, owner: str) -> bool:
        # Before this DELETE reaches its second phase, another cascade takes the mark over.
        calls["n"] += 1
        reg._mark_deleting(name, "the-other-cascade", None, take_over=True)
        return real_owns(name, owner)

    reg._owns = owns_after_takeover  # type: ignore[method-assign]
    reg.delete_service("api", cascade=True)
    assert calls["n"] == 1
    assert client.get("/v1/services/api").status_code == 200  # not deleted by the stale one


def test_patch_retries_past_a_plain_delete_that_let_go(app: Flask, client: Client) -> None:
    reg = registry(app)
    reg.create_service({"name": "api"})
    reg._mark_deleting("api", "plain-delete", None, take_over=False)
    real_load = reg._load_service

    def load_after_release(name: str) -> object:
        reg._unmark_deleting(name, "plain-delete")  # the plain DELETE found children, let go
        return real_load(name)

    reg._load_service = load_after_release  # type: ignore[method-assign]
    resp = client.patch("/v1/services/api", json={"owner": "x"})
    assert resp.status_code == 200, resp.json
    assert resp.json["owner"] == "x"
