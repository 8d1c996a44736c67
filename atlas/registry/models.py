"""PynamoDB models: typed base classes with the attributes, bound per table prefix (one realm).

Each base class below declares a table's attributes; `build_models` subclasses each one with
the `Meta` of one realm (table name, endpoint, timeouts), so one process can serve or test
several realms. pynamodb collects attributes and indexes through inheritance (and copies each
index per subclass), so the bound classes have exactly the attributes mypy sees here.

Versions are plain numbers that the registry conditions on and increments itself: pynamodb's
`VersionAttribute` would also bump them on writes that must not change a client's ETag (the
`deleting` mark, a config write's `config_version`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
)
from pynamodb.connection import Connection
from pynamodb.expressions.condition import Condition
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

SERVICES = "services"
INSTANCES = "instances"
MIGRATIONS = "migrations"
CONFIG = "config"
CONFIG_HISTORY = "config-history"
TOKENS = "tokens"
AUDIT = "audit"
HOST_INDEX = "by-host"
EXPIRY_INDEX = "by-expiry"
#: The one value of `expiry_shard`: every timed disable sits in one partition of the sparse
#: `by-expiry` index, ordered by `disabled_until` (timed disables are few; one query finds the
#: due ones).
EXPIRY_SHARD = "due"
TOKEN_SERVICE_INDEX = "by-service"


class HealthCheckAttribute(MapAttribute[str, Any]):
    """A service's HTTP health check."""

    path = UnicodeAttribute()
    interval_s = NumberAttribute()
    timeout_s = NumberAttribute()


class ServiceModel(Model):
    """A service (`<prefix>services`)."""

    name = UnicodeAttribute(hash_key=True)
    description = UnicodeAttribute(default="")
    owner = UnicodeAttribute(default="")
    port = NumberAttribute(null=True)
    health_check = HealthCheckAttribute(null=True)
    tags = ListAttribute(of=UnicodeAttribute, default=list)  # of str
    deleting = BooleanAttribute(default=False)
    deleting_by = UnicodeAttribute(null=True)  # the DELETE that set `deleting`
    # Fewest instances that must stay serving (enabled, not draining); absent: 0.
    min_enabled = NumberAttribute(null=True)
    # Bumped by every write that takes an instance of a service with min_enabled > 0 out of
    # service, in the same transaction, conditioned on the value read before counting: two such
    # writes can never both pass the count (see Registry._serving_guard). Not in the ETag.
    serving_seq = NumberAttribute(null=True)
    config_version = NumberAttribute(default=0)
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    version = NumberAttribute()

    @classmethod
    def live(cls) -> Condition:
        """The condition that the service exists and no DELETE has marked it."""
        return cls.name.exists() & (cls.deleting == False)  # noqa: E712


class HostIndex(GlobalSecondaryIndex["InstanceModel"]):
    """Instances by host, across services (eventually consistent)."""

    class Meta:
        index_name = HOST_INDEX
        projection = AllProjection()

    host = UnicodeAttribute(hash_key=True)
    service = UnicodeAttribute(range_key=True)


class ExpiryIndex(GlobalSecondaryIndex["InstanceModel"]):
    """Timed disables by expiry (sparse: only instances with `disabled_until`; eventually
    consistent). The version is projected so that the expiry's write can be conditioned on it."""

    class Meta:
        index_name = EXPIRY_INDEX
        projection = IncludeProjection(["version"])

    expiry_shard = UnicodeAttribute(hash_key=True)
    disabled_until = UnicodeAttribute(range_key=True)


class InstanceModel(Model):
    """One host:port of a service (`<prefix>instances`)."""

    service = UnicodeAttribute(hash_key=True)
    instance_id = UnicodeAttribute(range_key=True)
    host = UnicodeAttribute()
    port = NumberAttribute()
    enabled = BooleanAttribute(default=True)
    weight = NumberAttribute(default=100)
    zone = UnicodeAttribute(null=True)
    labels = MapAttribute[str, Any](default=dict)
    disabled_reason = UnicodeAttribute(null=True)
    drain = BooleanAttribute(null=True)  # no new requests, open ones finish; absent: false
    slow_start_s = NumberAttribute(null=True)  # weight ramps up after an enable; absent: 0
    disabled_until = UnicodeAttribute(null=True)  # a disable that Atlas ends at this time
    expiry_shard = UnicodeAttribute(null=True)  # EXPIRY_SHARD exactly when disabled_until is set
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    version = NumberAttribute()
    by_host = HostIndex()
    by_expiry = ExpiryIndex()


