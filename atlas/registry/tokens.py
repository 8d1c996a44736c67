"""Service tokens: issued once, stored only as SHA-256 hashes, listed without values, revocable."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable

from cachetools import TTLCache

from atlas.errors import Conflict, NotFound
from atlas.registry.models import TokenModel
from atlas.registry.records import Page, ServiceToken
from atlas.registry.service import Registry
from atlas.registry.store import CursorKey, TransactionCanceled

TOKEN_PREFIX = "atl_"
CACHE_ENTRIES = 10_000
TOKEN_CURSOR = CursorKey(("service", "id", "token_hash"))


def hash_token(token: str) -> str:
    """The stored form of a token (tokens are 256-bit random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token: str) -> str:
    """A short, non-reversible id for a token, safe to log and to audit."""
    return "tok_" + hash_token(token)[:12]


class TokenStore:
    """Service tokens of one realm, with an optional short positive cache for lookups.

    Thread-safe: the cache (a cachetools TTLCache, which is not) is used under a lock.
    """

    def __init__(
        self, registry: Registry, cache_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self.models = registry.models
        self.store = registry.store
        self.cache_s = cache_s
        self.clock = clock
        # hash -> record of a valid token; bounded, every entry expires cache_s after lookup.
        self._cache: TTLCache[str, ServiceToken] | None = (
            TTLCache(maxsize=CACHE_ENTRIES, ttl=cache_s, timer=clock) if cache_s > 0 else None
        )
        self._lock = threading.Lock()

    @staticmethod
    def _record(m: TokenModel) -> ServiceToken:
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
            created_at=self.registry.now(),
            created_by=by,
        )
        try:
            with self.store.transaction("issuing the token") as tx:
                tx.check(
                    "service",
                    svc,
                    service,
                    condition=svc.live(),
                )
                tx.save("token", m, condition=self.models.Token.token_hash.does_not_exist())
        except TransactionCanceled as canceled:
            # get_service raises NotFound for a service that is gone
            if canceled.failed("service") and self.registry.get_service(service).deleting:
                raise Conflict(f"service {service!r} is being deleted") from None
            raise
        return self._record(m), token

    def list(self, service: str, limit: int, cursor: str | None = None) -> Page:
        """One page of a service's tokens (ids and metadata only), ordered by id."""
        start = TOKEN_CURSOR.decode(cursor, service=service)
        self.registry.get_service(service)
        return self.store.paginate(
            lambda **kw: self.models.Token.by_service.query(service, **kw),
            limit=limit,
            start=start,
            key=TOKEN_CURSOR,
            convert=self._record,
            action="listing tokens",
        )

    def revoke(self, service: str, tid: str) -> None:
        """Revoke one token of a service by its id; 404 if there is none."""
        with self.store.operation("revoking the token"):
            found = list(self.models.Token.by_service.query(service, self.models.Token.id == tid))
        if not found:
            self.registry.get_service(service)
            raise NotFound(f"service {service!r} has no token {tid!r}")
        for m in found:
            self.store.delete(m, action="revoking the token")
        if self._cache is not None:
            with self._lock:
                for digest in [h for h, rec in self._cache.items() if rec.id == tid]:
                    self._cache.pop(digest, None)

    def lookup(self, token: str) -> ServiceToken | None:
        """The token's record if the token is valid, else None (one GetItem by hash)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        if self._cache is not None:
            with self._lock:
                hit = self._cache.get(digest)
            if hit is not None:
                return hit
        m = self.store.get(self.models.Token, digest, action="checking the token")
        if m is None:
            return None
        record = self._record(m)
        if self._cache is not None:
            with self._lock:
                self._cache[digest] = record
        return record
