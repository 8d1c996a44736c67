"""Integration tier: real moto server over HTTP, real gunicorn, (from the mirror on) real ZooKeeper."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from atlas.config import Settings
from atlas.migrate import Migrator
from atlas.stack import AtlasServer, MotoServer
from tests.helpers import ADMIN_TOKEN, ApiClient

pytestmark = pytest.mark.integration


def atlas_env(moto: MotoServer, realm: str, **extra: str) -> dict[str, str]:
    """ATLAS_* variables for an Atlas process of one realm on the session moto server."""
    env = {
        "ATLAS_REALM": realm,
        "ATLAS_DYNAMODB_ENDPOINT": moto.url,
        "ATLAS_ADMIN_TOKENS": ADMIN_TOKEN,
        "ATLAS_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def migrate(env: dict[str, str]) -> None:
    """Apply migrations for the realm named in env."""
    Migrator(Settings.from_env(env)).run()


StartAtlas = Callable[..., AtlasServer]


@pytest.fixture
def start_atlas(moto_server: MotoServer, tmp_path: Path) -> Iterator[StartAtlas]:
    """Start (migrated) Atlas servers for a test; all are stopped at teardown."""
    started: list[AtlasServer] = []

    def start(realm: str, workers: int = 1, threads: int = 4, **extra: str) -> AtlasServer:
        env = atlas_env(moto_server, realm, **extra)
        migrate(env)
        server = AtlasServer(
            tmp_path / f"atlas-{len(started)}", env, workers=workers, threads=threads,
            name=f"atlas-{len(started)}",
        )  # fmt: skip
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_atlas(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AtlasServer]:
    """One Atlas (realm `itest`) for tests that only need unique names, not a private realm."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    env = atlas_env(moto_server, "itest")
    migrate(env)
    server = AtlasServer(tmp_path_factory.mktemp("atlas-shared"), env, workers=2, threads=4)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(shared_atlas: AtlasServer) -> ApiClient:
    """An admin client of the shared Atlas."""
    return ApiClient(shared_atlas.url)
