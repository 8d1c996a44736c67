"""Atlas settings: documented defaults, overridden by ATLAS_* environment variables, validated once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from atlas.contract import REALM_RE


class ConfigError(ValueError):
    """A setting has a bad value; start-up must stop with this message."""


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}: expected a boolean (true/false), got {raw!r}")


def _parse_int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: must be between {lo} and {hi}, got {value}")
    return value


def _parse_float(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: must be between {lo} and {hi}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Every knob of an Atlas process. Field metadata documents the ATLAS_* variable."""

    realm: str = field(default="local", metadata={"env": "ATLAS_REALM"})
    table_prefix: str = field(default="", metadata={"env": "ATLAS_TABLE_PREFIX"})
    dynamodb_endpoint: str = field(default="", metadata={"env": "ATLAS_DYNAMODB_ENDPOINT"})
    aws_region: str = field(default="us-east-1", metadata={"env": "ATLAS_AWS_REGION"})
    admin_tokens: tuple[str, ...] = field(default=(), metadata={"env": "ATLAS_ADMIN_TOKENS"})
    auth_disabled: bool = field(default=False, metadata={"env": "ATLAS_AUTH_DISABLED"})
    zk_hosts: str = field(default="", metadata={"env": "ATLAS_ZK_HOSTS"})
    zk_timeout_s: float = field(default=10.0, metadata={"env": "ATLAS_ZK_TIMEOUT_S"})
    reconcile_interval_s: float = field(
        default=60.0, metadata={"env": "ATLAS_RECONCILE_INTERVAL_S"}
    )
    reconciler_enabled: bool = field(default=True, metadata={"env": "ATLAS_RECONCILER"})
    max_body_bytes: int = field(default=1024 * 1024, metadata={"env": "ATLAS_MAX_BODY_BYTES"})
    page_limit_default: int = field(default=100, metadata={"env": "ATLAS_PAGE_LIMIT_DEFAULT"})
    page_limit_max: int = field(default=1000, metadata={"env": "ATLAS_PAGE_LIMIT_MAX"})
    log_level: str = field(default="INFO", metadata={"env": "ATLAS_LOG_LEVEL"})
    key_provider: str = field(default="kms", metadata={"env": "ATLAS_KEY_PROVIDER"})
    kms_endpoint: str = field(default="", metadata={"env": "ATLAS_KMS_ENDPOINT"})
    kms_key_id: str = field(default="", metadata={"env": "ATLAS_KMS_KEY_ID"})
    kms_create_key: bool = field(default=True, metadata={"env": "ATLAS_KMS_CREATE_KEY"})
    master_key_file: str = field(default="", metadata={"env": "ATLAS_MASTER_KEY_FILE"})
    data_key_cache_s: float = field(default=300.0, metadata={"env": "ATLAS_DATA_KEY_CACHE_S"})
    token_cache_s: float = field(default=0.0, metadata={"env": "ATLAS_TOKEN_CACHE_S"})
    audit_queue_size: int = field(default=10_000, metadata={"env": "ATLAS_AUDIT_QUEUE_SIZE"})
    # The dashboard's session key (atlas.ui); empty: derived from the admin tokens.
    ui_secret_key: str = field(default="", repr=False, metadata={"env": "ATLAS_UI_SECRET_KEY"})

    def __post_init__(self) -> None:
        if not REALM_RE.match(self.realm):
            raise ConfigError(
                f"ATLAS_REALM: must match {REALM_RE.pattern} (it names tables and znodes), "
                f"got {self.realm!r}"
            )
        if not self.table_prefix:
            object.__setattr__(self, "table_prefix", f"atlas-{self.realm}-")
        if not re.match(r"^[A-Za-z0-9_.-]{1,200}$", self.table_prefix):
            raise ConfigError(
                f"ATLAS_TABLE_PREFIX: invalid table name prefix {self.table_prefix!r}"
            )
        if self.auth_disabled and self.realm != "local":
            raise ConfigError(
                "ATLAS_AUTH_DISABLED: auth may be switched off only in the 'local' realm, "
                f"not in {self.realm!r}"
            )
        if not self.auth_disabled and not self.admin_tokens:
            raise ConfigError(
                "ATLAS_ADMIN_TOKENS: at least one admin token is required "
                "(or ATLAS_AUTH_DISABLED=true in the local realm)"
            )
        for token in self.admin_tokens:
            if len(token) < 16:
                raise ConfigError("ATLAS_ADMIN_TOKENS: every token must be at least 16 characters")
        if self.dynamodb_endpoint and not re.match(r"^https?://", self.dynamodb_endpoint):
            raise ConfigError(
                f"ATLAS_DYNAMODB_ENDPOINT: expected an http(s) URL, got {self.dynamodb_endpoint!r}"
            )
        if self.page_limit_default > self.page_limit_max:
            raise ConfigError("ATLAS_PAGE_LIMIT_DEFAULT: must not exceed ATLAS_PAGE_LIMIT_MAX")
        if self.key_provider not in {"kms", "local"}:
            raise ConfigError(
                f"ATLAS_KEY_PROVIDER: expected 'kms' or 'local', got {self.key_provider!r}"
            )
        if self.key_provider == "local" and not self.master_key_file:
            raise ConfigError(
                "ATLAS_MASTER_KEY_FILE: required with ATLAS_KEY_PROVIDER=local "
                "(a file holding 32 random bytes, base64-encoded)"
            )
        if self.kms_endpoint and not re.match(r"^https?://", self.kms_endpoint):
            raise ConfigError(
                f"ATLAS_KMS_ENDPOINT: expected an http(s) URL, got {self.kms_endpoint!r}"
            )
        if not self.kms_key_id:
            object.__setattr__(self, "kms_key_id", f"alias/atlas-{self.realm}")
        if self.ui_secret_key and len(self.ui_secret_key) < 32:
            raise ConfigError("ATLAS_UI_SECRET_KEY: must be at least 32 characters")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(
                f"ATLAS_LOG_LEVEL: expected DEBUG/INFO/WARNING/ERROR, got {self.log_level!r}"
            )

    @property
    def zk_root(self) -> str:
        """The realm's ZooKeeper root, `/atlas/<realm>`."""
        return f"/atlas/{self.realm}"

    @property
    def kms_endpoint_url(self) -> str | None:
        """Where KMS answers: ATLAS_KMS_ENDPOINT, else the DynamoDB endpoint (moto serves both)."""
        return self.kms_endpoint or self.dynamodb_endpoint or None

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ATLAS_* variables over the defaults; raise ConfigError on bad values."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if name not in env:
                continue
            raw = env[name]
            if f.type in ("bool", bool):
                values[f.name] = _parse_bool(name, raw)
            elif f.name == "admin_tokens":
                values[f.name] = tuple(t.strip() for t in raw.split(",") if t.strip())
            elif f.name in {"max_body_bytes"}:
                values[f.name] = _parse_int(name, raw, 1024, 64 * 1024 * 1024)
            elif f.name in {"page_limit_default", "page_limit_max"}:
                values[f.name] = _parse_int(name, raw, 1, 10_000)
            elif f.name in {"zk_timeout_s", "reconcile_interval_s"}:
                values[f.name] = _parse_float(name, raw, 0.1, 86_400.0)
            elif f.name in {"data_key_cache_s", "token_cache_s"}:
                values[f.name] = _parse_float(name, raw, 0.0, 86_400.0)
            elif f.name == "audit_queue_size":
                values[f.name] = _parse_int(name, raw, 1, 1_000_000)
            else:
                values[f.name] = raw.strip()
        values.update(overrides)
        return cls(**values)

    @classmethod
    def documented(cls) -> list[tuple[str, str]]:
        """(variable, default) pairs, for the README and `atlas config`."""
        return [(f.metadata["env"], repr(f.default)) for f in fields(cls)]
