"""Thin resources of config and secrets, service tokens and the audit trail."""

from __future__ import annotations

import re
import threading
from typing import Any

from flask import current_app, g
from flask_restful import Resource

from atlas.api import schemas as s
from atlas.api.auth import ADMIN, CONFIG, Principal
from atlas.api.freshness import Choice, choose, freshness
from atlas.api.http import etag, if_match, if_match_star, load_body, load_query
from atlas.api.resources import Result, page_args
from atlas.contract import check_config_key, check_service_name
from atlas.errors import ValidationFailed
from atlas.registry.audit import AuditLog
from atlas.registry.config import ConfigDocument, ConfigStore
from atlas.registry.records import ConfigEntry
from atlas.registry.tokens import TokenStore
from atlas.view import config_key
from atlas.view import index as write_index

entry_out = s.ConfigEntrySchema()
token_out = s.TokenSchema()
audit_out = s.AuditRecordSchema()
config_put = s.ConfigPutSchema()
entry_query = s.ConfigEntryQuerySchema()
token_create = s.TokenCreateSchema()
audit_query = s.AuditQuerySchema()
TOKEN_ID_RE = re.compile(r"^tok_[0-9a-f]{12}$")

NO_STORE = {"Cache-Control": "no-store"}


def config_store() -> ConfigStore:
    """The config store injected by AtlasExtension."""
    store: ConfigStore = current_app.extensions["atlas"].config
    return store


def token_store() -> TokenStore:
    """The token store injected by AtlasExtension."""
    store: TokenStore = current_app.extensions["atlas"].tokens
    return store


def audit_log() -> AuditLog:
    """The audit log injected by AtlasExtension."""
    log: AuditLog = current_app.extensions["atlas"].audit
    return log


def caller() -> str:
    """The token id of the caller, for `updated_by` / `created_by`."""
    principal: Principal | None = g.get("principal")
    return principal.token_id if principal else ""


def secrets_read(keys: list[str] | tuple[str, ...]) -> None:
    """Note the secrets this response reveals, for the audit hook."""
    if keys:
        g.audit_secrets = [*g.get("audit_secrets", []), *keys]


def dump_entry(entry: ConfigEntry) -> dict[str, Any]:
    """Serialize a config entry."""
    data: dict[str, Any] = entry_out.dump(entry)
    return data


def _names(name: str, key: str) -> tuple[str, str]:
    errors: dict[str, list[str]] = {}
    for field, check, value in (("name", check_service_name, name), ("key", check_config_key, key)):
        try:
            check(value)
        except ValidationFailed as exc:
            errors.update(exc.errors or {field: [exc.detail]})
    if errors:
        raise ValidationFailed("invalid path parameter(s): " + ", ".join(sorted(errors)), errors)
    return name, key


class DocumentCache:
    """Each service's config document as last read from DynamoDB: ciphertexts, never a
    plaintext secret. An entry serves while the view's config stamp of the service is not
    newer than it; a newer stamp drops it. Thread-safe (a lock around a bounded dict)."""

    MAX = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, ConfigDocument] = {}

    def get(self, service: str, stamp: int) -> ConfigDocument | None:
        """The cached document if it is at least as new as `stamp`, else None (dropped)."""
        with self._lock:
            doc = self._docs.get(service)
            if doc is not None and doc.version < stamp:
                del self._docs[service]
                return None
            return doc

    def put(self, doc: ConfigDocument) -> None:
        """Keep a document (the newest one wins)."""
        with self._lock:
            old = self._docs.get(doc.service)
            if old is not None and old.version > doc.version:
                return
            if old is None and len(self._docs) >= self.MAX:
                self._docs.pop(next(iter(self._docs)))
            self._docs[doc.service] = doc


def document_cache() -> DocumentCache:
    """The app's config document cache (created on first use)."""
    ext = current_app.extensions["atlas"]
    cache: DocumentCache | None = getattr(ext, "config_documents", None)
    if cache is None:
        cache = ext.config_documents = DocumentCache()
    return cache


