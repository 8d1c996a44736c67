"""Versioned config entries and secrets of a service (DynamoDB-first, one transaction per change)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pynamodb.constants import KEY

from atlas.errors import Conflict, NotFound, PreconditionFailed, Unavailable, ValidationFailed
from atlas.registry.crypto import Sealer, SecretContext
from atlas.registry.records import ConfigEntry, ConfigView, Page
from atlas.registry.service import (
    MAX_RACE_RETRIES,
    Registry,
    _cancellation_codes,
    _store,
    decode_cursor,
    encode_cursor,
)

log = logging.getLogger(__name__)

MAX_VALUE_BYTES = 64 * 1024
MASKED: dict[str, Any] = {"secret": True}


def encode_value(value: Any) -> str:
    """Canonical JSON text of a config value (a scalar or an object); 422 otherwise."""
    if isinstance(value, list):
        raise ValidationFailed(
            "a config value is a JSON scalar or object", {"value": ["Must not be an array."]}
        )
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError):
        raise ValidationFailed(
            "the value is not representable as JSON", {"value": ["Must be finite JSON."]}
        ) from None
    if len(text.encode()) > MAX_VALUE_BYTES:
        raise ValidationFailed(
            "value too large", {"value": [f"Must be at most {MAX_VALUE_BYTES} bytes as JSON."]}
        )
    return text


class ConfigStore:
    """Config keys of the services of one realm; secrets sealed by a Sealer."""

    def __init__(self, registry: Registry, sealer: Sealer, realm: str) -> None:
        self.registry = registry
        self.models = registry.models
        self.sealer = sealer
        self.realm = realm

    # ------------------------------------------------------------ helpers

    def _ctx(self, service: str, key: str, version: int) -> SecretContext:
        return SecretContext(self.realm, service, key, version)

    def _entry(self, m: Any, reveal: bool) -> ConfigEntry:
        version = int(m.version)
        value: Any = None
        revealed = False
        if m.deleted:
            pass
        elif m.secret:
            if reveal:
                value = self.sealer.open(m.sealed, self._ctx(m.service, m.key, version))
                revealed = True
            else:
                value = dict(MASKED)
        else:
            value = json.loads(m.value) if m.value is not None else None
            revealed = True
        return ConfigEntry(
            service=m.service,
            key=m.key,
            version=version,
            secret=bool(m.secret),
            deleted=bool(m.deleted),
            value=value,
            revealed=revealed,
            created_at=m.created_at,
            updated_at=m.updated_at,
            updated_by=m.updated_by or "",
        )

    def _current(self, service: str, key: str) -> Any | None:
        with _store("reading a config entry"):
            try:
                return self.models.Config.get(service, key, consistent_read=True)
            except self.models.Config.DoesNotExist:
                return None

    def _missing(self, service: str, key: str) -> NotFound:
        self.registry._load_service(service)  # a missing service is the better 404
        return NotFound(f"config key {key!r} of service {service!r} does not exist")

    def _mirror_service(self, service: str) -> None:
        # DynamoDB has the change; the mirror learns the new config version from the record.
        def tell() -> None:
            record = self.registry.find_service(service)
            if record is not None:
                self.registry.mirror.put_service(record)

        self.registry._mirror("put_service", tell)

    # ------------------------------------------------------------- reads

    def get_config(self, service: str, reveal: bool) -> ConfigView:
        """Every live key of a service; secrets opened when `reveal`, else masked."""
        svc = self.registry._load_service(service)
        # The version is read before the values, so it never claims more than they hold.
        version = int(svc.config_version or 0)
        with _store("reading the service's config"):
            items = list(self.models.Config.query(service, consistent_read=True))
        values: dict[str, Any] = {}
        opened: list[str] = []
        for m in items:
            if m.deleted:
                continue
            entry = self._entry(m, reveal)
            values[m.key] = entry.value
            if m.secret and reveal:
                opened.append(m.key)
        return ConfigView(self.realm, service, version, values, tuple(opened))

    def get_entry(
        self, service: str, key: str, version: int | None = None, reveal: bool = True
    ) -> ConfigEntry:
        """The current version of a key, or an older one; 404 if absent or deleted."""
        if version is None:
            m = self._current(service, key)
            if m is None or m.deleted:
                raise self._missing(service, key)
            return self._entry(m, reveal)
        with _store("reading a config version"):
            try:
                h = self.models.ConfigHistory.get(f"{service}/{key}", version, consistent_read=True)
            except self.models.ConfigHistory.DoesNotExist:
                self.registry._load_service(service)
                raise NotFound(
                    f"config key {key!r} of service {service!r} has no version {version}"
                ) from None
        if h.deleted:
            raise NotFound(
                f"config key {key!r} of service {service!r} was deleted in version {version}"
            )
        return self._entry(h, reveal)

    def list_versions(self, service: str, key: str, limit: int, cursor: str | None = None) -> Page:
        """One page of a key's history, newest first; secrets always masked."""
        entry = f"{service}/{key}"
        start = None
        if cursor:
            raw = decode_cursor(cursor, ("entry", "version"))
            version_s = raw["version"]["S"]
            if raw["entry"]["S"] != entry or not (
                version_s.isascii() and version_s.isdigit() and len(version_s) <= 15
            ):
                raise ValidationFailed(
                    "cursor belongs to another listing",
                    {"cursor": ["Not a cursor of this listing."]},
                )
            start = {"entry": {"S": entry}, "version": {"N": str(int(version_s))}}
        with _store("listing config versions"):
            items = list(
                self.models.ConfigHistory.query(
                    entry,
                    scan_index_forward=False,
                    limit=limit + 1,
                    page_size=limit + 1,
                    last_evaluated_key=start,
                    consistent_read=True,
                )
            )
        if not items and start is None:
            raise self._missing(service, key)
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = encode_cursor(
                {"entry": {"S": entry}, "version": {"S": str(int(items[-1].version))}}
            )
        return Page([self._entry(m, reveal=False) for m in items], next_cursor)

    # ------------------------------------------------------------ writes

    def put_entry(
        self,
        service: str,
        key: str,
        value: Any,
        secret: bool,
        if_match: int | None = None,
        must_exist: bool = False,
        by: str = "",
    ) -> tuple[ConfigEntry, bool]:
        """Write a new version of a key (sealed if secret); returns (entry, created), masked."""
        text = encode_value(value)
        return self._write(
            service,
            key,
            if_match,
            must_exist,
            by,
            lambda m, v: self._fill(m, text, value, secret, v),
        )

    def _fill(self, m: Any, text: str, value: Any, secret: bool, version: int) -> None:
        m.secret = secret
        m.deleted = False
        if secret:
            m.value = None
            m.sealed = self.sealer.seal(value, self._ctx(m.service, m.key, version))
        else:
            m.value = text
            m.sealed = None

    def delete_entry(
        self, service: str, key: str, if_match: int | None = None, by: str = ""
    ) -> None:
        """Delete a key; its history is kept and its next write continues the numbering."""

        def tombstone(m: Any, version: int) -> None:
            m.secret = False
            m.deleted = True
            m.value = None
            m.sealed = None

        self._write(service, key, if_match, True, by, tombstone, deleting=True)

    def _write(
        self,
        service: str,
        key: str,
        if_match: int | None,
        must_exist: bool,
        by: str,
        fill: Callable[[Any, int], None],
        deleting: bool = False,
    ) -> tuple[ConfigEntry, bool]:
        svc = self.models.Service
        for _ in range(MAX_RACE_RETRIES):
            cur: Any = self._current(service, key)
            live = cur is not None and not cur.deleted
            if deleting and not live:
                raise self._missing(service, key)
            if must_exist and not live:
                self.registry._load_service(service)
                raise PreconditionFailed(
                    f"config key {key!r} of service {service!r} does not exist"
                )
            if if_match is not None and (not live or int(cur.version) != if_match):
                self.registry._load_service(service)
                raise PreconditionFailed(
                    f"config key {key!r} of service {service!r} is not at version {if_match}"
                )
            previous = int(cur.version) if cur is not None else 0
            version = previous + 1
            now = self.registry._now()
            created = cur.created_at if live else now
            current = self.models.Config(
                service, key, version=version, created_at=created, updated_at=now, updated_by=by
            )
            fill(current, version)
            history = self.models.ConfigHistory(
                f"{service}/{key}",
                version,
                service=service,
                key=key,
                secret=current.secret,
                deleted=current.deleted,
                value=current.value,
                sealed=current.sealed,
                created_at=created,
                updated_at=now,
                updated_by=by,
            )
            model = self.models.Config
            entry_condition = (
                model.key.does_not_exist() if cur is None else model.version == previous
            )
            service_update = svc._get_connection().get_operation_kwargs(
                service,
                key=KEY,
                actions=[svc.config_version.add(1)],
                condition=svc.name.exists() & (svc.deleting == False),  # noqa: E712
            )
            try:
                with _store("writing the config entry"):
                    model._get_connection().connection.transact_write_items(
                        condition_check_items=[],
                        delete_items=[],
                        put_items=[
                            current.get_save_kwargs_from_instance(condition=entry_condition),
                            history.get_save_kwargs_from_instance(
                                condition=self.models.ConfigHistory.entry.does_not_exist()
                            ),
                        ],
                        update_items=[service_update],
                    )
            except Unavailable as exc:
                reasons = _cancellation_codes(exc.__cause__)
                if reasons is None:
                    raise
                if len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                    if self.registry._load_service(service).deleting:  # raises NotFound if gone
                        raise Conflict(f"service {service!r} is being deleted") from None
                    continue
                if "ConditionalCheckFailed" in reasons[:2]:
                    if if_match is not None:
                        raise PreconditionFailed(
                            f"config key {key!r} of service {service!r} changed concurrently"
                        ) from None
                    continue
                raise
            self._mirror_service(service)
            return self._entry(current, reveal=False), not live
        raise Conflict(f"config key {key!r} of service {service!r} kept changing; retry")
