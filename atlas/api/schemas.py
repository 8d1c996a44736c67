"""Marshmallow schemas for every request and response body of the v1 API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from atlas.contract import (
    DEFAULT_WEIGHT,
    HEALTH_CHECK_PATH_MAX,
    HEALTH_CHECK_PATH_RE,
    HEALTH_CHECK_PATH_RULE,
    HOST_RULE,
    LABEL_KEY_RE,
    PORT_MAX,
    PORT_MIN,
    SERVICE_NAME_RE,
    SLOW_START_MAX_S,
    TAG_RE,
    WEIGHT_MAX,
    WEIGHT_MIN,
    normalize_host,
)


class StrictInteger(fields.Integer):
    """An integer that refuses strings, booleans and fractions.

    A JSON number with a zero fraction (`10.0`, `1e2`) is an integer, as JSON Schema (and so
    openapi.yaml) reads it.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return int(super()._deserialize(value, attr, data, **kwargs))


class StrictBoolean(fields.Boolean):
    """A boolean that refuses "yes", 1 and friends."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Host(fields.String):
    """A hostname or an IP address, normalized."""

    default_error_messages = {"host": HOST_RULE}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        raw = super()._deserialize(value, attr, data, **kwargs)
        host = normalize_host(raw)
        if host is None:
            raise self.make_error("host")
        return host


class FullMatch(validate.Regexp):
    """validate.Regexp over the whole value (re.match with `$` accepts a trailing newline)."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


#: An RFC 3339 date-time (`2026-05-01T10:30:00Z`, `...00.250+02:00`); the same in openapi.yaml.
RFC3339_RE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
#: Largest `min_enabled`.
MIN_ENABLED_MAX = 10000


class Rfc3339(fields.Field):
    """An RFC 3339 date-time with a zone (Z or an offset), as an aware datetime."""

    default_error_messages = {
        "invalid": "Not an RFC 3339 date-time with a time zone (2026-05-01T10:30:00Z)."
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str) or RFC3339_RE.fullmatch(value) is None:
            raise self.make_error("invalid")
        text = value.upper()
        head, dot, rest = text.partition(".")
        if dot:  # Python reads at most microseconds: cut the fraction to 6 digits
            digits = len(rest) - len(rest.lstrip("0123456789"))
            text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise self.make_error("invalid") from None


def _only_on_disable(data: dict[str, Any]) -> None:
    """A (non-null) disabled_until goes only with `enabled: false` in the same body."""
    if data.get("disabled_until") is not None and data.get("enabled") is not False:
        raise ValidationError('Only on a disable: send "enabled": false with it.', "disabled_until")


def _port(**kwargs: Any) -> StrictInteger:
    return StrictInteger(validate=validate.Range(PORT_MIN, PORT_MAX), **kwargs)


class StrictSchema(Schema):
    """Unknown fields are errors."""

    class Meta:
        unknown = RAISE


