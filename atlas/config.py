"""Atlas settings: ATLAS_* environment variables over documented defaults, validated once.

Each field carries its own bounds and meaning (pydantic-settings); a bad value raises
`ConfigError` with one line naming the variable, e.g. `ATLAS_WORKERS: expected an integer,
got 'abc'`. Keyword construction (`Settings(realm=...)`) reads no environment;
`Settings.from_env()` reads `os.environ` (or a given mapping) and keywords override it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from atlas.contract import REALM_RE
from atlas.envvars import ConfigError

ENV_PREFIX = "ATLAS_"
TABLE_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
URL_RE = re.compile(r"^https?://\S+$")
BIND_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$|^unix:\S+$")


class EnvironSource(PydanticBaseSettingsSource):
    """The raw ATLAS_* strings of one mapping (os.environ or a test's dict), keyed by field."""

    def __init__(self, settings_cls: type[AtlasSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.atlas_cls = settings_cls
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The raw string of one field's variable, or None when it is not set."""
        return self.environ.get(self.atlas_cls.env_name(field_name)), field_name, False

    def __call__(self) -> dict[str, Any]:
        """Every set variable, as {field name: raw string}."""
        values: dict[str, Any] = {}
        for name, field in self.atlas_cls.model_fields.items():
            raw, key, _ = self.get_field_value(field, name)
            if raw is not None:
                values[key] = raw
        return values


class AtlasSettings(BaseSettings):
    """Shared behaviour of Atlas settings classes: ATLAS_* names, one-line errors, docs."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        str_strip_whitespace=True,
        validate_by_name=True,
        validate_default=True,
    )
    title: ClassVar[str] = "settings"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(describe_errors(type(self), exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keywords only: the environment is read by `from_env`, never behind a caller's back."""
        return (init_settings,)

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable of a field (its alias, else ATLAS_<NAME>)."""
        field = cls.model_fields.get(field_name)
        alias = field.validation_alias if field is not None else None
        if isinstance(alias, str):
            return alias
        if field is None and field_name.startswith(ENV_PREFIX):
            return field_name  # an error located by alias
        return ENV_PREFIX + field_name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Self:
        """Build from ATLAS_* variables (default: os.environ); keywords win; ConfigError if bad."""
        values = EnvironSource(cls, os.environ if environ is None else environ)()
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Self:
        """Return a copy with some fields changed (validated again)."""
        return type(self)(**{**self.model_dump(), **changes})

    @classmethod
    def documented(cls) -> list[tuple[str, str, str]]:
        """(variable, default as written in a shell, meaning) for every field."""
        rows = []
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            shown = extra.get("shown")
            default = str(shown) if shown is not None else show_value(field.default)
            rows.append((cls.env_name(name), default, field.description or ""))
        return rows


def show_value(value: Any) -> str:
    """A default as one would write it in the environment (true, 10, a,b; empty: "(none)")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "(none)"
    if value is None or value == "":
        return "(none)"
    return str(value)


def _bounds(field: FieldInfo) -> tuple[Any, Any]:
    lo = hi = None
    for m in field.metadata:
        lo = getattr(m, "ge", getattr(m, "gt", lo))
        hi = getattr(m, "le", getattr(m, "lt", hi))
    return lo, hi


def _explain(cls: type[AtlasSettings], field_name: str | None, err: Any) -> str:
    kind = err["type"]
    field = cls.model_fields.get(field_name or "")
    extra = field.json_schema_extra if field and isinstance(field.json_schema_extra, dict) else {}
    # Never echo what was given for a secret (admin tokens).
    got = "" if extra.get("secret") else f", got {err.get('input')!r}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return "expected an integer" + got
    if kind in {"float_parsing", "float_type", "finite_number"}:
        return "expected a number" + got
    if kind in {"bool_parsing", "bool_type"}:
        return "expected a boolean (true/false)" + got
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        lo, hi = _bounds(field) if field else (None, None)
        if lo is not None and hi is not None:
            return f"must be between {lo:g} and {hi:g}" + got
        return str(err["msg"]).lower() + got
    if kind == "literal_error":
        return f"expected {err['ctx']['expected']}" + got
    if kind == "extra_forbidden":
        return "no such setting"
    return str(err["msg"]) + got


def describe_errors(cls: type[AtlasSettings], exc: ValidationError) -> str:
    """One line naming each bad variable: `ATLAS_X: what was expected, got '...'`."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        field_name = str(loc[0]) if loc else None
        # A field located by its alias (ATLAS_RECONCILER) maps back to its field name.
        for name, field in cls.model_fields.items():
            if field_name is not None and field.validation_alias == field_name:
                field_name = name
        message = _explain(cls, field_name, err)
        parts.append(f"{cls.env_name(field_name)}: {message}" if field_name else message)
    return "; ".join(parts)


def setting(
    default: Any, meaning: str, *, shown: str | None = None, secret: bool = False, **rules: Any
) -> Any:
    """A settings field: its default, its meaning for `atlas settings`, its bounds (ge/le...).

    `shown` is the default as documented when the stored one is derived (e.g. from the realm);
    a `secret` value is never echoed in an error.
    """
    extra: dict[str, Any] = {}
    if shown is not None:
        extra["shown"] = shown
    if secret:
        extra["secret"] = True
    if isinstance(default, float):
        rules.setdefault("allow_inf_nan", False)
    return Field(default, description=meaning, json_schema_extra=extra or None, **rules)


DAY_S = 86_400.0
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(AtlasSettings):
    """Every knob of an Atlas server process (API, mirror, reconciler, secrets)."""

    title: ClassVar[str] = "Atlas server (atlas serve, atlas migrate, atlas reconcile)"

    realm: str = setting("local", "realm served: table names, ZooKeeper root, config lookups")
    table_prefix: str = setting("", "DynamoDB table name prefix", shown="atlas-<realm>-")
    dynamodb_endpoint: str = setting(
        "", "endpoint URL of a DynamoDB-compatible server", shown="(AWS)"
    )
    aws_region: str = setting("us-east-1", "AWS region", min_length=1)
    admin_tokens: tuple[str, ...] = setting(
        (), "comma-separated admin bearer tokens (16 characters or more each)", secret=True
    )
    auth_disabled: bool = setting(False, "allowed only with ATLAS_REALM=local")
    zk_hosts: str = setting(
        "", "ZooKeeper connect string, e.g. zk1:2181,zk2:2181,zk3:2181", shown="(none: no mirror)"
    )
    zk_timeout_s: float = setting(
        10.0,
        "ZooKeeper session timeout; a client that cannot connect for 2x this is replaced",
        ge=0.1,
        le=DAY_S,
    )
    scan_segments: int = setting(
        1,
        "DynamoDB parallel-scan segments of a full-table read (reconcile, the view's truth "
        "check): more for a large realm on DynamoDB proper; keep 1 on moto",
        ge=1,
        le=64,
    )
    scan_page_size: int = setting(
        500, "items asked for per page of a full-table read", ge=25, le=10_000
    )
    zk_start_wait_s: float = setting(
        5.0,
        "how long a starting worker waits for its ZooKeeper session before it serves (writes "
        "made before it connects are published later, by the pump)",
        ge=0,
        le=DAY_S,
    )
    reconcile_interval_s: float = setting(
        60.0,
        "full DynamoDB/ZooKeeper comparison period (also on election and reconnect)",
        ge=0.1,
        le=DAY_S,
    )
    reconciler_enabled: bool = setting(
        True, "take part in the reconciler election", validation_alias="ATLAS_RECONCILER"
    )
    max_body_bytes: int = setting(
        1024 * 1024, "larger request bodies get 413", ge=1024, le=64 * 1024 * 1024
    )
    page_limit_default: int = setting(100, "page size when ?limit= is absent", ge=1, le=10_000)
    page_limit_max: int = setting(1000, "largest ?limit= accepted", ge=1, le=10_000)
    log_level: LogLevel = setting("INFO", "DEBUG, INFO, WARNING or ERROR (Atlas's own loggers)")
    migrations_dir: str = setting(
        "", "where `atlas migrate` finds migrations", shown="the repository's migrations/"
    )
    key_provider: Literal["kms", "local"] = setting(
        "kms", "kms, or local (a master key file) to wrap secret data keys"
    )
    kms_endpoint: str = setting("", "KMS endpoint URL", shown="ATLAS_DYNAMODB_ENDPOINT, else AWS")
    kms_key_id: str = setting("", "the KMS key that wraps data keys", shown="alias/atlas-<realm>")
    kms_create_key: bool = setting(True, "create the KMS alias on first use when missing")
    master_key_file: str = setting(
        "", "for ATLAS_KEY_PROVIDER=local: a file of 32 random bytes, base64-encoded"
    )
    data_key_cache_s: float = setting(
        300.0, "how long unwrapped data keys stay in memory (0: never)", ge=0, le=DAY_S
    )
    token_cache_s: float = setting(
        300.0,
        "how long a cached service-token lookup lives while the revocation stamp is watched "
        "(any revoke drops it at once; 0: no cache)",
        ge=0,
        le=DAY_S,
    )
    token_cache_unwatched_s: float = setting(
        1.0,
        "how long it lives while the stamp is not watched (no ZooKeeper, or disconnected)",
        ge=0,
        le=DAY_S,
    )
    view_enabled: bool = setting(
        True, "serve reads from the in-memory view fed by ZooKeeper (needs ATLAS_ZK_HOSTS)"
    )
    min_index_wait_s: float = setting(
        5.0, "?min_index=N waits at most this long for the view, then reads DynamoDB", ge=0, le=60
    )
    blocking_wait_default_s: float = setting(
        30.0, "blocking query (?index=N) wait when ?wait= is absent", ge=0.1, le=DAY_S
    )
    blocking_wait_max_s: float = setting(
        300.0, "longest ?wait= honoured (longer ones are cut to it)", ge=0.1, le=DAY_S
    )
    max_waiters: int = setting(
        1000,
        "requests one process may hold waiting; beyond, 503 with Retry-After",
        ge=1,
        le=1_000_000,
    )
    audit_queue_size: int = setting(
        10_000, "audit records waiting to be written; beyond, dropped", ge=1, le=1_000_000
    )
    ui_secret_key: str = setting(
        "",
        "signs the dashboard's session cookie (32+ characters; same on every process)",
        shown="(derived from ATLAS_ADMIN_TOKENS)",
        secret=True,
        repr=False,
    )

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str) -> str:
        if not REALM_RE.match(value):
            raise ValueError(
                f"must match {REALM_RE.pattern} (it names tables and znodes), got {value!r}"
            )
        return value

    @field_validator("table_prefix")
    @classmethod
    def _table_prefix(cls, value: str, info: ValidationInfo) -> str:
        if not value and "realm" in info.data:
            value = f"atlas-{info.data['realm']}-"
        if value and not TABLE_PREFIX_RE.match(value):
            raise ValueError(f"invalid table name prefix {value!r}")
        return value

    @field_validator("kms_key_id")
    @classmethod
    def _kms_key_id(cls, value: str, info: ValidationInfo) -> str:
        if not value and "realm" in info.data:
            return f"alias/atlas-{info.data['realm']}"
        return value

    @field_validator("dynamodb_endpoint", "kms_endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not URL_RE.match(value):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value

    @field_validator("admin_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("admin_tokens")
    @classmethod
    def _token_length(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(t) < 16 for t in value):
            raise ValueError("every token must be at least 16 characters")
        return value

    @field_validator("ui_secret_key")
    @classmethod
    def _ui_key(cls, value: str) -> str:
        if value and len(value) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.auth_disabled and self.realm != "local":
            raise ValueError(
                "ATLAS_AUTH_DISABLED: auth may be switched off only in the 'local' realm, "
                f"not in {self.realm!r}"
            )
        if not self.auth_disabled and not self.admin_tokens:
            raise ValueError(
                "ATLAS_ADMIN_TOKENS: at least one admin token is required "
                "(or ATLAS_AUTH_DISABLED=true in the local realm)"
            )
        if self.page_limit_default > self.page_limit_max:
            raise ValueError("ATLAS_PAGE_LIMIT_DEFAULT: must not exceed ATLAS_PAGE_LIMIT_MAX")
        if self.key_provider == "local" and not self.master_key_file:
            raise ValueError(
                "ATLAS_MASTER_KEY_FILE: required with ATLAS_KEY_PROVIDER=local "
                "(a file holding 32 random bytes, base64-encoded)"
            )
        return self

    @property
    def kms_endpoint_url(self) -> str | None:
        """Where KMS answers: ATLAS_KMS_ENDPOINT, else the DynamoDB endpoint (moto serves both)."""
        return self.kms_endpoint or self.dynamodb_endpoint or None


class ServeSettings(AtlasSettings):
    """How `atlas serve` (gunicorn) listens: address, worker processes, threads per worker."""

    title: ClassVar[str] = "gunicorn (atlas serve, atlas.gunicorn_conf)"

    bind: str = setting("127.0.0.1:8080", "host:port (or unix:PATH) the API listens on")
    workers: int = setting(2, "gunicorn worker processes", ge=1, le=256)
    threads: int = setting(4, "threads per worker (gthread)", ge=1, le=1024)
    worker_class: Literal["gthread", "gevent"] = setting(
        "gevent",
        "gunicorn worker: gthread (a thread per request) or gevent (a greenlet per request, "
        "for many blocking queries at once)",
    )
    worker_connections: int = setting(
        2000, "gevent: concurrent connections per worker", ge=1, le=1_000_000
    )
    graceful_timeout_s: int = setting(
        10, "on stop, how long workers may finish open requests and close ZooKeeper", ge=1, le=3600
    )

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        if not BIND_RE.match(value):
            raise ValueError(f"expected host:port or unix:PATH, got {value!r}")
        return value


SETTINGS_CLASSES: tuple[type[AtlasSettings], ...] = (Settings, ServeSettings)
__all__ = ["SETTINGS_CLASSES", "AtlasSettings", "ConfigError", "ServeSettings", "Settings"]
