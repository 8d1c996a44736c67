"""Create the config, config-history, tokens (with its by-service index) and audit tables."""

from __future__ import annotations

from typing import Any


def _s(*names: str) -> list[dict[str, str]]:
    return [{"AttributeName": n, "AttributeType": "S"} for n in names]


def apply(ctx: Any) -> None:
    """Create the tables of config, secrets, service tokens and the audit trail (idempotent)."""
    ctx.create_table(
        "config",
        AttributeDefinitions=_s("service", "key"),
        KeySchema=[
            {"AttributeName": "service", "KeyType": "HASH"},
            {"AttributeName": "key", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ctx.create_table(
        "config-history",
        AttributeDefinitions=[*_s("entry"), {"AttributeName": "version", "AttributeType": "N"}],
        KeySchema=[
            {"AttributeName": "entry", "KeyType": "HASH"},
            {"AttributeName": "version", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ctx.create_table(
        "tokens",
        AttributeDefinitions=_s("token_hash", "service", "id"),
        KeySchema=[{"AttributeName": "token_hash", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-service",
                "KeySchema": [
                    {"AttributeName": "service", "KeyType": "HASH"},
                    {"AttributeName": "id", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ctx.create_table(
        "audit",
        AttributeDefinitions=_s("service", "sk"),
        KeySchema=[
            {"AttributeName": "service", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