class HealthCheckSchema(StrictSchema):
    """An HTTP health check."""

    path = fields.String(
        required=True,
        validate=[
            validate.Length(1, HEALTH_CHECK_PATH_MAX),
            FullMatch(HEALTH_CHECK_PATH_RE, error=HEALTH_CHECK_PATH_RULE),
        ],
    )
    interval_s = StrictInteger(load_default=10, validate=validate.Range(1, 3600))
    timeout_s = StrictInteger(load_default=2, validate=validate.Range(1, 600))

    @validates_schema
    def _timeout_within_interval(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("timeout_s", 2) > data.get("interval_s", 10):
            raise ValidationError("Must not exceed interval_s.", "timeout_s")


def _tags() -> fields.List:
    return fields.List(
        fields.String(validate=FullMatch(TAG_RE)),
        validate=validate.Length(max=50),
    )


class ServiceCreateSchema(StrictSchema):
    """Body of POST /v1/services."""

    name = fields.String(required=True, validate=FullMatch(SERVICE_NAME_RE))
    description = fields.String(load_default="", validate=validate.Length(max=1024))
    owner = fields.String(load_default="", validate=validate.Length(max=256))
    port = _port(load_default=None, allow_none=True)
    health_check = fields.Nested(HealthCheckSchema, load_default=None, allow_none=True)
    tags = _tags()
    min_enabled = StrictInteger(load_default=0, validate=validate.Range(0, MIN_ENABLED_MAX))


class ServicePatchSchema(StrictSchema):
    """Body of PATCH /v1/services/{name}: any subset of the mutable fields."""

    description = fields.String(validate=validate.Length(max=1024))
    owner = fields.String(validate=validate.Length(max=256))
    port = _port(allow_none=True)
    health_check = fields.Nested(HealthCheckSchema, allow_none=True)
    tags = _tags()
    min_enabled = StrictInteger(validate=validate.Range(0, MIN_ENABLED_MAX))


class ServiceSchema(Schema):
    """A service as Atlas returns it."""

    name = fields.String()
    description = fields.String()
    owner = fields.String()
    port = fields.Integer(allow_none=True)
    health_check = fields.Nested(HealthCheckSchema, allow_none=True)
    tags = fields.List(fields.String())
    min_enabled = fields.Integer()
    version = fields.Integer()
    created_at = fields.String()
    updated_at = fields.String()


def _labels() -> fields.Dict:
    return fields.Dict(
        keys=fields.String(validate=FullMatch(LABEL_KEY_RE)),
        values=fields.String(validate=validate.Length(max=256)),
        validate=validate.Length(max=64),
    )


class InstancePutSchema(StrictSchema):
    """Body of PUT /v1/services/{name}/instances/{host}:{port}."""

    host = Host()
    port = _port()
    enabled = StrictBoolean(load_default=True)
    weight = StrictInteger(
        load_default=DEFAULT_WEIGHT, validate=validate.Range(WEIGHT_MIN, WEIGHT_MAX)
    )
    zone = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 64))
    labels = _labels()
    disabled_reason = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=512)
    )
    drain = StrictBoolean(load_default=False)
    slow_start_s = StrictInteger(load_default=0, validate=validate.Range(0, SLOW_START_MAX_S))
    disabled_until = Rfc3339(load_default=None, allow_none=True)

    @validates_schema
    def _until_on_disable(self, data: dict[str, Any], **kwargs: Any) -> None:
        _only_on_disable(data)


class InstancePatchSchema(StrictSchema):
    """Body of PATCH on an instance: any subset of the mutable fields."""

    enabled = StrictBoolean()
    weight = StrictInteger(validate=validate.Range(WEIGHT_MIN, WEIGHT_MAX))
    zone = fields.String(allow_none=True, validate=validate.Length(1, 64))
    labels = _labels()
    disabled_reason = fields.String(allow_none=True, validate=validate.Length(max=512))
    drain = StrictBoolean()
    slow_start_s = StrictInteger(validate=validate.Range(0, SLOW_START_MAX_S))
    disabled_until = Rfc3339(allow_none=True)

    @validates_schema
    def _until_on_disable(self, data: dict[str, Any], **kwargs: Any) -> None:
        _only_on_disable(data)


class InstanceSchema(Schema):
    """An instance as Atlas returns it."""

    service = fields.String()
    id = fields.String()
    host = fields.String()
    port = fields.Integer()
    enabled = fields.Boolean()
    weight = fields.Integer()
    zone = fields.String(allow_none=True)
    labels = fields.Dict(keys=fields.String(), values=fields.String())
    disabled_reason = fields.String(allow_none=True)
    drain = fields.Boolean()
    slow_start_s = fields.Integer()
    disabled_until = fields.String(allow_none=True)
    version = fields.Integer()
    created_at = fields.String()
    updated_at = fields.String()


class HostActionSchema(StrictSchema):
    """Body (optional) of POST /v1/hosts/{host}/enable."""

    reason = fields.String(validate=validate.Length(max=512))


