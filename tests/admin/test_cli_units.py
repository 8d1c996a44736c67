"""Admin CLI pieces without a server: durations, tables, problems, usage errors, imports."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import requests
from click.testing import CliRunner

from atlas.admin.api import ApiError, segment
from atlas.admin.cli import INSTANCE, admin, describe
from atlas.admin.output import ago, block, human_duration, parse_duration, rfc3339, table

NOWHERE = {"ATLAS_URL": "http://127.0.0.1:9", "ATLAS_TOKEN": "x" * 20}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h30m", 5400), ("2d", 172800), ("45s", 45), ("1d2h3m4s", 93784)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "30x", "m", "0m", "1m30h", "366d", "-5m", "30 m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_times() -> None:
    now = datetime(2026, 5, 1, 10, 0, 0, tzinfo=UTC)
    assert rfc3339(now + timedelta(minutes=30)) == "2026-05-01T10:30:00.000Z"
    assert ago("2026-05-01T09:58:30.000Z", now) == "2026-05-01T09:58:30.000Z (1m30s ago)"
    assert ago("2026-05-01T12:00:00.000Z", now).endswith("(2h from now)")
    assert ago("not a time", now) == "not a time" and ago(None, now) == "-"
    assert human_duration(0) == "0s" and human_duration(90061) == "1d1h"


def test_table_aligns_and_keeps_one_line_per_row() -> None:
    out = table(
        ["id", "enabled", "reason"],
        [["10.0.0.1:80", True, None], ["h:1", False, "two\nlines\tand tab"]],
    )
    lines = out.splitlines()
    assert lines == [
        "ID           ENABLED  REASON",
        "10.0.0.1:80  yes      -",
        "h:1          no       two lines and tab",
    ]
    assert table(["x"], [["y" * 100]]).splitlines()[1].endswith("…")
    assert block([("a", 1), ("long key", "")]) == "a:        1\nlong key: -"


def test_describe_prints_title_detail_fields_and_hints() -> None:
    exc = ApiError(
        422,
        "Validation failed",
        "invalid field(s): disabled_until, weight",
        {"weight": ["Must be between 0 and 256."], "disabled_until": ["Unknown field."]},
    )
    text = describe(exc)
    assert text.splitlines()[:3] == [
        "atlas: 422 Validation failed: invalid field(s): disabled_until, weight",
        "  disabled_until: Unknown field.",
        "  weight: Must be between 0 and 256.",
    ]
    assert "does not accept disabled_until" in text
    assert describe(ApiError(404, "Not found", "")) == "atlas: 404 Not found"


def test_problem_from_a_reply_that_is_not_json() -> None:
    resp = requests.Response()
    resp.status_code = 502
    resp.reason = "Bad Gateway"
    resp._content = b"<html><body>\n  upstream   down</body></html>"
    exc = ApiError.from_response(resp)
    assert (exc.status, exc.title) == (502, "Bad Gateway")
    assert exc.detail == "<html><body> upstream down</body></html>"
    resp._content = json.dumps({"status": 409, "title": "Conflict", "detail": "d"}).encode()
    assert str(ApiError.from_response(resp)) == "409 Conflict: d"


def test_path_segments_are_encoded() -> None:
    assert segment("a/b?c#d") == "a%2Fb%3Fc%23d"
    assert segment("[2001:db8::1]:80") == "[2001:db8::1]:80"


def test_instance_argument_is_normalized() -> None:
    assert INSTANCE.convert("[2001:DB8::1]:8080", None, None) == "[2001:db8::1]:8080"
    assert INSTANCE.convert("Host.Example:80", None, None) == "host.example:80"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["disable", "svc", "10.0.0.1"], "is not HOST:PORT"),
        (["disable", "svc", "10.0.0.1:99999"], "port"),
        (["disable", "svc", "10.0.0.1:80", "--for", "soon"], "not a duration"),
        (["config", "set", "svc", "PASSWORD", "hunter2", "--secret"], "never taken"),
        (["attach", "svc", "h:80", "--reason", "x"], "--reason goes with --disabled"),
        (["attach", "svc", "h:80", "--label", "novalue"], "KEY=VALUE"),
        (["services", "create", "svc", "--interval", "5"], "need --health-check"),
        (["services", "ls", "--url", "127.0.0.1:8080"], "http(s) URL"),
        (["services", "frobnicate"], "No such command"),
        (["enable", "svc", "h:80", "--if-version", "0"], "--if-version"),
    ],
)
def test_usage_errors_exit_2_before_any_request(args: list[str], needle: str) -> None:
    result = CliRunner(env=NOWHERE).invoke(admin, args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert "hunter2" not in result.output


def test_unreachable_atlas_exits_1_with_the_url() -> None:
    result = CliRunner(env=NOWHERE).invoke(admin, ["services", "ls"])
    assert result.exit_code == 1
    assert "cannot reach Atlas at http://127.0.0.1:9" in result.stderr
    result = CliRunner(env=NOWHERE).invoke(admin, ["services", "ls", "--json"])
    assert result.exit_code == 1 and json.loads(result.stderr)["title"] == "Unreachable"


def test_admin_ships_without_flask_pynamodb_or_boto3() -> None:
    code = (
        "import sys, atlas.admin.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'pynamodb', 'boto3', 'botocore', 'werkzeug', 'kazoo')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
