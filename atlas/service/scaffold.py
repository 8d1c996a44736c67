"""`atlas new-service NAME [--dir D]`: a new service, from one command to running and registered.

Makes the directory (never over an existing non-empty one), a skeleton (config module with
defaults and secret placeholders, an app with /hello, a passing test, README, Makefile), a git
repository with a first commit, a virtual environment with everything installed (Atlas's
client side from a wheel built once per checkout version and vendored into the project), and
registers the service in Atlas (POST /v1/services; 409 = already there). A bad name gets the
API's validation message before anything is written; an unreachable Atlas gets a clear message
and the skeleton is still made.

    python -m atlas.service.scaffold NAME --dir D      (also: atlas new-service NAME)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import click
import requests

from atlas.client.config import DEFAULT_URL
from atlas.contract import check_service_name
from atlas.envvars import SERVICE
from atlas.errors import ValidationFailed

DIST_NAME = "atlas-registry"


class ScaffoldError(click.ClickException):
    """A step failed in a way the user must act on (exit 1, message on stderr)."""


def python_package(service: str) -> str:
    """The Python package name of a service (`my-svc` → `my_svc`)."""
    return service.replace("-", "_")


# ------------------------------------------------------------------ the wheel


def checkout_root() -> Path | None:
    """The Atlas checkout this code runs from (an editable install), or None."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{DIST_NAME}"' in pyproject.read_text():
        return root
    return None


def _source_files(root: Path) -> Iterator[Path]:
    yield root / "pyproject.toml"
    yield root / "README.md"
    for path in sorted((root / "atlas").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def checkout_version(root: Path) -> str:
    """A digest of everything that goes into the wheel (the cache key of the built wheel)."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def wheel_cache_dir() -> Path:
    """Where built wheels are kept: $ATLAS_WHEEL_CACHE, else $XDG_CACHE_HOME/atlas/wheels."""
    env: Path | None = SERVICE.get("ATLAS_WHEEL_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "atlas" / "wheels"


def build_atlas_wheel(root: Path, cache: Path | None = None) -> tuple[Path, bool]:
    """(the wheel of this checkout, whether it came from the cache); built once per version."""
    slot = (cache or wheel_cache_dir()) / checkout_version(root)
    found = sorted(slot.glob("*.whl")) if slot.is_dir() else []
    if found:
        return found[0], True
    slot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=slot.parent, prefix=".build-") as tmp:
        # Build from a copy: pip builds in-tree and would leave build/ in the checkout.
        src = Path(tmp) / "src"
        for path in _source_files(root):
            target = src / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        out = Path(tmp) / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
            capture_output=True,
            text=True,
        )
        wheels = sorted(out.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ScaffoldError(f"building Atlas's wheel failed:\n{proc.stderr[-2000:]}")
        staged = Path(tmp) / "slot"
        staged.mkdir()
        shutil.move(str(wheels[0]), staged / wheels[0].name)
        try:
            staged.rename(slot)  # atomic; another process may have won the race
        except OSError:
            if not any(slot.glob("*.whl")):
                raise
    return sorted(slot.glob("*.whl"))[0], False


# --------------------------------------------------------------- the skeleton


def render_skeleton(service: str, dest: Path, wheel: Path) -> list[Path]:
    """Write the skeleton of `service` into `dest` (which must be empty); returns the files."""
    package = python_package(service)
    values = {"service": service, "package": package, "wheel": wheel.name}
    root = files("atlas.service").joinpath("skeleton")
    written: list[Path] = []

    def walk(node: object, rel: Path) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):  # type: ignore[attr-defined]
            name = child.name
            if child.is_dir():
                walk(child, rel / (package if name == "package" else name))
                continue
            if not name.endswith(".tmpl"):
                continue
            name = name.removesuffix(".tmpl")
            if name == "gitignore":
                name = ".gitignore"
            text = child.read_text()
            for key, value in values.items():
                text = text.replace("{{" + key + "}}", value)
            target = dest / rel / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            written.append(target)

    walk(root, Path())
    vendor = dest / "vendor"
    vendor.mkdir(exist_ok=True)
    shutil.copy2(wheel, vendor / wheel.name)
    written.append(vendor / wheel.name)
    return written


def git_first_commit(project: Path, service: str) -> str | None:
    """`git init` + a first commit of everything; None (and a warning) when git is missing."""
    if shutil.which("git") is None:
        return None
    env = dict(os.environ)
    # A first commit needs an author; use the user's when git has one configured.
    for var, key, fallback in (
        ("GIT_AUTHOR_NAME", "user.name", "atlas new-service"),
        ("GIT_AUTHOR_EMAIL", "user.email", "atlas-new-service@localhost"),
    ):
        have = subprocess.run(["git", "config", key], capture_output=True, text=True).stdout
        if not have.strip() and var not in env:
            env[var] = fallback
            env[var.replace("AUTHOR", "COMMITTER")] = fallback

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=project, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", f"New service {service} (atlas new-service)")
    return git("rev-parse", "--short", "HEAD")


# ------------------------------------------------------------------- the venv


def uv_binary() -> str | None:
    """The `uv` binary (PyPI's `uv` package, or on PATH), or None."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def make_venv(project: Path, installer: str = "auto") -> str:
    """Create project/.venv and install requirements.txt; returns the installer used."""
    venv = project / ".venv"
    uv = uv_binary() if installer in ("auto", "uv") else None
    if installer == "uv" and uv is None:
        raise ScaffoldError("--installer uv: uv is not installed (pip install uv)")

    def run(argv: list[str]) -> None:
        proc = subprocess.run(argv, cwd=project, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ScaffoldError(
                f"{' '.join(argv[:4])} … failed:\n{(proc.stderr or proc.stdout)[-3000:]}"
            )

    if uv is not None:
        run([uv, "venv", "-q", "--seed", "--python", sys.executable, str(venv)])
        run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
             "-r", "requirements.txt"])  # fmt: skip
        used = "uv"
    else:
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
             "-r", "requirements.txt"])  # fmt: skip
        used = "pip"
    (venv / ".installed").touch()  # the generated Makefile's stamp: `make test` installs nothing
    return used


