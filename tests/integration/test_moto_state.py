"""moto with a state file (the dev stack's): DynamoDB items and KMS keys survive a restart, and
ciphertexts made before it still decrypt after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from atlas.stack import MotoServer
from atlas.stack.motoserver import _changes_state
from tests.helpers import wait_until


def _clients(url: str) -> tuple[Any, Any]:
    kw = {"endpoint_url": url, "region_name": "us-east-1"}
    return boto3.client("dynamodb", **kw), boto3.client("kms", **kw)


def test_state_survives_a_stop_and_a_kill(tmp_path: Path) -> None:
    state = tmp_path / "state.pickle"
    moto = MotoServer(tmp_path / "moto", state_file=state)
    moto.start()
    try:
        db, kms = _clients(moto.url)
        db.create_table(
            TableName="t", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        )  # fmt: skip
        db.put_item(TableName="t", Item={"k": {"S": "a"}, "v": {"N": "1"}})
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/atlas-x", TargetKeyId=key)
        blob = kms.encrypt(KeyId="alias/atlas-x", Plaintext=b"hunter2")["CiphertextBlob"]
    finally:
        moto.stop()  # a clean stop writes the last snapshot

    moto = MotoServer(tmp_path / "moto", port=moto.port, state_file=state)
    moto.start()
    try:
        db, kms = _clients(moto.url)
        item = db.get_item(TableName="t", Key={"k": {"S": "a"}}, ConsistentRead=True)
        assert item["Item"]["v"] == {"N": "1"}
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"hunter2"
        # A write, then kill -9 once its snapshot is on disk: the write is kept.
        before = state.stat().st_mtime_ns
        db.put_item(TableName="t", Item={"k": {"S": "b"}, "v": {"N": "2"}})
        wait_until(lambda: state.stat().st_mtime_ns > before, what="a snapshot after the write")
    finally:
        moto.kill()

    moto = MotoServer(tmp_path / "moto", port=moto.port, state_file=state)
    moto.start()
    try:
        db, _ = _clients(moto.url)
        item = db.get_item(TableName="t", Key={"k": {"S": "b"}}, ConsistentRead=True)
        assert item["Item"]["v"] == {"N": "2"}
    finally:
        moto.stop()


def test_an_unreadable_state_file_stops_moto_with_a_message(tmp_path: Path) -> None:
    state = tmp_path / "state.pickle"
    state.write_bytes(b"not a pickle")
    moto = MotoServer(tmp_path / "moto", state_file=state)
    try:
        with pytest.raises(RuntimeError, match="exited with 3"):
            moto.start()
    finally:
        moto.stop()  # closes its log
    assert "cannot restore the state" in moto.process.log_tail()
    assert state.read_bytes() == b"not a pickle"  # left as it was


def test_only_writes_make_a_snapshot() -> None:
    def env(target: str) -> dict[str, str]:
        return {"HTTP_X_AMZ_TARGET": target, "REQUEST_METHOD": "POST"}

    assert _changes_state(env("DynamoDB_20120810.PutItem"))
    assert _changes_state(env("DynamoDB_20120810.TransactWriteItems"))
    assert _changes_state(env("TrentService.CreateAlias"))
    assert not _changes_state(env("DynamoDB_20120810.GetItem"))
    assert not _changes_state(env("DynamoDB_20120810.Query"))
    assert not _changes_state(env("TrentService.Decrypt"))
    assert not _changes_state({"REQUEST_METHOD": "GET"})