class ConfigDoc(Resource):
    """/v1/services/{name}/config"""

    scope = CONFIG

    def get(self, name: str) -> Result:
        """The service's config: every live key, secrets included for allowed callers.

        With a current view, the document (ciphertexts) comes from memory while the config
        stamp in ZooKeeper says it is the latest; secrets are opened per request.
        """
        check_service_name(name)
        fresh, _ = freshness(blocking=True)
        choice = choose(fresh, config_key(name), name)
        entry = choice.snapshot.entry(name) if choice.snapshot is not None else None
        store = config_store()
        doc: ConfigDocument | None = None
        if entry is not None and entry.config_version is not None:
            cache = document_cache()
            doc = cache.get(name, entry.config_version)
            if doc is None:
                doc = store.document(name)
                if doc.version >= entry.config_version:
                    cache.put(doc)
        else:
            choice = Choice(None, choice.index if fresh.blocking else None)
            doc = store.document(name)
        view = store.open_document(doc, reveal=True)
        secrets_read(view.secrets_read)
        body = {
            "realm": view.realm,
            "service": view.service,
            "version": view.version,
            "values": view.values,
            "secrets": doc.secrets,
        }
        return body, 200, {"ETag": etag(view.version), **NO_STORE, **choice.headers()}


class ConfigItem(Resource):
    """/v1/services/{name}/config/{key}"""

    scope = CONFIG

    def get(self, name: str, key: str) -> Result:
        """One key (its current version, or `?version=N`)."""
        _names(name, key)
        args = load_query(entry_query)
        entry = config_store().get_entry(name, key, args.get("version"), reveal=True)
        if entry.secret:
            secrets_read([f"{key}@{entry.version}"])
        return dump_entry(entry), 200, {"ETag": etag(entry.version), **NO_STORE}

    def put(self, name: str, key: str) -> Result:
        """Write a new version of a key (201 for a new key, 200 for a new version)."""
        _names(name, key)
        data = load_body(config_put)
        entry, created = config_store().put_entry(
            name,
            key,
            data["value"],
            data["secret"],
            if_match=if_match(),
            must_exist=if_match_star(),
            by=caller(),
        )
        headers = {"ETag": etag(entry.version)}
        if created:
            headers["Location"] = f"/v1/services/{name}/config/{key}"
        return dump_entry(entry), 201 if created else 200, headers

    def delete(self, name: str, key: str) -> Result:
        """Delete a key (its history is kept)."""
        _names(name, key)
        config_store().delete_entry(name, key, if_match=if_match(), by=caller())
        return "", 204


class ConfigVersions(Resource):
    """/v1/services/{name}/config/{key}/versions"""

    scope = CONFIG

    def get(self, name: str, key: str) -> Result:
        """A key's versions, newest first (secret values masked)."""
        _names(name, key)
        limit, cursor = page_args()
        page = config_store().list_versions(name, key, limit, cursor)
        return {
            "items": [dump_entry(e) for e in page.items],
            "next_cursor": page.next_cursor,
        }, 200


class TokenList(Resource):
    """/v1/services/{name}/tokens"""

    scope = ADMIN

    def get(self, name: str) -> Result:
        """A service's tokens (ids and metadata; never the tokens)."""
        check_service_name(name)
        limit, cursor = page_args()
        page = token_store().list(name, limit, cursor)
        return {
            "items": [token_out.dump(t) for t in page.items],
            "next_cursor": page.next_cursor,
        }, 200

    def post(self, name: str) -> Result:
        """Issue a token for the service; its value is in this response only."""
        check_service_name(name)
        data = load_body(token_create, required=False)
        record, token = token_store().issue(name, data.get("description", ""), by=caller())
        body = {**token_out.dump(record), "token": token}
        return body, 201, {"Location": f"/v1/services/{name}/tokens/{record.id}", **NO_STORE}


class TokenItem(Resource):
    """/v1/services/{name}/tokens/{token_id}"""

    scope = ADMIN

    def delete(self, name: str, token_id: str) -> Result:
        """Revoke a token."""
        check_service_name(name)
        if not TOKEN_ID_RE.fullmatch(token_id):
            raise ValidationFailed(
                "invalid token id", {"token_id": [f"Must match {TOKEN_ID_RE.pattern}."]}
            )
        zxid = token_store().revoke(name, token_id)
        note = write_index.current()
        if note is not None:
            note.add(zxid)
        return "", 204


class AuditList(Resource):
    """/v1/audit"""

    scope = ADMIN

    def get(self) -> Result:
        """The audit trail (of one service newest first with ?service=, else in table order)."""
        args = load_query(audit_query)
        settings = current_app.extensions["atlas"].settings
        limit = args.get("limit", settings.page_limit_default)
        if limit > settings.page_limit_max:
            raise ValidationFailed(
                "limit too large", {"limit": [f"Must be at most {settings.page_limit_max}."]}
            )
        cursor = args.get("cursor")
        audit = audit_log()
        audit.flush()  # this process's own queued records are visible at once
        page = audit.list(args.get("service"), limit, cursor)
        return {
            "items": [audit_out.dump(r) for r in page.items],
            "next_cursor": page.next_cursor,
        }, 200
