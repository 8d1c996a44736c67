"""An operator's session with the real `atlas` console script against a real Atlas (own realm).

The transcript (commands, their output, exit codes) is written to
`tests/.artifacts/cli-walkthrough.txt` (or `$ATLAS_ARTIFACT_DIR`) and under the
test's tmp dir; the test prints both paths.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.admin.conftest import ARTIFACTS, run_script
from tests.helpers import ADMIN_TOKEN, wait_until
from tests.integration.conftest import StartAtlas

pytestmark = pytest.mark.integration


class Session:
    """Runs `atlas` commands as subprocesses and keeps a shell-like transcript."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lines: list[str] = []

    def run(self, *args: str, stdin: str | None = None, expect: int = 0) -> str:
        """Run one command, record it, check its exit code, return its stdout."""
        shown = "atlas " + shlex.join(args)
        if stdin is not None:
            shown = "printf '" + stdin.replace("\n", "\\n") + "' | " + shown
        p = run_script(list(args), self.env, input=stdin)
        self.lines.append(f"$ {shown}")
        output = (p.stdout + p.stderr).rstrip("\n")
        if output:
            self.lines += output.split("\n")
        if p.returncode:
            self.lines.append(f"[exit {p.returncode}]")
        self.lines.append("")
        assert p.returncode == expect, f"{shown}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p.stdout

    def write(self, *paths: Path) -> None:
        """Write the transcript to each path."""
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(self.lines))


def test_walkthrough_session(start_atlas: StartAtlas, tmp_path: Path) -> None:
    server = start_atlas("walkthrough")
    s = Session({"ATLAS_URL": server.url, "ATLAS_TOKEN": ADMIN_TOKEN})
    try:
        out = s.run(
            "services", "create", "identity", "--port", "8000", "--health-check", "/health",
            "--owner", "team-identity",
        )  # fmt: skip
        assert "identity" in out
        s.run("attach", "identity", "10.0.0.1:8000", "--zone", "a")
        s.run("attach", "identity", "10.0.0.2:8000", "--zone", "b", "--weight", "50")
        out = s.run("disable", "identity", "10.0.0.2:8000", "--reason", "deploying v42")
        assert "reason deploying v42" in out
        out = s.run("instances", "ls", "identity")
        assert "deploying v42" in out
        out = s.run("hosts", "show", "10.0.0.2")
        assert "host 10.0.0.2: 0/1 enabled" in out
        # guard rails: a floor of enabled instances, timed disables, drain and slow start
        s.run("services", "update", "identity", "--min-enabled", "1")
        out = s.run("disable", "identity", "10.0.0.1:8000", "--reason", "kernel", expect=1)
        s.run("enable", "identity", "10.0.0.2:8000")
        out = s.run("disable", "identity", "10.0.0.1:8000", "--for", "30m", "--reason", "kernel")
        assert "until " in out
        s.run("attach", "identity", "10.0.0.3:8000", "--zone", "a", "--slow-start", "30")
        s.run("drain", "identity", "10.0.0.2:8000")
        s.run("hosts", "disable", "10.0.0.3", "--reason", "disk failing", expect=1)
        out = s.run("instances", "ls", "identity")
        assert "UNTIL" in out and "DRAIN" in out and "SLOW START" in out
        s.run("enable", "identity", "10.0.0.1:8000")
        s.run("config", "set", "identity", "DB_PASSWORD", "--secret", stdin="hunter2\n")
        s.run("config", "set", "identity", "DATABASE_URL", "postgres://db.local/identity")
        out = s.run("config", "get", "identity", "DB_PASSWORD")
        assert "hunter2" not in out and "hidden" in out
        out = s.run("config", "get", "identity", "DB_PASSWORD", "--reveal")
        assert "hunter2" in out
        s.run("config", "set", "identity", "DB_PASSWORD", "--secret", stdin="correct-horse\n")
        out = s.run("config", "history", "identity", "DB_PASSWORD")
        assert "hunter2" not in out and "correct-horse" not in out
        token = s.run("tokens", "issue", "identity", "--description", "deploys").strip()
        out = s.run("tokens", "ls", "identity")
        token_id = out.splitlines()[1].split()[0]
        assert token_id.startswith("tok_") and token not in out
        s.run("tokens", "revoke", "identity", token_id)
        s.run("tokens", "ls", "identity")
        s.run("services", "show", "identity")
        s.run("services", "delete", "identity", "--yes", expect=1)  # instances remain: 409

        def audited() -> bool:
            records = json.loads(
                run_script(
                    ["audit", "--service", "identity", "--json", "--limit", "100"], s.env
                ).stdout
            )
            actions = [r["action"] for r in records]
            return "DELETE /v1/services/{name}/tokens/{token_id}" in actions and any(
                "secrets read" in str(r["target"]) for r in records
            )

        wait_until(audited, what="the session's calls in the audit trail")
        out = s.run("audit", "--service", "identity", "--limit", "30")
        assert "secrets read: DB_PASSWORD@1" in out
    finally:
        paths = [ARTIFACTS / "cli-walkthrough.txt", tmp_path / "cli-walkthrough.txt"]
        s.write(*paths)
        print("\nCLI walkthrough transcript: " + ", ".join(str(p) for p in paths))
