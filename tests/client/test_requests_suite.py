"""requests' own ``tests/test_requests.py``, run with requests and with atlas.client as requests.

The suite is the one of the installed requests version, from its sdist
(``pip download --no-deps --no-binary :all: requests==<version>``, cached in
``$ATLAS_TEST_CACHE``, default ``.atlas-data/test-cache``). It runs twice, side
by side, in child pytests on loopback only (see
``requests_suite/atlas_requests_suite.py``): once as is, once with
``sys.modules["requests"] = atlas.client``. Tests that need the internet fail
in both runs, so the runs are compared as sets of passing tests, not counted.

The child pytests run in a virtual environment of their own (made once per
requests version, cached beside the sdist) with requests' test dependencies:
pytest-httpbin's httpbin pins greenlet<3, which the project's own dev tools
(Playwright) cannot live with. atlas.client is imported from this checkout.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from atlas.envvars import TESTS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = Path(__file__).resolve().parent / "requests_suite"
SUITE = "tests/test_requests.py"

#: Tests of requests' suite that cannot pass with atlas.client, and why.
EXCLUDED = {
    f"{SUITE}::TestRequests::test_transport_adapter_ordering": (
        "asserts that a new Session mounts exactly ['https://', 'http://']; atlas.client's"
        " Session also mounts 'service://' (first, as requests orders prefixes longest first),"
        " which is the point of the smart client"
    ),
}


@dataclass
class Run:
    """One child pytest over requests' suite: {nodeid: outcome} and its output."""

    outcomes: dict[str, str]
    output: str

    @property
    def passed(self) -> set[str]:
        """Node ids of the tests that passed."""
        return {nodeid for nodeid, outcome in self.outcomes.items() if outcome == "passed"}


def _cache_dir() -> Path:
    return Path(TESTS.get("ATLAS_TEST_CACHE") or ROOT / ".atlas-data" / "test-cache")


def _requests_suite() -> Path:
    """The unpacked tests of the installed requests' sdist (downloaded once, then cached)."""
    version = importlib.metadata.version("requests")
    cache = _cache_dir()
    unpacked = cache / f"requests-{version}"
    if (unpacked / SUITE).exists():
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"requests-{version}.tar.gz"
    if not sdist.exists():
        pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
        download = subprocess.run(
            [*pip, "--no-deps", "--no-binary", ":all:", f"requests=={version}", "-d", str(cache)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if download.returncode != 0 or not sdist.exists():
            pytest.fail(
                f"could not download the sdist of requests {version}:\n"
                f"{download.stdout}{download.stderr}"
            )
    # All of it: some tests read files of the sdist's root (requirements-dev.txt).
    with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(sdist) as archive:
        archive.extractall(tmp, filter="data")
        try:
            (Path(tmp) / f"requests-{version}").rename(unpacked)
        except OSError:
            if not (unpacked / SUITE).exists():  # else another session unpacked it meanwhile
                raise
    return unpacked


#: What requests' suite needs besides requests itself (its requirements-dev, loopback part).
SUITE_DEPS = ("pytest>=8,<10", "pytest-timeout>=2.3,<3", "pytest-httpbin>=2.1,<3", "trustme")


def _suite_python() -> Path:
    """A cached venv with the installed requests, urllib3 and requests' test deps."""
    pins = [
        f"{dist}=={importlib.metadata.version(dist)}"
        for dist in ("requests", "urllib3", "idna", "charset-normalizer", "certifi")
    ]
    key = "-".join(p.replace("==", "") for p in pins[:2])
    env_dir = _cache_dir() / f"suite-venv-{key}"
    python = env_dir / "bin" / "python"
    stamp = env_dir / ".complete"
    if stamp.exists():
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv:
        steps = [
            [uv, "venv", "-q", "--python", sys.executable, str(env_dir)],
            [uv, "pip", "install", "-q", "--python", str(python), *pins, *SUITE_DEPS],
        ]
    else:
        venv.create(env_dir, with_pip=True)
        steps = [[str(python), "-m", "pip", "install", "-q", *pins, *SUITE_DEPS]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.fail(f"could not build the suite's venv ({step[:3]}):\n{done.stderr[-3000:]}")
    stamp.touch()
    return python


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """requests' suite run with requests and with atlas.client, at the same time."""
    suite = _requests_suite()
    python = _suite_python()
    out = tmp_path_factory.mktemp("requests-suite")
    env = dict(os.environ)
    path = [str(PLUGIN_DIR), str(ROOT), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    children = {}
    for name, flags in {"requests": [], "atlas.client": ["--atlas-substitute"]}.items():
        log = (out / f"{name}.log").open("w")
        command = [str(python), "-m", "pytest", "-p", "atlas_requests_suite", *flags]
        command += ["-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(suite)]
        command += ["--timeout=60", "-q", f"--atlas-results={out / name}.json", SUITE]
        child = subprocess.Popen(command, cwd=suite, env=env, stdout=log, stderr=subprocess.STDOUT)
        children[name] = (child, log)
    deadline = time.monotonic() + 240  # both runs, well inside pytest-timeout's 300 s
    try:
        for child, _log in children.values():
            child.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for child, log in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
            log.close()
    results = {}
    for name in children:
        output = (out / f"{name}.log").read_text()
        results_file = out / f"{name}.json"
        if not results_file.exists():
            pytest.fail(f"requests' suite did not run with {name}:\n{output[-3000:]}")
        results[name] = Run(json.loads(results_file.read_text()), output)
    shutil.rmtree(out, ignore_errors=True)
    return results


def test_atlas_client_passes_what_requests_passes(runs: dict[str, Run]) -> None:
    with_requests, with_atlas = runs["requests"], runs["atlas.client"]
    print(
        f"\nrequests' {SUITE}: {len(with_requests.outcomes)} tests;"
        f" {len(with_requests.passed)} pass with requests,"
        f" {len(with_atlas.passed)} with atlas.client ({len(EXCLUDED)} excluded)"
    )
    assert with_atlas.outcomes.keys() == with_requests.outcomes.keys()
    assert with_requests.passed, with_requests.output[-3000:]
    lost = sorted(with_requests.passed - with_atlas.passed - EXCLUDED.keys())
    assert not lost, (
        f"{len(lost)} tests pass with requests but not with atlas.client:\n"
        + "\n".join(f"  {nodeid}: {with_atlas.outcomes.get(nodeid)}" for nodeid in lost)
        + f"\n--- atlas.client run ---\n{with_atlas.output[-6000:]}"
    )


def test_excluded_tests_fail_only_with_atlas_client(runs: dict[str, Run]) -> None:
    # Keeps the exclusions honest: each one exists, passes with requests, fails with atlas.
    for nodeid in EXCLUDED:
        assert runs["requests"].outcomes.get(nodeid) == "passed", nodeid
        assert runs["atlas.client"].outcomes.get(nodeid) == "failed", nodeid
