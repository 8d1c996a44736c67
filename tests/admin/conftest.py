"""Admin CLI tier: a real Atlas under gunicorn on the session's moto server, driven by the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from atlas.admin.cli import admin
from atlas.envvars import TESTS
from atlas.stack import AtlasServer
from tests.helpers import ADMIN_TOKEN
from tests.integration.conftest import shared_atlas, start_atlas  # noqa: F401 (fixtures)

ARTIFACTS = Path(TESTS.get("ATLAS_ARTIFACT_DIR") or Path(__file__).parent.parent / ".artifacts")

Cli = Callable[..., Result]


def atlas_script() -> str:
    """The `atlas` console script installed next to this interpreter."""
    script = Path(sys.executable).parent / "atlas"
    found = str(script) if script.exists() else shutil.which("atlas")
    if not found:
        pytest.fail("the atlas console script is not installed (pip install -e .)")
    return found


def run_script(
    args: list[str], env: dict[str, str], input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `atlas ARGS` as a real subprocess with ATLAS_* from env."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ATLAS_", "_ATLAS"))}
    full.update(env)
    return subprocess.run(
        [atlas_script(), *args],
        env=full,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def make_cli(url: str, token: str | None = ADMIN_TOKEN) -> Cli:
    """A function running the admin commands in-process (CliRunner) against one Atlas."""
    env: dict[str, str | None] = {"ATLAS_URL": url, "ATLAS_TOKEN": token}

    def cli(*args: str, input: str | None = None, **kw: Any) -> Result:
        runner = CliRunner(env=env)
        return runner.invoke(admin, list(args), input=input, catch_exceptions=False, **kw)

    return cli


@pytest.fixture
def cli(shared_atlas: AtlasServer) -> Cli:  # noqa: F811
    """Run admin commands in-process against the shared Atlas with the admin token."""
    return make_cli(shared_atlas.url)


@pytest.fixture
def name() -> str:
    """A unique service name."""
    return f"svc-{uuid.uuid4().hex[:10]}"
