"""Add the sparse `by-expiry` index to the instances table (timed disables: `disabled_until`).

Only instances with a `disabled_until` carry `expiry_shard`, so the index holds the timed
disables alone, ordered by when they end; the leader's expiry sweep queries it for the due
ones. The other new fields (`drain`, `slow_start_s`, `min_enabled`, `serving_seq`) are plain
attributes that need no change to a table.
"""

from __future__ import annotations

from typing import Any

INDEX = "by-expiry"


def apply(ctx: Any) -> None:
    """Create the index unless the table has it, then wait until it is ACTIVE (idempotent)."""
    table = ctx.table("instances")
    desc = ctx.client.describe_table(TableName=table)["Table"]
    if any(i["IndexName"] == INDEX for i in desc.get("GlobalSecondaryIndexes", [])):
        ctx.wait_active(table)
        return
    ctx.client.update_table(
        TableName=table,
        AttributeDefinitions=[
            {"AttributeName": "expiry_shard", "AttributeType": "S"},
            {"AttributeName": "disabled_until", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexUpdates=[
            {
                "Create": {
                    "IndexName": INDEX,
                    "KeySchema": [
                        {"AttributeName": "expiry_shard", "KeyType": "HASH"},
                        {"AttributeName": "disabled_until", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["version"]},
                }
            }
        ],
    )
    ctx.wait_active(table)
