"""Versioned config entries and secrets of a service (DynamoDB-first, one transaction per change)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from atlas.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from atlas.registry.crypto import Sealer, SecretContext
from atlas.registry.models import ConfigHistoryModel, ConfigModel
from atlas.registry.records import ConfigEntry, ConfigView, Page
from atlas.registry.service import Registry
from atlas.registry.store import CursorKey, TransactionCanceled, race_retries

log = logging.getLogger(__name__)

MAX_VALUE_BYTES = 64 * 1024
MASKED: dict[str, Any] = {"secret": True}
VERSION_CURSOR = CursorKey(("entry", "version"), numbers=frozenset({"version"}))


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
        self.store = registry.store
        self.sealer = sealer
        self.realm = realm

    # ------------------------------------------------------------ helpers

    def _ctx(self, service: str, key: str, version: int) -> SecretContext:
        return SecretContext(self.realm, service, key, version)

    def _entry(self, m: ConfigModel | ConfigHistoryModel, reveal: bool) -> ConfigEntry:
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

    def _current(self, service: str, key: str) -> ConfigModel | None:
        return self.store.get(self.models.Config, service, key, action="reading a config entry")

    def _missing(self, service: str, key: str) -> NotFound:
        self.registry.get_service(service)  # a missing service is the better 404
        return NotFound(f"config key {key!r} of service {service!r} does not exist")

    # ------------------------------------------------------------- reads

    def get_config(self, service: str, reveal: bool) -> ConfigView:
        """Every live key of a service; secrets opened when `reveal`, else masked."""
        svc = self.registry.get_service(service)
        # The version is read before the values, so it never claims more than they hold.
        version = svc.config_version
        with self.store.operation("reading the service's config"):
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
        h = self.store.get(
            self.models.ConfigHistory,
            f"{service}/{key}",
            version,
            action="reading a config version",
        )
        if h is None:
            self.registry.get_service(service)
            raise NotFound(f"config key {key!r} of service {service!r} has no version {version}")
        if h.deleted:
            raise NotFound(
                f"config key {key!r} of service {service!r} was deleted in version {version}"
            )
        return self._entry(h, reveal)

    def list_versions(self, service: str, key: str, limit: int, cursor: str | None = None) -> Page:
        """One page of a key's history, newest first; secrets always masked."""
        entry = f"{service}/{key}"
        start = VERSION_CURSOR.decode(cursor, entry=entry)
        page = self.store.paginate(
            lambda **kw: self.models.ConfigHistory.query(
                entry, scan_index_forward=False, consistent_read=True, **kw
            ),
            limit=limit,
            start=start,
            key=VERSION_CURSOR,
            convert=lambda m: self._entry(m, reveal=False),
            action="listing config versions",
        )
        if not page.items and start is None:
            raise self._missing(service, key)
        return page

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

    def _fill(self, m: ConfigModel, text: str, value: Any, secret: bool, version: int) -> None:
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

        def tombstone(m: ConfigModel, version: int) -> None:
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
        fill: Callable[[ConfigModel, int], None],
        deleting: bool = False,
    ) -> tuple[ConfigEntry, bool]:
        svc = self.models.Service
        model = self.models.Config
        what = f"config key {key!r} of service {service!r}"
        for _ in race_retries(what):
            cur = self._current(service, key)
            live = cur is not None and not cur.deleted
            if deleting and not live:
                raise self._missing(service, key)
            if must_exist and not live:
                self.registry.get_service(service)
                raise PreconditionFailed(f"{what} does not exist")
            if if_match is not None and (cur is None or not live or int(cur.version) != if_match):
                self.registry.get_service(service)
                raise PreconditionFailed(f"{what} is not at version {if_match}")
            previous = int(cur.version) if cur is not None else 0
            version = previous + 1
            now = self.registry.now()
            created = cur.created_at if cur is not None and live else now
            current = model(
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
            try:
                with self.store.transaction("writing the config entry") as tx:
                    tx.save(
                        "entry",
                        current,
                        condition=model.key.does_not_exist()
                        if cur is None
                        else model.version == previous,
                    )
                    tx.save(
                        "history",
                        history,
                        condition=self.models.ConfigHistory.entry.does_not_exist(),
                    )
                    tx.update(
                        "service",
                        svc(service),
                        [svc.config_version.add(1)],
                        condition=svc.live(),
                    )
            except TransactionCanceled as canceled:
                if canceled.failed("service"):
                    if self.registry.get_service(service).deleting:  # NotFound if it is gone
                        raise Conflict(f"service {service!r} is being deleted") from None
                    continue
                if if_match is not None:
                    raise PreconditionFailed(f"{what} changed concurrently") from None
                continue
            # DynamoDB has the change; the mirror learns the new config version from the record.
            self.registry.service_changed(service)
            return self._entry(current, reveal=False), not live
        raise AssertionError("unreachable: race_retries raises when the attempts are spent")
