"""Versioned, idempotent DynamoDB migrations, recorded in `<prefix>migrations`, safe to run twice at once."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from atlas.config import Settings

log = logging.getLogger(__name__)

LOCK_ID = "__lock__"
LOCK_TTL_S = 120.0
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "migrations"


def migrations_dir(settings: Settings) -> Path:
    """Where migration files live: ATLAS_MIGRATIONS_DIR (a setting), else the repo's."""
    return Path(settings.migrations_dir) if settings.migrations_dir else DEFAULT_DIR


def dynamodb_client(settings: Settings) -> Any:
    """A boto3 DynamoDB client for the configured endpoint."""
    kwargs: dict[str, Any] = {"region_name": settings.aws_region}
    if settings.dynamodb_endpoint:
        kwargs["endpoint_url"] = settings.dynamodb_endpoint
    return boto3.client("dynamodb", **kwargs)


@dataclass
class MigrationContext:
    """What a migration's apply() gets: the client, the table prefix and idempotent helpers."""

    client: Any
    prefix: str

    def table(self, name: str) -> str:
        """The full name of a table of this realm."""
        return self.prefix + name

    def create_table(self, name: str, **spec: Any) -> None:
        """Create a table unless it exists, then wait until it is ACTIVE."""
        full = self.table(name)
        try:
            self.client.create_table(TableName=full, **spec)
            log.info("created table %s", full)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise
        self.wait_active(full)

    def wait_active(self, full_name: str, timeout: float = 120.0) -> None:
        """Wait until a table (and its indexes) are ACTIVE."""
        deadline = time.monotonic() + timeout
        while True:
            desc = self.client.describe_table(TableName=full_name)["Table"]
            indexes = desc.get("GlobalSecondaryIndexes", [])
            if desc["TableStatus"] == "ACTIVE" and all(
                i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in indexes
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"table {full_name} not ACTIVE after {timeout}s")
            time.sleep(0.5)


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    id: str
    path: Path
    apply: Callable[[MigrationContext], None]


def discover(directory: Path | None = None) -> list[Migration]:
    """Load every NNNN_name.py migration in order (of the repo's migrations/ by default)."""
    directory = directory or DEFAULT_DIR
    found = []
    for path in sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.py")):
        spec = importlib.util.spec_from_file_location(f"atlas_migration_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load migration {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.append(Migration(path.stem, path, module.apply))
    return found


class Migrator:
    """Applies pending migrations under a lease-based lock item."""

    def __init__(
        self,
        settings: Settings,
        client: Any | None = None,
        directory: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.client = client or dynamodb_client(settings)
        self.ctx = MigrationContext(self.client, settings.table_prefix)
        self.table = self.ctx.table("migrations")
        self.directory = directory or migrations_dir(settings)
        self.clock = clock
        self.sleep = sleep
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def _ensure_table(self) -> None:
        self.ctx.create_table(
            "migrations",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )

    def applied(self) -> set[str]:
        """Ids of migrations already applied."""
        ids: set[str] = set()
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self.client.scan(**kwargs)
            ids.update(i["id"]["S"] for i in page.get("Items", []) if i["id"]["S"] != LOCK_ID)
            if "LastEvaluatedKey" not in page:
                return ids
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _acquire(self, timeout: float) -> None:
        deadline = self.clock() + timeout
        while True:
            now = self.clock()
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item={
                        "id": {"S": LOCK_ID},
                        "owner": {"S": self.owner},
                        "expires": {"N": str(now + LOCK_TTL_S)},
                    },
                    ConditionExpression="attribute_not_exists(id) OR expires < :now",
                    ExpressionAttributeValues={":now": {"N": str(now)}},
                )
                return
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
            if self.clock() > deadline:
                raise TimeoutError("another `atlas migrate` holds the migration lock")
            self.sleep(0.2)

    def _release(self) -> None:
        try:
            self.client.delete_item(
                TableName=self.table,
                Key={"id": {"S": LOCK_ID}},
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": self.owner}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def pending(self) -> list[Migration]:
        """Migrations not yet applied, in order."""
        self._ensure_table()
        done = self.applied()
        return [m for m in discover(self.directory) if m.id not in done]

    def run(self, lock_timeout: float = 300.0) -> list[str]:
        """Apply every pending migration; return the ids applied by this call."""
        self._ensure_table()
        self._acquire(lock_timeout)
        ran: list[str] = []
        try:
            done = self.applied()
            for migration in discover(self.directory):
                if migration.id in done:
                    continue
                log.info("applying migration %s", migration.id)
                migration.apply(self.ctx)
                self.client.put_item(
                    TableName=self.table,
                    Item={
                        "id": {"S": migration.id},
                        "applied_at": {"N": str(self.clock())},
                        "applied_by": {"S": self.owner},
                    },
                )
                ran.append(migration.id)
        finally:
            self._release()
        return ran
