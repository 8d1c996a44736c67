"""Config, secrets, tokens and audit: in-process fixtures (mock_aws: DynamoDB + KMS) and, for the
live tests, the integration tier's `start_atlas` (gunicorn on the session moto server)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from flask import Flask
from moto import mock_aws

from atlas.app import create_app
from atlas.config import Settings
from atlas.migrate import Migrator
from tests.helpers import ADMIN_TOKEN
from tests.integration.conftest import start_atlas  # noqa: F401 - re-exported fixture
from tests.unit.conftest import Client

logging.getLogger("werkzeug").setLevel(logging.ERROR)

SECRET = "s3cr3t-PLAINTEXT-never-stored-7f3a9c"


@pytest.fixture
def aws() -> Iterator[None]:
    """Every AWS call in the test (DynamoDB and KMS) is served by moto in memory."""
    with mock_aws():
        yield


@pytest.fixture
def settings(aws: None) -> Settings:
    """Settings of a migrated `unit` realm (KMS provider, key created on first use)."""
    s = Settings(realm="unit", admin_tokens=(ADMIN_TOKEN,))
    Migrator(s).run()
    return s


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The Atlas app without ZooKeeper."""
    app = create_app(settings=settings)
    yield app
    app.extensions["atlas"].close()


@pytest.fixture
def client(app: Flask) -> Client:
    """An admin client."""
    return Client(app.test_client())


@pytest.fixture
def make_client(app: Flask) -> Any:
    """Build a client with any token (None: no Authorization header)."""
    return lambda token: Client(app.test_client(), token=token)


def raw_items(prefix: str, endpoint: str | None = None) -> list[dict[str, Any]]:
    """Every raw DynamoDB item of every table of a realm (the attacker's view of the store)."""
    db = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    out: list[dict[str, Any]] = []
    for table in db.list_tables()["TableNames"]:
        if not table.startswith(prefix):
            continue
        kwargs: dict[str, Any] = {"TableName": table}
        while True:
            page = db.scan(**kwargs)
            out += page["Items"]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return out