class _ConfigVersion(Model):
    """What the current entry of a config key and each of its versions both hold."""

    secret = BooleanAttribute(default=False)
    deleted = BooleanAttribute(default=False)
    value = UnicodeAttribute(null=True)  # JSON text of a plain value; never set for secrets
    sealed = UnicodeAttribute(null=True)  # the envelope of a secret (JSON, base64 fields)
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    updated_by = UnicodeAttribute(default="")


class ConfigModel(_ConfigVersion):
    """The current version of each config key (a delete leaves a tombstone: `deleted`)."""

    service = UnicodeAttribute(hash_key=True)
    key = UnicodeAttribute(range_key=True)
    version = NumberAttribute()


class ConfigHistoryModel(_ConfigVersion):
    """Every version of every key; `entry` is `<service>/<key>`."""

    entry = UnicodeAttribute(hash_key=True)
    version = NumberAttribute(range_key=True)
    service = UnicodeAttribute()
    key = UnicodeAttribute()


class TokenServiceIndex(GlobalSecondaryIndex["TokenModel"]):
    """Tokens by service, ordered by id (eventually consistent)."""

    class Meta:
        index_name = TOKEN_SERVICE_INDEX
        projection = AllProjection()

    service = UnicodeAttribute(hash_key=True)
    id = UnicodeAttribute(range_key=True)


class TokenModel(Model):
    """A service token, keyed by the SHA-256 of the token (the token itself is never stored)."""

    token_hash = UnicodeAttribute(hash_key=True)
    id = UnicodeAttribute()
    service = UnicodeAttribute()
    description = UnicodeAttribute(default="")
    created_at = UnicodeAttribute()
    created_by = UnicodeAttribute(default="")
    by_service = TokenServiceIndex()


class AuditModel(Model):
    """One audit record; `service` is `-` for actions on no single service."""

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
    changes = UnicodeAttribute(null=True)  # JSON: what changed (never a secret's value)


@dataclass(frozen=True)
class Models:
    """The model classes bound to one realm's tables, and a connection for its transactions."""

    prefix: str
    Service: type[ServiceModel]
    Instance: type[InstanceModel]
    Config: type[ConfigModel]
    ConfigHistory: type[ConfigHistoryModel]
    Token: type[TokenModel]
    Audit: type[AuditModel]
    connection: Connection

    def all(self) -> list[type[Model]]:
        """Every model class, in table order."""
        return [
            self.Service,
            self.Instance,
            self.Config,
            self.ConfigHistory,
            self.Token,
            self.Audit,
        ]


class StoreSettings(Protocol):
    """What build_models_for reads from Atlas settings."""

    @property
    def table_prefix(self) -> str:
        """Prefix of the realm's table names."""

    @property
    def dynamodb_endpoint(self) -> str | None:
        """DynamoDB endpoint URL; empty or None for AWS proper."""

    @property
    def aws_region(self) -> str:
        """AWS region."""


def build_models(
    prefix: str,
    host: str | None = None,
    region: str = "us-east-1",
    connect_timeout_s: int = 2,
    read_timeout_s: int = 5,
    max_retry_attempts: int = 2,
) -> Models:
    """Bind the model classes to the tables of one realm (`<prefix>services`, ...)."""
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

    class Service(ServiceModel):
        Meta = meta(SERVICES)

    class Instance(InstanceModel):
        Meta = meta(INSTANCES)

    class Config(ConfigModel):
        Meta = meta(CONFIG)

    class ConfigHistory(ConfigHistoryModel):
        Meta = meta(CONFIG_HISTORY)

    class Token(TokenModel):
        Meta = meta(TOKENS)

    class Audit(AuditModel):
        Meta = meta(AUDIT)

    return Models(
        prefix=prefix,
        Service=Service,
        Instance=Instance,
        Config=Config,
        ConfigHistory=ConfigHistory,
        Token=Token,
        Audit=Audit,
        connection=Connection(
            region=region,
            host=host or None,
            read_timeout_seconds=read_timeout_s,
            connect_timeout_seconds=connect_timeout_s,
            max_retry_attempts=max_retry_attempts,
        ),
    )


def build_models_for(settings: StoreSettings) -> Models:
    """Models for the tables of the realm named by Atlas settings."""
    return build_models(
        settings.table_prefix,
        host=settings.dynamodb_endpoint or None,
        region=settings.aws_region,
    )
