"""Service tokens: issued once, stored only as SHA-256 hashes, listed without values, revocable."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from pynamodb.transactions import TransactWrite

from atlas.errors import Conflict, NotFound, Unavailable, ValidationFailed
from atlas.registry.records import Page, ServiceToken
from atlas.registry.service import (
    Registry,
    _cancellation_codes,
    _store,
    decode_cursor,
    encode_cursor,
)

TOKEN_PREFIX = "atl_"


def hash_token(token: str) -> str:
    """The stored form of a token (tokens are 256-bit random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token: str) -> str:
    """A short, non-reversible id for a token, safe to log and to audit."""
    return "tok_" + hash_token(token)[:12]


class TokenStore:
    """Service tokens of one realm, with an optional short positive cache for lookups."""

    def __init__(
        self, registry: Registry, cache_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self.models = registry.models
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[str, tuple[ServiceToken, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _record(m: Any) -> ServiceToken:
        return ServiceToken(
            id=m.id,
            service=m.service,
            description=m.description or "",
            created_at=m.created_at,
            created_by=m.created_by or "",
        )

    def issue(self, service: str, description: str = "", by: str = "") -> tuple[ServiceToken, str]:
        """Create a token for a service; returns (record, token) — the token is never stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        svc = self.models.Service
        m = self.models.Token(
            hash_token(token),
            id=token_id(token),
            service=service,
            description=description,
            created_at=self.registry._now(),
            created_by=by,
        )
        try:
            with (
                _store("issuing the token"),
                TransactWrite(connection=svc._get_connection().connection) as tx,
            ):
                tx.condition_check(
                    svc,
                    service,
                    condition=svc.name.exists() & (svc.deleting == False),  # noqa: E712
                )
                tx.save(m, condition=self.models.Token.token_hash.does_not_exist())
        except Unavailable as exc:
            reasons = _cancellation_codes(exc.__cause__)
            if (
                reasons
                and reasons[0] == "ConditionalCheckFailed"
                and self.registry._load_service(service).deleting
            ):
                raise Conflict(f"service {service!r} is being deleted") from None
            raise
        return self._record(m), token

    def list(self, service: str, limit: int, cursor: str | None = None) -> Page:
        """One page of a service's tokens (ids and metadata only), ordered by id."""
        start = decode_cursor(cursor, ("service", "id", "token_hash")) if cursor else None
        if start is not None and start["service"]["S"] != service:
            raise ValidationFailed(
                "cursor belongs to another listing", {"cursor": ["Not a cursor of this listing."]}
            )
        self.registry._load_service(service)
        with _store("listing tokens"):
            items = list(
                self.models.Token.by_service.query(
                    service, limit=limit + 1, page_size=limit + 1, last_evaluated_key=start
                )
            )
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            last = items[-1]
            next_cursor = encode_cursor(
                {
                    "service": {"S": service},
                    "id": {"S": last.id},
                    "token_hash": {"S": last.token_hash},
                }
            )
        return Page([self._record(m) for m in items], next_cursor)

    def revoke(self, service: str, tid: str) -> None:
        """Revoke one token of a service by its id; 404 if there is none."""
        with _store("revoking the token"):
            found = list(self.models.Token.by_service.query(service, self.models.Token.id == tid))
            if not found:
                self.registry._load_service(service)
                raise NotFound(f"service {service!r} has no token {tid!r}")
            for m in found:
                m.delete()
        with self._lock:
            self._cache = {h: v for h, v in self._cache.items() if v[0].id != tid}

    def lookup(self, token: str) -> ServiceToken | None:
        """The token's record if the token is valid, else None (one GetItem by hash)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        if self.cache_s > 0:
            with self._lock:
                hit = self._cache.get(digest)
            if hit is not None and hit[1] > self.clock():
                return hit[0]
        with _store("checking the token"):
            try:
                record = self._record(self.models.Token.get(digest, consistent_read=True))
            except self.models.Token.DoesNotExist:
                return None
        if self.cache_s > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (record, self.clock() + self.cache_s)
        return record
