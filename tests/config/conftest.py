"""Config, secrets, tokens and audit: in-process fixtures (mock_aws: DynamoDB + KMS) and, for the
live tests, the integration tier's `start_atlas` (gunicorn on the session moto server)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from flask import Flask

from tests.integration.conftest import start_atlas  # noqa: F401 - re-exported fixture
from tests.unit.conftest import Client, app, aws, client, settings  # noqa: F401 - shared fixtures

SECRET = "s3cr3t-PLAINTEXT-never-stored-7f3a9c"


@pytest.fixture
def make_client(app: Flask) -> Any:  # noqa: F811 - the shared `app` fixture
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
