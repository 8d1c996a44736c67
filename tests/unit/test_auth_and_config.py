"""Auth (401/constant-time admin tokens) and start-up validation of settings."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from atlas.api.auth import Authenticator, Principal
from atlas.config import ConfigError, ServeSettings, Settings
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


def test_scan_settings_make_the_registrys_scan_policy() -> None:
    from atlas.registry import ScanPolicy

    s = Settings.from_env({"ATLAS_AUTH_DISABLED": "true", "ATLAS_SCAN_SEGMENTS": "4",
                           "ATLAS_SCAN_PAGE_SIZE": "200"})  # fmt: skip
    policy = ScanPolicy.of(s)
    assert (policy.segments, policy.page_size) == (4, 200)
    with pytest.raises(ConfigError, match="ATLAS_SCAN_SEGMENTS"):
        Settings.from_env({"ATLAS_AUTH_DISABLED": "true", "ATLAS_SCAN_SEGMENTS": "0"})


def test_cli_refuses_bad_configuration(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from atlas import cli

    monkeypatch.setenv("ATLAS_REALM", "production")
    monkeypatch.setenv("ATLAS_AUTH_DISABLED", "true")
    with pytest.raises(SystemExit) as exc:
        cli.main(["migrate"])
    assert exc.value.code == 2
    assert "configuration error" in capsys.readouterr().err


# ------------------------------------------------------------------ settings (pydantic-settings)


@pytest.mark.parametrize(
    "env,message",
    [
        ({"ATLAS_WORKERS": "abc"}, "ATLAS_WORKERS: expected an integer, got 'abc'"),
        ({"ATLAS_WORKERS": "0"}, "ATLAS_WORKERS: must be between 1 and 256, got '0'"),
        ({"ATLAS_THREADS": "4.5"}, "ATLAS_THREADS: expected an integer, got '4.5'"),
        ({"ATLAS_BIND": "8080"}, "ATLAS_BIND: expected host:port or unix:PATH, got '8080'"),
    ],
)
def test_serve_settings_errors_are_one_line_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        ServeSettings.from_env(env)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    "env,message",
    [
        ({"ATLAS_ZK_TIMEOUT_S": "nan"}, "ATLAS_ZK_TIMEOUT_S: expected a number, got 'nan'"),
        (
            {"ATLAS_RECONCILE_INTERVAL_S": "1e9"},
            "ATLAS_RECONCILE_INTERVAL_S: must be between 0.1 and 86400, got '1e9'",
        ),
        ({"ATLAS_RECONCILER": "sometimes"}, "ATLAS_RECONCILER: expected a boolean"),
        ({"ATLAS_LOG_LEVEL": "loud"}, "ATLAS_LOG_LEVEL: expected 'DEBUG', 'INFO'"),
        ({"ATLAS_KEY_PROVIDER": "vault"}, "ATLAS_KEY_PROVIDER: expected 'kms' or 'local'"),
        ({"ATLAS_AUDIT_QUEUE_SIZE": "-1"}, "ATLAS_AUDIT_QUEUE_SIZE: must be between 1 and"),
        ({"ATLAS_PAGE_LIMIT_DEFAULT": "2000"}, "must not exceed ATLAS_PAGE_LIMIT_MAX"),
    ],
)
def test_every_bound_lives_beside_its_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"ATLAS_AUTH_DISABLED": "true", **env})
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_bad_admin_token_is_never_echoed() -> None:
    secret = "tooshort-secret"
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"ATLAS_REALM": "prod", "ATLAS_ADMIN_TOKENS": f"{ADMIN_TOKEN},{secret}"})
    assert "ATLAS_ADMIN_TOKENS" in str(exc.value)
    assert secret not in str(exc.value) and ADMIN_TOKEN not in str(exc.value)


def test_keyword_construction_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_REALM", "elsewhere")
    monkeypatch.setenv("ATLAS_ZK_HOSTS", "127.0.0.1:1")
    s = Settings(realm="local", auth_disabled=True)
    assert (s.realm, s.zk_hosts) == ("local", "")
    # from_env reads os.environ by default, and keywords win over it.
    e = Settings.from_env(admin_tokens=(ADMIN_TOKEN,), zk_hosts="127.0.0.1:2")
    assert (e.realm, e.zk_hosts, e.table_prefix) == ("elsewhere", "127.0.0.1:2", "atlas-elsewhere-")


def test_from_env_parses_types_and_with_overrides_validates_again() -> None:
    s = Settings.from_env(
        {
            "ATLAS_AUTH_DISABLED": "yes",
            "ATLAS_RECONCILER": "off",
            "ATLAS_LOG_LEVEL": "debug",
            "ATLAS_ZK_TIMEOUT_S": " 2.5 ",
            "ATLAS_MAX_BODY_BYTES": "2048",
            "ATLAS_URL": "http://ignored: a client variable, not a server setting",
        }
    )
    assert s.auth_disabled and not s.reconciler_enabled
    assert (s.log_level, s.zk_timeout_s, s.max_body_bytes) == ("DEBUG", 2.5, 2048)
    assert s.kms_key_id == "alias/atlas-local"
    assert s.with_overrides(max_body_bytes=4096).max_body_bytes == 4096
    with pytest.raises(ConfigError, match="ATLAS_MAX_BODY_BYTES: must be between"):
        s.with_overrides(max_body_bytes=1)
    with pytest.raises(ConfigError, match="ATLAS_BOGUS: no such setting"):
        Settings(auth_disabled=True, bogus=1)


# ------------------------------------------------------------------------------- the CLI (click)


def test_cli_is_a_click_group_that_takes_new_commands_in_one_line() -> None:
    from atlas.cli import cli

    assert isinstance(cli, click.Group)
    assert {"migrate", "serve", "dev", "reconcile", "settings"} <= set(cli.commands)

    @click.command("hello")
    def hello() -> None:
        """Say hello."""
        click.echo("hello from a plugged-in command")

    cli.add_command(hello)
    try:
        result = CliRunner().invoke(cli, ["hello"])
    finally:
        cli.commands.pop("hello")
    assert result.exit_code == 0 and "hello from a plugged-in command" in result.output


def test_every_option_of_every_command_has_help() -> None:
    from atlas.cli import cli

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            assert command.help, prefix + name
            for param in command.params:
                # A click argument has no help of its own: the usage line names it.
                if isinstance(param, click.Argument):
                    assert param.human_readable_name in command.get_usage(click.Context(command))
                    continue
                assert isinstance(param, click.Option) and param.help, (prefix + name, param.name)
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")

    walk(cli, "")
    assert "--once" not in [o for p in cli.commands["reconcile"].params for o in p.opts]


def test_dev_help_documents_its_flags() -> None:
    from atlas.cli import cli

    out = CliRunner().invoke(cli, ["dev", "--help"]).output
    for flag in ("--data-dir", "--api-port", "--dynamodb-port", "--zk-port", "--sidecar-port"):
        assert flag in out
    assert "ATLAS_DEV_DATA" in out and "[default: 8080]" in out


def test_settings_command_prints_every_variable_with_default_and_meaning() -> None:
    from atlas.cli import cli

    result = CliRunner().invoke(cli, ["settings"], env={"ATLAS_ADMIN_TOKENS": ADMIN_TOKEN})
    assert result.exit_code == 0
    lines = {
        line.split()[0]: line for line in result.output.splitlines() if line.startswith("ATLAS")
    }
    for cls in (Settings, ServeSettings):
        for name, default, meaning in cls.documented():
            assert name in lines and default in lines[name] and meaning in lines[name]
    assert "ATLAS_MIGRATIONS_DIR" in lines and "ATLAS_RECONCILER" in lines
    assert lines["ATLAS_AUTH_DISABLED"].split()[1] == "false"
    assert lines["ATLAS_ZK_TIMEOUT_S"].split()[1] == "10"
    for repr_like in ("()", "''", "False", "10.0", "None"):
        assert repr_like not in result.output
    assert ADMIN_TOKEN not in result.output


def test_cli_reconcile_without_zookeeper_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas.cli import cli

    result = CliRunner().invoke(
        cli, ["reconcile"], env={"ATLAS_AUTH_DISABLED": "true", "ATLAS_ZK_HOSTS": ""}
    )
    assert result.exit_code == 2 and "ATLAS_ZK_HOSTS is not set" in result.output


def test_cli_serve_refuses_bad_settings_before_gunicorn() -> None:
    from atlas.cli import cli

    result = CliRunner().invoke(
        cli, ["serve"], env={"ATLAS_AUTH_DISABLED": "true", "ATLAS_WORKERS": "abc"}
    )
    assert result.exit_code == 2
    assert "atlas: configuration error: ATLAS_WORKERS: expected an integer, got 'abc'" in (
        result.output
    )