class HostDisableSchema(HostActionSchema):
    """Body (optional) of POST /v1/hosts/{host}/disable: a reason, and an end for a timed one."""

    disabled_until = Rfc3339(allow_none=True)


class ForceQuerySchema(StrictSchema):
    """Query string of the writes min_enabled may refuse (disable, drain, detach, host-disable)."""

    force = fields.Boolean(load_default=False)


class HostSchema(Schema):
    """Every instance on one host."""

    host = fields.String()
    items = fields.List(fields.Nested(InstanceSchema))


class InstanceRefSchema(Schema):
    """Which instance: its service and its id."""

    service = fields.String()
    id = fields.String()


class HostChangeSchema(HostSchema):
    """A host-wide enable/disable: every instance after it, which it changed, which it left."""

    changed = fields.List(fields.Nested(InstanceRefSchema))
    unchanged = fields.List(fields.Nested(InstanceRefSchema))


#: A cursor is opaque, but always the unpadded base64url of a JSON object (`{"` is `eyJ`).
CURSOR_RE = re.compile(r"^eyJ[A-Za-z0-9_-]{1,2045}$")


def _cursor() -> fields.String:
    return fields.String(
        validate=FullMatch(CURSOR_RE, error="Not a cursor Atlas issued (a next_cursor value).")
    )


class PageQuerySchema(StrictSchema):
    """Query string of a paginated list."""

    limit = fields.Integer(validate=validate.Range(1, 1000))
    cursor = _cursor()


def _enabled_filter() -> fields.Boolean:
    return fields.Boolean(truthy={"true"}, falsy={"false"}, error_messages={
        "invalid": "Must be true or false."})  # fmt: skip


class InstanceListQuerySchema(PageQuerySchema):
    """Query string of GET /v1/services/{name}/instances."""

    enabled = _enabled_filter()


class HostQuerySchema(StrictSchema):
    """Query string of GET /v1/hosts/{host}."""

    enabled = _enabled_filter()


class DeleteQuerySchema(StrictSchema):
    """Query string of DELETE /v1/services/{name}."""

    cascade = fields.Boolean(load_default=False)


class ConfigPutSchema(StrictSchema):
    """Body of PUT /v1/services/{name}/config/{key}."""

    value = fields.Raw(required=True, allow_none=True)
    secret = StrictBoolean(load_default=False)


class ConfigEntrySchema(Schema):
    """One version of a config key (a secret's value shown as {"secret": true} unless revealed)."""

    service = fields.String()
    key = fields.String()
    value = fields.Raw(allow_none=True)
    secret = fields.Boolean()
    deleted = fields.Boolean()
    version = fields.Integer()
    created_at = fields.String()
    updated_at = fields.String()
    updated_by = fields.String()


class ConfigEntryQuerySchema(StrictSchema):
    """Query string of GET /v1/services/{name}/config/{key}."""

    version = fields.Integer(validate=validate.Range(1, 2**53))


class TokenCreateSchema(StrictSchema):
    """Body (optional) of POST /v1/services/{name}/tokens."""

    description = fields.String(load_default="", validate=validate.Length(max=256))


class TokenSchema(Schema):
    """A service token as listed: never its value."""

    id = fields.String()
    service = fields.String()
    description = fields.String()
    created_at = fields.String()
    created_by = fields.String()


class AuditQuerySchema(StrictSchema):
    """Query string of GET /v1/audit."""

    service = fields.String(validate=FullMatch(SERVICE_NAME_RE))
    limit = fields.Integer(validate=validate.Range(1, 1000))
    cursor = _cursor()


class AuditRecordSchema(Schema):
    """One audit record."""

    id = fields.String()
    at = fields.String()
    service = fields.String(allow_none=True)
    principal = fields.String()
    token_id = fields.String(allow_none=True)
    action = fields.String()
    method = fields.String()
    path = fields.String()
    target = fields.String(allow_none=True)
    status = fields.Integer()
    remote_addr = fields.String(allow_none=True)
    changes = fields.List(fields.Dict(), allow_none=True)