# ------------------------------------------------------------------ register


def register(service: str, atlas_url: str, token: str | None, timeout: float = 5.0) -> str:
    """POST the service to Atlas; returns what happened (raises ScaffoldError on a refusal)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"name": service, "health_check": {"path": "/healthcheck"}}
    url = f"{atlas_url.rstrip('/')}/v1/services"
    try:
        resp = requests.post(url, json=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise ScaffoldError(
            f"Atlas at {atlas_url} is unreachable ({type(exc).__name__}): the service is NOT "
            f"registered. The skeleton is made; register it later with "
            f"`curl -X POST {url} -H 'Content-Type: application/json' -d '{{\"name\": "
            f'"{service}"}}\'`, or just `make run` in realm local (it registers itself).'
        ) from None
    if resp.status_code == 201:
        return f"registered service {service!r} in Atlas at {atlas_url}"
    if resp.status_code == 409:
        return f"service {service!r} was already registered in Atlas at {atlas_url}"
    try:
        detail = resp.json().get("detail", "")
    except ValueError:
        detail = resp.text[:200]
    hint = " (set ATLAS_TOKEN to an admin token)" if resp.status_code in (401, 403) else ""
    raise ScaffoldError(
        f"Atlas at {atlas_url} refused to register {service!r}: HTTP {resp.status_code} "
        f"{detail}{hint}. The skeleton is made."
    )


# ----------------------------------------------------------------- the command


def validation_message(exc: ValidationFailed) -> str:
    """The API's problem detail and field errors, on one line."""
    fields = "; ".join(f"{k}: {' '.join(v)}" for k, v in (exc.errors or {}).items())
    return f"{exc.detail} ({fields})" if fields else exc.detail


@click.command("new-service")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="the project directory to create (default: ./NAME)",
)
@click.option(
    "--atlas-url",
    envvar="ATLAS_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Atlas to register the service in (env ATLAS_URL)",
)
@click.option(
    "--token",
    envvar="ATLAS_TOKEN",
    default=None,
    help="bearer token for Atlas (env ATLAS_TOKEN; none needed in realm local)",
)
@click.option(
    "--atlas-wheel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="install this Atlas wheel instead of building one from the checkout",
)
@click.option(
    "--installer",
    type=click.Choice(["auto", "uv", "pip"]),
    default="auto",
    show_default=True,
    help="what fills the venv (auto: uv when installed)",
)
@click.option("--no-venv", is_flag=True, help="skip the virtual environment")
@click.option("--no-register", is_flag=True, help="do not register the service in Atlas")
def new_service(
    name: str,
    directory: Path | None,
    atlas_url: str,
    token: str | None,
    atlas_wheel: Path | None,
    installer: str,
    no_venv: bool,
    no_register: bool,
) -> None:
    """Create service NAME: directory, git, venv, skeleton with a passing test; register it."""
    t0 = time.perf_counter()
    try:
        check_service_name(name)
    except ValidationFailed as exc:
        raise click.BadParameter(validation_message(exc), param_hint="NAME") from None
    project = (directory or Path(name)).absolute()
    if project.exists() and (not project.is_dir() or any(project.iterdir())):
        raise ScaffoldError(f"{project} already exists and is not empty: nothing was written")

    def step(msg: str) -> None:
        click.echo(f"[{time.perf_counter() - t0:5.1f}s] {msg}")

    if atlas_wheel is None:
        root = checkout_root()
        if root is None:
            raise ScaffoldError(
                "Atlas is not installed from a checkout: pass --atlas-wheel PATH "
                "(a wheel built with `pip wheel --no-deps <checkout>`)"
            )
        wheel, cached = build_atlas_wheel(root)
        step(f"Atlas wheel {wheel.name} ({'cached' if cached else 'built'}: {wheel.parent})")
    else:
        wheel = atlas_wheel

    project.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=project.parent, prefix=f".{project.name}.") as tmp:
        staged = Path(tmp) / "project"
        staged.mkdir()
        render_skeleton(name, staged, wheel)
        commit = git_first_commit(staged, name)
        try:
            # rename(2) replaces only a missing or empty directory: never one with content.
            staged.rename(project)
        except OSError as exc:
            raise ScaffoldError(
                f"{project} appeared meanwhile ({exc}): nothing was written"
            ) from None
    step(f"skeleton in {project}" + (f", git commit {commit}" if commit else " (git not found)"))

    failed = False
    if not no_venv:
        try:
            used = make_venv(project, installer)
            step(f"venv {project / '.venv'} ready ({used})")
        except ScaffoldError as exc:
            failed = True
            click.echo(f"atlas new-service: {exc.message}\n(the skeleton is made; "
                       f"`make test` in {project} retries the install)", err=True)  # fmt: skip
    if not no_register:
        try:
            step(register(name, atlas_url, token))
        except ScaffoldError as exc:
            click.echo(f"atlas new-service: {exc.message}", err=True)
    step(f"done. Next:\n    cd {project}\n    make test\n    make run")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    new_service(prog_name="python -m atlas.service.scaffold")
