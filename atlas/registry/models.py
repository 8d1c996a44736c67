"""PynamoDB models, built per table prefix so one process can serve (or test) several realms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    VersionAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

SERVICES = "services"
INSTANCES = "instances"
MIGRATIONS = "migrations"
CONFIG = "config"
CONFIG_HISTORY = "config-history"
TOKENS = "tokens"
AUDIT = "audit"
HOST_INDEX = "by-host"
TOKEN_SERVICE_INDEX = "by-service"


class HealthCheckAttribute(MapAttribute[str, Any]):
    """A service's HTTP health check."""

    path = UnicodeAttribute()
    interval_s = NumberAttribute()
    timeout_s = NumberAttribute()


@dataclass(frozen=True)
class Models:
    """The model classes bound to one realm's tables."""

    prefix: str
    Service: type[Any]
    Instance: type[Any]
    Config: type[Any]
    ConfigHistory: type[Any]
    Token: type[Any]
    Audit: type[Any]

    def all(self) -> list[type[Any]]:
        """Every model class, in table order."""
        return [
            self.Service,
            self.Instance,
            self.Config,
            self.ConfigHistory,
            self.Token,
            self.Audit,
        ]

    def table_names(self) -> list[str]:
        """Every table these models use."""
        return [m.Meta.table_name for m in self.all()]


def build_models(
    prefix: str,
    host: str | None = None,
    region: str = "us-east-1",
    connect_timeout_s: int = 2,
    read_timeout_s: int = 5,
    max_retry_attempts: int = 2,
) -> Models:
    """Create model classes for the tables of one realm (`<prefix>services`, ...)."""

    meta_attrs: dict[str, Any] = {
        "region": region,
        "connect_timeout_seconds": connect_timeout_s,
        "read_timeout_seconds": read_timeout_s,
        "max_retry_attempts": max_retry_attempts,
    }
    if host:  # unset means AWS proper; mock_aws only intercepts when it is unset
        meta_attrs["host"] = host

    def meta(table: str) -> Any:
        return type("Meta", (), {"table_name": prefix + table, **meta_attrs})

    class HostIndex(GlobalSecondaryIndex[Any]):
        Meta = type(
            "Meta",
            (),
            {"index_name": HOST_INDEX, "projection": AllProjection(), **meta_attrs},
        )
        host = UnicodeAttribute(hash_key=True)
        service = UnicodeAttribute(range_key=True)

    class ServiceModel(Model):
        Meta = meta(SERVICES)
        name = UnicodeAttribute(hash_key=True)
        description = UnicodeAttribute(default="")
        owner = UnicodeAttribute(default="")
        port = NumberAttribute(null=True)
        health_check = HealthCheckAttribute(null=True)
        tags = ListAttribute(of=UnicodeAttribute, default=list)
        deleting = BooleanAttribute(default=False)
        deleting_by = UnicodeAttribute(null=True)  # the DELETE that set `deleting`
        config_version = NumberAttribute(default=0)
        created_at = UnicodeAttribute()
        updated_at = UnicodeAttribute()
        version = VersionAttribute()

    class InstanceModel(Model):
        Meta = meta(INSTANCES)
        service = UnicodeAttribute(hash_key=True)
        instance_id = UnicodeAttribute(range_key=True)
        host = UnicodeAttribute()
        port = NumberAttribute()
        enabled = BooleanAttribute(default=True)
        weight = NumberAttribute(default=100)
        zone = UnicodeAttribute(null=True)
        labels = MapAttribute[str, Any](default=dict)
        disabled_reason = UnicodeAttribute(null=True)
        created_at = UnicodeAttribute()
        updated_at = UnicodeAttribute()
        version = VersionAttribute()
        by_host = HostIndex()

    class ConfigModel(Model):
        """The current version of each config key (a delete leaves a tombstone: `deleted`)."""

        Meta = meta(CONFIG)
        service = UnicodeAttribute(hash_key=True)
        key = UnicodeAttribute(range_key=True)
        version = NumberAttribute()
        secret = BooleanAttribute(default=False)
        deleted = BooleanAttribute(default=False)
        value = UnicodeAttribute(null=True)  # JSON text of a plain value; never set for secrets
        sealed = UnicodeAttribute(null=True)  # the envelope of a secret (JSON, base64 fields)
        created_at = UnicodeAttribute()
        updated_at = UnicodeAttribute()
        updated_by = UnicodeAttribute(default="")

    class ConfigHistoryModel(Model):
        """Every version of every key; `entry` is `<service>/<key>`."""

        Meta = meta(CONFIG_HISTORY)
        entry = UnicodeAttribute(hash_key=True)
        version = NumberAttribute(range_key=True)
        service = UnicodeAttribute()
        key = UnicodeAttribute()
        secret = BooleanAttribute(default=False)
        deleted = BooleanAttribute(default=False)
        value = UnicodeAttribute(null=True)
        sealed = UnicodeAttribute(null=True)
        created_at = UnicodeAttribute()
        updated_at = UnicodeAttribute()
        updated_by = UnicodeAttribute(default="")

    class TokenServiceIndex(GlobalSecondaryIndex[Any]):
        Meta = type(
            "Meta",
            (),
            {"index_name": TOKEN_SERVICE_INDEX, "projection": AllProjection(), **meta_attrs},
        )
        service = UnicodeAttribute(hash_key=True)
        id = UnicodeAttribute(range_key=True)

    class TokenModel(Model):
        """A service token, keyed by the SHA-256 of the token (the token itself is never stored)."""

        Meta = meta(TOKENS)
        token_hash = UnicodeAttribute(hash_key=True)
        id = UnicodeAttribute()
        service = UnicodeAttribute()
        description = UnicodeAttribute(default="")
        created_at = UnicodeAttribute()
        created_by = UnicodeAttribute(default="")
        by_service = TokenServiceIndex()

    class AuditModel(Model):
        """One audit record; `service` is `-` for actions on no single service."""

        Meta = meta(AUDIT)
        service = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)  # `<at>#<id>`: newest last, unique
        id = UnicodeAttribute()
        at = UnicodeAttribute()
        principal = UnicodeAttribute()
        token_id = UnicodeAttribute(null=True)
        action = UnicodeAttribute()
        method = UnicodeAttribute()
        path = UnicodeAttribute()
        target = UnicodeAttribute(null=True)
        status = NumberAttribute()
        remote_addr = UnicodeAttribute(null=True)

    return Models(
        prefix=prefix,
        Service=ServiceModel,
        Instance=InstanceModel,
        Config=ConfigModel,
        ConfigHistory=ConfigHistoryModel,
        Token=TokenModel,
        Audit=AuditModel,
    )


def build_models_for(settings: Any) -> Models:
    """Models for the tables of the realm named by Atlas settings."""
    return build_models(
        settings.table_prefix,
        host=settings.dynamodb_endpoint or None,
        region=settings.aws_region,
    )
