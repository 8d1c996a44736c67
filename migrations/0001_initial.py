"""Create the services and instances tables, with the instances-by-host index."""

from __future__ import annotations

from typing import Any


def apply(ctx: Any) -> None:
    """Create `<prefix>services` and `<prefix>instances` (idempotent)."""
    ctx.create_table(
        "services",
        AttributeDefinitions=[{"AttributeName": "name", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "name", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ctx.create_table(
        "instances",
        AttributeDefinitions=[
            {"AttributeName": "service", "AttributeType": "S"},
            {"AttributeName": "instance_id", "AttributeType": "S"},
            {"AttributeName": "host", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "service", "KeyType": "HASH"},
            {"AttributeName": "instance_id", "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-host",
                "KeySchema": [
                    {"AttributeName": "host", "KeyType": "HASH"},
                    {"AttributeName": "service", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
