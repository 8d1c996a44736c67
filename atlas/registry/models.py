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
HOST_INDEX = "by-host"


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

    def table_names(self) -> list[str]:
        """Every table these models use."""
        return [self.Service.Meta.table_name, self.Instance.Meta.table_name]


def build_models(
    prefix: str,
    host: str | None = None,
    region: str = "us-east-1",
    connect_timeout_s: int = 2,
    read_timeout_s: int = 5,
    max_retry_attempts: int = 2,
) -> Models:
    """Create model classes for tables named `<prefix>services` and `<prefix>instances`."""

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

    return Models(prefix=prefix, Service=ServiceModel, Instance=InstanceModel)


def build_models_for(settings: Any) -> Models:
    """Models for the tables of the realm named by Atlas settings."""
    return build_models(
        settings.table_prefix,
        host=settings.dynamodb_endpoint or None,
        region=settings.aws_region,
    )
