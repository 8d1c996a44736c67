"""The admin CLI against a real Atlas under gunicorn (moto server): every command, exit codes."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import Result

from atlas.stack import AtlasServer
from tests.admin.conftest import Cli, atlas_script, make_cli, run_script
from tests.helpers import ADMIN_TOKEN, wait_until

pytestmark = pytest.mark.integration


def _json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_services_create_ls_show_delete(cli: Cli, name: str) -> None:
    r = cli(
        "services", "create", name, "--port", "8000", "--health-check", "/health",
        "--interval", "5", "--tag", "team-a", "--owner", "team-id",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert name in r.stdout and "/health every 5s, timeout 2s" in r.stdout
    assert "team-id" in r.stdout

    r = cli("services", "create", name)
    assert r.exit_code == 1
    assert "atlas: 409 Conflict" in r.stderr and name in r.stderr

    assert cli("attach", name, "10.0.0.1:8000", "--zone", "a").exit_code == 0
    assert cli("attach", name, "10.0.0.2:8000", "--disabled", "--reason", "new").exit_code == 0

    listed = _json(cli("services", "ls", "--json"))
    assert isinstance(listed, list) and name in [s["name"] for s in listed]
    r = cli("services", "ls", "--counts")
    assert r.exit_code == 0
    row = next(line for line in r.stdout.splitlines() if line.startswith(name))
    assert "1/2 enabled" in row and "8000" in row

    r = cli("services", "show", name)
    assert r.exit_code == 0
    assert "instances (1/2 enabled):" in r.stdout
    assert "10.0.0.1:8000" in r.stdout and "10.0.0.2:8000" in r.stdout
    shown = _json(cli("services", "show", name, "--json"))
    assert isinstance(shown, dict) and len(shown["instances"]) == 2

    r = cli("services", "delete", name, "--yes")
    assert r.exit_code == 1 and "409 Conflict" in r.stderr
    r = cli("services", "delete", name)  # CliRunner's stdin is no terminal: no silent delete
    assert r.exit_code == 2 and "--yes" in r.stderr
    assert cli("services", "show", name).exit_code == 0

    version = _json(cli("services", "show", name, "--json"))["version"]
    r = cli("services", "delete", name, "--cascade", "--yes", "--if-version", str(version + 7))
    assert r.exit_code == 1 and "412 Precondition failed" in r.stderr
    r = cli("services", "delete", name, "--cascade", "--yes", "--if-version", str(version))
    assert r.exit_code == 0, r.output
    r = cli("services", "show", name)
    assert r.exit_code == 1 and "404 Not found" in r.stderr


def test_attach_disable_enable_detach(cli: Cli, name: str) -> None:
    assert cli("services", "create", name).exit_code == 0
    r = cli("attach", name, "10.0.0.1:8000", "--zone", "a", "--label", "rack=r1")
    assert r.exit_code == 0 and r.stdout.startswith(f"attached {name} 10.0.0.1:8000 (version 1)")
    r = cli("attach", name, "10.0.0.2:8000", "--zone", "b", "--weight", "50")
    assert r.exit_code == 0
    r = cli("attach", name, "10.0.0.2:8000", "--zone", "b", "--weight", "60")
    assert r.exit_code == 0 and r.stdout.startswith("replaced")
    r = cli("attach", name, "10.0.0.2:8000", "--new")
    assert r.exit_code == 1 and "412" in r.stderr

    r = cli("disable", name, "10.0.0.2:8000", "--reason", "deploying")
    assert r.exit_code == 0, r.output
    assert "disabled, reason deploying" in r.stdout

    r = cli("instances", "ls", name)
    assert r.exit_code == 0
    header, *rows = r.stdout.splitlines()
    assert header.split()[:4] == ["ID", "ENABLED", "WEIGHT", "ZONE"]
    row = next(line for line in rows if line.startswith("10.0.0.2:8000"))
    assert " no " in row and "deploying" in row and " ago)" in row and " 60 " in row
    row1 = next(line for line in rows if line.startswith("10.0.0.1:8000"))
    assert "rack=r1" in row1 and " yes " in row1

    items = _json(cli("instances", "ls", name, "--json"))
    assert isinstance(items, list)
    by_id = {i["id"]: i for i in items}
    assert by_id["10.0.0.2:8000"]["enabled"] is False
    assert by_id["10.0.0.2:8000"]["disabled_reason"] == "deploying"
    version = by_id["10.0.0.2:8000"]["version"]

    r = cli("enable", name, "10.0.0.2:8000", "--if-version", str(version - 1))
    assert r.exit_code == 1
    assert "412 Precondition failed" in r.stderr and "hint: the resource changed" in r.stderr
    r = cli("enable", name, "10.0.0.2:8000", "--if-version", str(version), "--json")
    assert r.exit_code == 0
    enabled = json.loads(r.stdout)
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None

    r = cli("detach", name, "[2001:db8::1]:8000")
    assert r.exit_code == 1 and "404 Not found" in r.stderr
    assert cli("detach", name, "10.0.0.1:8000").exit_code == 0
    items = _json(cli("instances", "ls", name, "--json"))
    assert [i["id"] for i in items] == ["10.0.0.2:8000"]


def test_disable_for_duration_sends_disabled_until(cli: Cli, name: str) -> None:
    assert cli("services", "create", name).exit_code == 0
    assert cli("attach", name, "10.0.0.1:8000").exit_code == 0
    before = datetime.now(UTC)
    r = cli("disable", name, "10.0.0.1:8000", "--for", "30m", "--reason", "kernel update")
    assert r.exit_code == 0, r.output
    assert "reason kernel update, until " in r.stdout
    (item,) = _json(cli("instances", "ls", name, "--json"))
    assert item["enabled"] is False and item["disabled_reason"] == "kernel update"
    until = datetime.fromisoformat(item["disabled_until"])
    assert before + timedelta(minutes=29) < until < datetime.now(UTC) + timedelta(minutes=31)
    r = cli("instances", "ls", name)
    assert "UNTIL" in r.stdout.splitlines()[0] and item["disabled_until"] in r.stdout
    # enabling by hand clears it
    on = _json(cli("enable", name, "10.0.0.1:8000", "--json"))
    assert on["enabled"] is True and on["disabled_until"] is None

    r = cli("disable", name, "10.0.0.1:8000", "--for", "30 minutes")
    assert r.exit_code == 2 and "not a duration like 30m" in r.stderr
    r = cli("disable", name, "10.0.0.1:8000", "--for", "31d")
    assert r.exit_code == 2 and "at most 30d" in r.stderr
    assert _json(cli("instances", "ls", name, "--json"))[0]["enabled"] is True


def test_min_enabled_refusals_and_force(cli: Cli, name: str) -> None:
    r = cli("services", "create", name, "--min-enabled", "2")
    assert r.exit_code == 0 and "min enabled:  2" in r.stdout
    for n in (1, 2, 3):
        assert cli("attach", name, f"10.0.0.{n}:8000").exit_code == 0
    assert cli("disable", name, "10.0.0.1:8000").exit_code == 0
    r = cli("disable", name, "10.0.0.2:8000", "--reason", "deploy")
    assert r.exit_code == 1
    assert "409 Too few instances would stay enabled" in r.stderr
    assert f"service '{name}' must keep 2 enabled instances" in r.stderr
    assert "this would leave 1" in r.stderr and "--force does it anyway" in r.stderr
    problem = json.loads(cli("detach", name, "10.0.0.2:8000", "--json").stderr)
    assert problem["refused"] == [{"service": name, "min_enabled": 2, "enabled_after": 1}]
    assert cli("drain", name, "10.0.0.2:8000").exit_code == 1
    r = cli("drain", name, "10.0.0.2:8000", "--force")
    assert r.exit_code == 0 and "draining (no new requests)" in r.stdout
    r = cli("instances", "ls", name)
    assert "DRAIN" in r.stdout.splitlines()[0]
    assert cli("drain", name, "10.0.0.2:8000", "--undo").exit_code == 0
    assert cli("disable", name, "10.0.0.2:8000", "--force").exit_code == 0
    assert cli("detach", name, "10.0.0.3:8000").exit_code == 1
    r = cli("services", "update", name, "--min-enabled", "0")
    assert r.exit_code == 0 and "min enabled:  0" in r.stdout
    assert cli("detach", name, "10.0.0.3:8000").exit_code == 0
    assert cli("services", "update", name).exit_code == 2  # nothing to change
    r = cli("attach", name, "10.0.0.4:8000", "--slow-start", "30", "--drain")
    assert r.exit_code == 0 and "slow start 30s" in r.stdout
    inst = _json(cli("instances", "ls", name, "--json"))[-1]
    assert (inst["id"], inst["drain"], inst["slow_start_s"]) == ("10.0.0.4:8000", True, 30)


def test_hosts_disable_checks_every_service_and_takes_for(cli: Cli) -> None:
    host = f"h-{uuid.uuid4().hex[:8]}.test"
    a, b = f"svc-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:8]}"
    assert cli("services", "create", a).exit_code == 0
    assert cli("services", "create", b, "--min-enabled", "1").exit_code == 0
    for svc in (a, b):
        assert cli("attach", svc, f"{host}:8000").exit_code == 0
    r = cli("hosts", "disable", host, "--reason", "disk")
    assert r.exit_code == 1 and f"service '{b}'" in r.stderr and "leave 0" in r.stderr
    items = _json(cli("hosts", "show", host, "--json"))["items"]
    assert all(i["enabled"] for i in items)  # nothing written, not even a's
    r = cli("hosts", "disable", host, "--reason", "disk", "--for", "1h", "--force", "--json")
    assert r.exit_code == 0, r.output
    items = json.loads(r.stdout)["items"]
    assert [i["enabled"] for i in items] == [False, False]
    assert all(i["disabled_until"] for i in items)


def test_hosts_show_disable_enable(cli: Cli) -> None:
    host = f"h-{uuid.uuid4().hex[:8]}.test"
    a, b = f"svc-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:8]}"
    for svc in (a, b):
        assert cli("services", "create", svc).exit_code == 0
        assert cli("attach", svc, f"{host}:8000").exit_code == 0
    r = cli("hosts", "show", host)
    assert r.exit_code == 0
    assert f"host {host}: 2/2 enabled" in r.stdout and a in r.stdout and b in r.stdout

    r = cli("hosts", "disable", host, "--reason", "disk failing")
    assert r.exit_code == 0 and "disabled 2 instance(s)" in r.stdout
    body = _json(cli("hosts", "show", host, "--json"))
    assert {i["service"]: i["disabled_reason"] for i in body["items"]} == {
        a: "disk failing",
        b: "disk failing",
    }
    r = cli("hosts", "show", host)
    assert f"host {host}: 0/2 enabled" in r.stdout and "disk failing" in r.stdout

    assert cli("hosts", "enable", host).exit_code == 0
    assert f"host {host}: 2/2 enabled" in cli("hosts", "show", host).stdout
    r = cli("hosts", "show", "not a host")
    assert r.exit_code == 1 and "422 Validation failed" in r.stderr and "host:" in r.stderr


def test_config_secrets_never_from_argv_masked_unless_revealed(cli: Cli, name: str) -> None:
    assert cli("services", "create", name).exit_code == 0
    r = cli("config", "set", name, "DB_URL", "postgres://db.local/my")
    assert r.exit_code == 0 and "version 1)" in r.stdout

    r = cli("config", "set", name, "DB_PASSWORD", "hunter2", "--secret")
    assert r.exit_code == 2 and "never taken from the command line" in r.stderr
    r = cli("config", "get", name, "DB_PASSWORD")
    assert r.exit_code == 1 and "404" in r.stderr  # the refused call wrote nothing

    r = cli("config", "set", name, "DB_PASSWORD", "--secret", input="hunter2\n")
    assert r.exit_code == 0 and "secret)" in r.stdout
    r = cli("config", "set", name, "DB_PASSWORD", "--secret", input="")
    assert r.exit_code == 2 and "no value for DB_PASSWORD on stdin" in r.stderr

    r = cli("config", "get", name, "DB_PASSWORD")
    assert r.exit_code == 0
    assert "hunter2" not in r.output and "(secret, hidden" in r.stdout
    masked = _json(cli("config", "get", name, "DB_PASSWORD", "--json"))
    assert masked["secret"] is True and "value" not in masked

    def secret_reads() -> list[str]:
        records = _json(cli("audit", "--service", name, "--json", "--limit", "200"))
        return [str(x["target"]) for x in records if "secrets read" in str(x["target"])]

    r = cli("config", "get", name, "DB_PASSWORD", "--reveal")
    assert r.exit_code == 0 and "hunter2" in r.stdout
    revealed = _json(cli("config", "get", name, "DB_PASSWORD", "--reveal", "--json"))
    assert revealed["value"] == "hunter2"
    # Audit records are written in the background: wait for the two reveals; the masked reads
    # before them (text and --json) opened nothing, so they left no record.
    reads = wait_until(lambda: len(secret_reads()) >= 2 and secret_reads(), what="secret reads")
    assert reads == ["secrets read: DB_PASSWORD@1"] * 2

    r = cli("config", "set", name, "LIMITS", '{"rps": 5}', "--json-value")
    assert r.exit_code == 0
    assert _json(cli("config", "get", name, "LIMITS", "--json"))["value"] == {"rps": 5}
    r = cli("config", "set", name, "LIMITS", "{rps", "--json-value")
    assert r.exit_code == 2 and "not valid JSON" in r.stderr
    r = cli("config", "set", name, "BAD KEY", "x")
    assert r.exit_code == 1 and "422" in r.stderr and "key:" in r.stderr

    assert cli("config", "set", name, "DB_PASSWORD", "--secret", input="s3cret\n").exit_code == 0
    r = cli("config", "history", name, "DB_PASSWORD")
    assert r.exit_code == 0
    assert "hunter2" not in r.output and "s3cret" not in r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "SECRET", "DELETED"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "1"]

    r = cli("config", "unset", name, "DB_URL", "--if-version", "9")
    assert r.exit_code == 1 and "412" in r.stderr
    assert cli("config", "unset", name, "DB_URL").exit_code == 0
    r = cli("config", "get", name, "DB_URL")
    assert r.exit_code == 1 and "deleted" in r.stderr
    r = cli("config", "get", name, "DB_URL", "--version", "1")
    assert r.exit_code == 0 and "postgres://db.local/my" in r.stdout
    r = cli("config", "get", name, "DB_PASSWORD", "--version", "1")
    assert r.exit_code == 0 and "hunter2" not in r.output


def test_tokens_issue_ls_revoke(cli: Cli, name: str, shared_atlas: AtlasServer) -> None:
    assert cli("services", "create", name).exit_code == 0
    assert cli("config", "set", name, "GREETING", "hello").exit_code == 0
    r = cli("tokens", "issue", name, "--description", "ci deploys")
    assert r.exit_code == 0
    token = r.stdout.strip()
    assert "\n" not in token and len(token) >= 20
    assert "issued tok_" in r.stderr and "shown this once" in r.stderr

    listed = _json(cli("tokens", "ls", name, "--json"))
    assert [t["description"] for t in listed] == ["ci deploys"]
    token_id = listed[0]["id"]
    r = cli("tokens", "ls", name)
    assert token_id in r.stdout and token not in r.stdout

    as_service = make_cli(shared_atlas.url, token)
    r = as_service("config", "get", name, "GREETING")
    assert r.exit_code == 0 and "hello" in r.stdout
    r = as_service("services", "create", f"{name}-x")
    assert r.exit_code == 1 and "403 Forbidden" in r.stderr

    assert cli("tokens", "revoke", name, token_id).exit_code == 0
    assert _json(cli("tokens", "ls", name, "--json")) == []
    # This Atlas has no ZooKeeper: the other worker may answer from its cached lookup for up
    # to ATLAS_TOKEN_CACHE_UNWATCHED_S (1 s), the documented bound without a revocation stamp.
    r = wait_until(
        lambda: (r := as_service("config", "get", name, "GREETING")).exit_code == 1 and r,
        timeout=10, what="revoked token refused",
    )  # fmt: skip
    assert "401 Unauthorized" in r.stderr
    r = cli("tokens", "revoke", name, "nope")
    assert r.exit_code == 1 and "token_id:" in r.stderr


def test_audit_and_error_output(cli: Cli, name: str, shared_atlas: AtlasServer) -> None:
    assert cli("services", "create", name).exit_code == 0
    assert cli("attach", name, "10.1.0.1:80").exit_code == 0
    action = "PUT /v1/services/{name}/instances/{instance}"
    r = wait_until(
        lambda: (r := cli("audit", "--service", name)).exit_code == 0 and action in r.stdout and r,
        what="the attach in the audit trail",
    )
    assert "10.1.0.1:80" in r.stdout

    r = cli("services", "create", "Bad_Name")
    assert r.exit_code == 1
    assert "422 Validation failed" in r.stderr and "  name: " in r.stderr
    r = cli("services", "create", name, "--json")
    assert r.exit_code == 1 and r.stdout == ""
    problem = json.loads(r.stderr)
    assert problem["status"] == 409 and problem["title"] == "Conflict"

    anonymous = make_cli(shared_atlas.url, None)
    r = anonymous("services", "ls")
    assert r.exit_code == 1
    assert "401 Unauthorized" in r.stderr and "hint: pass --token" in r.stderr
    r = cli("services", "ls", "--url", "ftp://x")
    assert r.exit_code == 2 and "http(s) URL" in r.stderr


def test_console_script_subprocess(shared_atlas: AtlasServer, name: str) -> None:
    env = {"ATLAS_URL": shared_atlas.url, "ATLAS_TOKEN": ADMIN_TOKEN}
    p = run_script(["services", "create", name, "--json"], env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["name"] == name
    p = run_script(["services", "ls", "--json"], env)
    assert p.returncode == 0 and name in [s["name"] for s in json.loads(p.stdout)]
    p = run_script(["services", "create", name], env)
    assert p.returncode == 1 and "409 Conflict" in p.stderr
    p = run_script(["attach", name, "no-port"], env)
    assert p.returncode == 2 and "HOST:PORT" in p.stderr
    p = run_script(["config", "set", name, "API_KEY", "--secret"], env, input="k-123\n")
    assert p.returncode == 0 and "k-123" not in p.stdout + p.stderr
    p = run_script(["services", "ls"], {"ATLAS_URL": "http://127.0.0.1:9"})
    assert p.returncode == 1 and "cannot reach Atlas" in p.stderr
    # the argparse commands of `atlas` still answer beside the hook
    p = run_script(["settings"], {})
    assert p.returncode == 0 and "ATLAS_REALM=" in p.stdout


def test_shell_completion_from_the_api(shared_atlas: AtlasServer, name: str, cli: Cli) -> None:
    assert cli("services", "create", name).exit_code == 0
    assert cli("attach", name, "10.2.0.1:80").exit_code == 0
    env = {"ATLAS_URL": shared_atlas.url, "ATLAS_TOKEN": ADMIN_TOKEN}
    p = run_script([], {**env, "_ATLAS_COMPLETE": "bash_source"})
    assert p.returncode == 0 and "_atlas_completion" in p.stdout

    def complete(words: str) -> list[str]:
        cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        p = run_script(
            [],
            {**env, "_ATLAS_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword},
        )
        assert p.returncode == 0, p.stderr
        return [line.split(",", 1)[1] for line in p.stdout.splitlines() if "," in line]

    assert "services" in complete("atlas serv")
    assert complete(f"atlas services show {name[:-2]}") == [name]
    assert complete(f"atlas disable {name} 10.2") == ["10.2.0.1:80"]
    # Atlas unreachable: no candidates, no error text in the user's shell line
    p = run_script(
        [],
        {"ATLAS_URL": "http://127.0.0.1:9", "_ATLAS_COMPLETE": "bash_complete",
         "COMP_WORDS": "atlas services show s", "COMP_CWORD": "3"},
    )  # fmt: skip
    assert p.returncode == 0 and p.stdout.strip() == "" and p.stderr == ""


def _read_until(fd: int, needle: bytes, timeout: float = 60.0) -> bytes:
    """Read a pty until needle appears (the prompt), failing after a generous timeout."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_secret_from_a_hidden_prompt_on_a_terminal(
    shared_atlas: AtlasServer, name: str, cli: Cli
) -> None:
    assert cli("services", "create", name).exit_code == 0
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update({"ATLAS_URL": shared_atlas.url, "ATLAS_TOKEN": ADMIN_TOKEN})
    proc = subprocess.Popen(
        [atlas_script(), "config", "set", name, "DB_PASSWORD", "--secret"],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    try:
        seen = _read_until(master, b"value of DB_PASSWORD:")
        os.write(master, b"typed-secret-42\n")
        seen += _read_until(master, b"Repeat for confirmation:")
        os.write(master, b"typed-secret-42\n")
        seen += _read_until(master, b"secret)")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"typed-secret-42" not in seen  # the terminal did not echo it
    r = cli("config", "get", name, "DB_PASSWORD", "--reveal", "--json")
    assert json.loads(r.stdout)["value"] == "typed-secret-42"
