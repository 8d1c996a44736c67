"""`atlas new-service` without the slow part (the venv is made once, in test_live.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.service import scaffold
from atlas.service.scaffold import build_atlas_wheel, checkout_root, checkout_version, new_service
from atlas.stack import free_port


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = checkout_root()
    assert root is not None, "the tests run from an editable checkout"
    built, cached = build_atlas_wheel(root, tmp_path_factory.mktemp("wheels"))
    again, cached_again = build_atlas_wheel(root, built.parent.parent)
    assert (cached, cached_again, again) == (False, True, built)  # built once per version
    return built


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atlas.service.scaffold", *args],
                          capture_output=True, text=True)  # fmt: skip


def test_bad_name_gets_the_apis_message_and_nothing_is_written(tmp_path: Path) -> None:
    proc = run("Bad_Name", "--dir", str(tmp_path / "x"), "--no-venv", "--no-register")
    assert proc.returncode == 2
    assert (
        "invalid service name 'Bad_Name' (name: Must match ^[a-z][a-z0-9-]{0,62}$.)" in proc.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_never_overwritten(tmp_path: Path, wheel: Path) -> None:
    project = tmp_path / "greeter"
    project.mkdir()
    (project / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(new_service, ["greeter", "--dir", str(project), "--no-venv",
                                              "--no-register", "--atlas-wheel", str(wheel)])  # fmt: skip
    assert result.exit_code == 1
    assert "already exists and is not empty: nothing was written" in result.output
    assert [p.name for p in project.iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["greeter"]  # no staging dir left behind


def test_skeleton_git_and_an_unreachable_atlas(tmp_path: Path, wheel: Path) -> None:
    project = tmp_path / "my-svc"
    project.mkdir()  # an empty directory is fine: nothing in it is overwritten
    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(new_service, ["my-svc", "--dir", str(project), "--no-venv",
                                              "--atlas-url", dead, "--atlas-wheel", str(wheel)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Atlas at {dead} is unreachable" in result.output
    assert "NOT registered" in result.output and "make run" in result.output
    files = sorted(str(p.relative_to(project)) for p in project.rglob("*")
                   if p.is_file() and ".git" not in p.parts)  # fmt: skip
    assert files == [".gitignore", "Makefile", "README.md", "my_svc/__init__.py",
                     "my_svc/app.py", "my_svc/config.py", "pyproject.toml", "requirements.txt",
                     "tests/test_app.py", f"vendor/{wheel.name}"]  # fmt: skip
    for py in project.rglob("*.py"):
        ast.parse(py.read_text())  # every placeholder was filled
    assert "{{" not in "".join(p.read_text() for p in project.rglob("*") if p.suffix != ".whl"
                               and p.is_file() and ".git" not in p.parts)  # fmt: skip
    config = (project / "my_svc" / "config.py").read_text()
    assert "SECRET_KEY = secret()" in config and "SENTRY_DSN = secret()" in config
    assert "\trun: install" not in (project / "Makefile").read_text()
    assert "\t" in (project / "Makefile").read_text()  # recipes are tab-indented
    log = subprocess.run(["git", "log", "--format=%s"], cwd=project, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert log.strip() == "New service my-svc (atlas new-service)"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert status == ""


def test_the_wheel_is_keyed_by_what_goes_into_it(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    (root / "atlas" / "__pycache__").mkdir(parents=True)
    (root / "pyproject.toml").write_text('name = "atlas-registry"\n')
    (root / "README.md").write_text("r")
    (root / "atlas" / "a.py").write_text("x = 1\n")
    first = checkout_version(root)
    (root / "atlas" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert checkout_version(root) == first  # bytecode is not the source
    (root / "atlas" / "a.py").write_text("x = 2\n")
    assert checkout_version(root) != first


def test_atlas_cli_delegates_to_the_click_command(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "atlas.cli", "new-service", "--help"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0 and "Usage: atlas new-service [OPTIONS] NAME" in proc.stdout


def test_uv_is_found_when_installed() -> None:
    assert scaffold.uv_binary() is not None  # a dev dependency: new-service uses it when present
