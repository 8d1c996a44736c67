"""Smart Service fixtures: the root logger restored after each test; real Redis and PostgreSQL
servers (Debian's packages) on free loopback ports."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas.stack import ManagedProcess, free_port, wait_for_port


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """SmartService installs its JSON handler on the root logger: undo it after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class RedisServer:
    """redis-server on 127.0.0.1, no persistence."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        base.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = ManagedProcess(
            "redis",
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(base)],
            base / "redis.log",
        )  # fmt: skip

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start and wait for the port."""
        self.process.start()
        wait_for_port(self.port, timeout=30, proc=self.process.proc)

    def stop(self) -> None:
        """Stop the server."""
        self.process.stop()


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        pytest.fail("Debian's postgresql package is required (apt-get install postgresql)")
    return found[-1].parent


class PostgresServer:
    """A throw-away PostgreSQL cluster run as the `postgres` user (it refuses root) on a free
    port, TCP on 127.0.0.1 only, password (SCRAM) authentication."""

    SUPERUSER_PASSWORD = "pg-super-7d1c"

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        # Not under pytest's tmp dirs: those are private to root and postgres cannot enter them.
        self.base = Path(tempfile.mkdtemp(prefix="atlas-pg-", dir="/tmp"))
        self.data = self.base / "data"
        self.port = free_port()
        self.process = ManagedProcess(
            "postgres",
            ["runuser", "-u", "postgres", "--", str(self.bin / "postgres"), "-D", str(self.data),
             "-p", str(self.port), "-k", str(self.base), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off"],
            self.base / "postgres.log",
        )  # fmt: skip

    def start(self) -> None:
        """initdb, start, wait for the port."""
        shutil.chown(self.base, "postgres", "postgres")
        pwfile = self.base / "pw"
        pwfile.write_text(self.SUPERUSER_PASSWORD)
        shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / "initdb"), "-D", str(self.data),
             "-U", "postgres", "--pwfile", str(pwfile), "-A", "scram-sha-256", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.process.start()
        wait_for_port(self.port, timeout=60, proc=self.process.proc)

    def url(self, user: str = "postgres", password: str | None = None, db: str = "postgres") -> str:
        """A postgresql:// URL."""
        pw = self.SUPERUSER_PASSWORD if password is None else password
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.port}/{db}"

    def create_user(self, user: str, password: str) -> None:
        """A role with a password and a database of its own."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
            conn.execute(f"CREATE DATABASE {user} OWNER {user}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the cluster."""
        self.process.stop(sig=signal.SIGINT)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real Redis for one test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL, shared by the session."""
    server = PostgresServer()
    server.start()
    yield server
    server.stop()
