"""Unit tier: the Flask app in-process, DynamoDB faked by moto's mock_aws (no servers)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from moto import mock_aws
from moto.dynamodb.responses import DynamoHandler

from atlas.app import create_app
from atlas.config import Settings
from atlas.migrate import Migrator
from tests.helpers import ADMIN_TOKEN

logging.getLogger("werkzeug").setLevel(logging.ERROR)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every AWS call in the test is served by moto in memory, one DynamoDB request at a time.

    moto's tables check a condition and write in two Python steps, so threads can interleave
    inside one request; DynamoDB makes each request atomic. The lock restores that (as the
    moto server of the other tiers does, see atlas.stack.motoserver).
    """
    atomic = threading.RLock()
    real = DynamoHandler.call_action

    def call_action(self: DynamoHandler) -> object:
        with atomic:
            return real(self)

    monkeypatch.setattr(DynamoHandler, "call_action", call_action)
    with mock_aws():
        yield


@pytest.fixture
def settings(aws: None) -> Settings:
    """Settings of a migrated `unit` realm."""
    s = Settings(realm="unit", admin_tokens=(ADMIN_TOKEN,))
    Migrator(s).run()
    return s


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The Atlas app, without ZooKeeper."""
    app = create_app(settings=settings)
    yield app
    app.extensions["atlas"].close()


class Client:
    """A Flask test client that sends the admin token and JSON by default."""

    def __init__(self, client: FlaskClient, token: str | None = ADMIN_TOKEN) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __getattr__(self, method: str) -> Any:
        fn = getattr(self.client, method)

        def call(path: str, **kw: Any) -> Any:
            headers = dict(self.headers)
            headers.update(kw.pop("headers", {}) or {})
            return fn(path, headers=headers, **kw)

        return call


@pytest.fixture
def client(app: Flask) -> Client:
    """An admin client."""
    return Client(app.test_client())


@pytest.fixture
def anon(app: Flask) -> Client:
    """A client without a token."""
    return Client(app.test_client(), token=None)
