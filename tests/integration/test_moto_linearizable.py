"""The session's moto server is linearizable like DynamoDB: a transaction that fails never
erases what other requests wrote meanwhile (stock moto restores its start-of-transaction copy
of the table). Run with ATLAS_TEST_MOTO_MODE=stock to see it fail there."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import boto3
from botocore.config import Config

from atlas.stack import MotoServer

WRITERS, PUTS, FAILERS = 3, 150, 3


def _client(moto: MotoServer) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=moto.url,
        region_name="us-east-1",
        config=Config(max_pool_connections=16, retries={"max_attempts": 0}),
    )


def test_failing_transactions_never_erase_concurrent_writes(moto_server: MotoServer) -> None:
    db = _client(moto_server)
    table = f"linearizable-{uuid.uuid4().hex[:8]}"
    db.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    db.put_item(TableName=table, Item={"k": {"S": "guard"}, "v": {"N": "0"}})
    acked: list[str] = []
    errors: list[BaseException] = []
    canceled = [0]
    done = threading.Event()

    def write(w: int) -> None:
        c = _client(moto_server)
        try:
            for i in range(PUTS):
                key = f"w{w}-{i}"
                put = {"TableName": table, "Item": {"k": {"S": key}}}
                c.transact_write_items(TransactItems=[{"Put": put}])
                acked.append(key)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def fail() -> None:
        c = _client(moto_server)
        check = {
            "TableName": table,
            "Key": {"k": {"S": "guard"}},
            "ConditionExpression": "v = :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
        try:
            while not done.is_set():
                try:
                    c.transact_write_items(
                        TransactItems=[
                            {"Put": {"TableName": table, "Item": {"k": {"S": "never"}}}},
                            {"ConditionCheck": check},
                        ]
                    )
                except c.exceptions.TransactionCanceledException:
                    canceled[0] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    failers = [threading.Thread(target=fail) for _ in range(FAILERS)]
    for t in writers + failers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in failers:
        t.join()
    assert not errors, errors[:3]
    assert canceled[0] > 0  # the failing transactions did run beside the writers
    stored: set[str] = set()
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = db.scan(**kwargs)
        stored |= {item["k"]["S"] for item in page["Items"]}
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    assert len(acked) == WRITERS * PUTS
    vanished = [k for k in acked if k not in stored]
    assert not vanished, f"{len(vanished)} acknowledged writes vanished"
    assert "never" not in stored
    db.delete_table(TableName=table)
