"""Auth (401/constant-time admin tokens) and start-up validation of settings."""

from __future__ import annotations

import pytest

from atlas.api.auth import Authenticator, Principal
from atlas.config import ConfigError, Settings
from atlas.contract import Layout
from atlas.errors import Forbidden, Unauthorized
from tests.helpers import ADMIN_TOKEN
from tests.unit.conftest import Client


def test_v1_without_token_is_401_problem(anon: Client) -> None:
    resp = anon.get("/v1/services")
    assert resp.status_code == 401
    assert resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header", ["Bearer wrong-token-0123456789", "Basic abc", "Bearer", ADMIN_TOKEN]
)
def test_bad_tokens_are_401(anon: Client, header: str) -> None:
    resp = anon.get("/v1/services", headers={"Authorization": header})
    assert resp.status_code == 401


def test_probes_are_public(anon: Client) -> None:
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/readyz").json["status"] == "ready"
    assert anon.get("/openapi.yaml").status_code == 200


def test_unauthenticated_write_writes_nothing(anon: Client, client: Client) -> None:
    assert anon.post("/v1/services", json={"name": "api"}).status_code == 401
    assert client.get("/v1/services").json["items"] == []


def test_service_principals_may_only_read() -> None:
    Authenticator.authorize(Principal("service", "tok_x", "api"), write=False)
    with pytest.raises(Forbidden):
        Authenticator.authorize(Principal("service", "tok_x", "api"), write=True)


def test_authenticator_accepts_any_configured_admin_token() -> None:
    other = "second-admin-token-abcdefgh"
    auth = Authenticator(Settings(realm="prod", admin_tokens=(ADMIN_TOKEN, other)))
    assert auth.authenticate(f"Bearer {other}").is_admin
    assert auth.authenticate(f"bearer {ADMIN_TOKEN}").token_id.startswith("tok_")
    with pytest.raises(Unauthorized):
        auth.authenticate(f"Bearer {other}x")


def test_auth_can_be_disabled_only_in_local_realm() -> None:
    assert Settings(realm="local", auth_disabled=True).auth_disabled
    with pytest.raises(ConfigError, match="only in the 'local' realm"):
        Settings(realm="production", auth_disabled=True)


@pytest.mark.parametrize(
    "env,message",
    [
        ({"ATLAS_REALM": "Prod!"}, "ATLAS_REALM"),
        ({"ATLAS_REALM": "prod"}, "ATLAS_ADMIN_TOKENS"),
        ({"ATLAS_ADMIN_TOKENS": "short"}, "at least 16"),
        ({"ATLAS_AUTH_DISABLED": "maybe"}, "ATLAS_AUTH_DISABLED"),
        ({"ATLAS_MAX_BODY_BYTES": "lots", "ATLAS_AUTH_DISABLED": "1"}, "ATLAS_MAX_BODY_BYTES"),
        ({"ATLAS_ZK_TIMEOUT_S": "0", "ATLAS_AUTH_DISABLED": "1"}, "ATLAS_ZK_TIMEOUT_S"),
        ({"ATLAS_DYNAMODB_ENDPOINT": "localhost:8000", "ATLAS_AUTH_DISABLED": "1"}, "ENDPOINT"),
    ],
)
def test_bad_settings_stop_startup_with_a_clear_message(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_settings_defaults_and_table_prefix() -> None:
    s = Settings.from_env({"ATLAS_REALM": "test", "ATLAS_ADMIN_TOKENS": f" {ADMIN_TOKEN} ,"})
    assert s.table_prefix == "atlas-test-"
    assert s.admin_tokens == (ADMIN_TOKEN,)
    assert Layout(s.realm).root == "/atlas/test"


def test_cli_refuses_bad_configuration(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from atlas import cli

    monkeypatch.setenv("ATLAS_REALM", "production")
    monkeypatch.setenv("ATLAS_AUTH_DISABLED", "true")
    with pytest.raises(SystemExit) as exc:
        cli.main(["migrate"])
    assert exc.value.code == 2
    assert "configuration error" in capsys.readouterr().err
