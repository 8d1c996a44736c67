"""Every variable Atlas reads has a declared home, a bad value is one line naming it, and
`atlas settings` lists them all by component."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.envvars import COMPONENTS, SERVICE, ConfigError, Var, number

ROOT = Path(__file__).resolve().parents[2]
# A direct read of one named variable: os.environ.get("X"), os.environ["X"], os.getenv("X"),
# `"X" in os.environ`.
DIRECT_READ = re.compile(
    r"""(?:environ(?:\.get)?\(\s*|environ\[\s*|getenv\(\s*)["'](ATLAS_\w+|PORT|WEB_CONCURRENCY)["']"""
    r"""|["'](ATLAS_\w+)["']\s+in\s+os\.environ"""
)
# Where variables are declared, and the sidecar (its own branch declares its variables in its
# click command, which `atlas settings` reads).
DECLARING = {"atlas/envvars.py", "atlas/config.py"}
OTHERS = ("atlas/sidecar/",)


def _sources() -> list[Path]:
    return sorted(p for p in (ROOT / "atlas").rglob("*.py") if "skeleton" not in p.parts)


def test_no_variable_is_read_outside_its_declaration() -> None:
    offenders = []
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        if rel in DECLARING or rel.startswith(OTHERS):
            continue
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if DIRECT_READ.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "read through atlas.envvars / atlas.config instead:\n" + "\n".join(
        offenders
    )


def _listed() -> dict[str, str]:
    from atlas.cli import cli

    result = CliRunner().invoke(cli, ["settings"])
    assert result.exit_code == 0, result.output
    return {line.split()[0]: line for line in result.output.splitlines() if line[:1].isupper()}


def test_settings_lists_every_component_and_every_variable_once() -> None:
    from atlas.cli import cli, settings_sections

    out = CliRunner().invoke(cli, ["settings"]).output
    for title, _ in settings_sections():
        assert f"# {title}" in out
    listed = _listed()
    for component in COMPONENTS:
        for name, _, _ in component.documented():
            assert name in listed, name
    # Listed once each; a component that shares a variable says so.
    names = [line.split()[0] for line in out.splitlines() if line[:1].isupper()]
    assert len(names) == len(set(names))
    assert "(also reads ATLAS_URL, ATLAS_TOKEN: listed above)" in out
    assert "ATLAS_DEV_DATA" in listed and "ATLAS_CONFIG_CACHE_KEY" in listed


def test_every_atlas_name_in_the_code_is_declared() -> None:
    from atlas.cli import settings_sections

    declared = {name for _, rows in settings_sections() for name, _, _ in rows}
    # The sidecar's own (argparse on main: declared by its flags) and the deprecated alias.
    sidecar = {"ATLAS_ZK", "ATLAS_SIDECAR_PORT", "ATLAS_HAPROXY"}
    mentioned: set[str] = set()
    for path in _sources():
        if str(path.relative_to(ROOT)).startswith(OTHERS):
            continue
        mentioned |= set(re.findall(r"""["'](ATLAS_[A-Z0-9_]*[A-Z0-9])["']""", path.read_text()))
    internal = {"ATLAS_STACK_ID"}  # the dev stack's process marker, not a setting
    assert mentioned - declared - sidecar - internal == set()


@pytest.mark.parametrize(
    ("component", "name", "value", "message"),
    [
        ("Smart client", "ATLAS_SIDECAR_URL", "ftp://x",
         "ATLAS_SIDECAR_URL: expected an http(s)://host[:port] URL, got 'ftp://x'"),
        ("Smart client", "ATLAS_SERVICE_HEADER", "bad header",
         "ATLAS_SERVICE_HEADER: expected a header name"),
        ("Smart config", "ATLAS_CONFIG_TIMEOUT_S", "abc",
         "ATLAS_CONFIG_TIMEOUT_S: expected a number, got 'abc'"),
        ("Smart config", "ATLAS_CONFIG_CACHE_KEY", "c2hvcnQ=",
         "ATLAS_CONFIG_CACHE_KEY: must be 32 random bytes"),
        ("Smart Service", "ATLAS_DRAIN_S", "-1", "ATLAS_DRAIN_S: must be between 0 and 3600"),
        ("Smart Service", "ATLAS_REGISTER", "maybe", "ATLAS_REGISTER: expected auto, true"),
        ("Smart Service", "ATLAS_REALM", "Prod", "ATLAS_REALM: must match"),
        ("Smart Service", "PORT", "http", "PORT: expected an integer, got 'http'"),
        ("Test suite", "ATLAS_TEST_MOTO_MODE", "fast", "ATLAS_TEST_MOTO_MODE: expected serialized"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_line_naming_the_variable(
    component: str, name: str, value: str, message: str
) -> None:
    (found,) = [c for c in COMPONENTS if c.title.startswith(component)]
    with pytest.raises(ConfigError) as caught:
        found.get(name, {name: value})
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text


def test_a_secret_is_never_echoed_and_empty_means_unset() -> None:
    var = Var("ATLAS_X", 1.0, "x", number(0, 2), secret=True)
    with pytest.raises(ConfigError) as caught:
        var.read({"ATLAS_X": "hunter2"})
    assert "hunter2" not in str(caught.value)
    assert var.read({"ATLAS_X": "  "}) == 1.0
    assert SERVICE.get("ATLAS_OFFLINE", {"ATLAS_OFFLINE": "yes"}) is True


def test_the_client_side_refuses_bad_values_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas.client import Session
    from atlas.client.config import ConfigLoadError, load

    monkeypatch.setenv("ATLAS_SIDECAR_URL", "127.0.0.1:4000")
    with pytest.raises(ConfigError, match=r"^ATLAS_SIDECAR_URL: expected an http"):
        Session()
    monkeypatch.setenv("ATLAS_CONFIG_TIMEOUT_S", "soon")
    with pytest.raises(ConfigLoadError, match=r"^ATLAS_CONFIG_TIMEOUT_S: expected a number"):
        load("web", atlas_url="http://127.0.0.1:1")


@pytest.mark.parametrize(
    ("argv", "env", "code", "line"),
    [
        (["-m", "atlas.cli", "settings"], {"ATLAS_LOG_LEVEL": "LOUD"}, 2,
         "atlas: configuration error: ATLAS_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, "
         "got 'LOUD'"),
        (["-m", "atlas.cli", "serve"], {"ATLAS_WORKERS": "abc", "ATLAS_AUTH_DISABLED": "true"}, 2,
         "atlas: configuration error: ATLAS_WORKERS: expected an integer, got 'abc'"),
        (["-m", "atlas.service.serve", "x:app"], {"PORT": "http"}, 1,
         "Error: PORT: expected an integer, got 'http'"),  # gunicorn's one line, exit 1
        (["-m", "atlas.cli", "services", "ls"], {"ATLAS_LOG_LEVEL": "LOUD"}, 2,
         "atlas: configuration error: ATLAS_LOG_LEVEL: expected"),
    ],
)  # fmt: skip
def test_commands_stop_with_one_line_on_a_bad_value(
    argv: list[str], env: dict[str, str], code: int, line: str
) -> None:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    done = subprocess.run(
        [sys.executable, *argv], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().startswith(line), done.stderr
    assert "Traceback" not in done.stderr
