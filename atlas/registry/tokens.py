"""Service tokens: issued once, stored only as SHA-256 hashes, listed without values, revocable."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

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
    """Service tokens of one realm, with a positive cache for lookups.

    Without `generation`, a cached lookup lives `cache_s` seconds. With it (the view's
    revocation stamp: it changes whenever any Atlas process revokes a token), a cached lookup
    lives `cache_s` seconds as long as the generation stays the one it was cached under, and
    only `unwatched_s` seconds while the generation is unknown (None: ZooKeeper unreachable).
    `on_revoke` publishes a revocation (bumps the stamp); it returns the zxid, or None.

    Thread-safe: the cache (a cachetools TTLCache, which is not) is used under a lock.
    """

    def __init__(
        self,
        registry: Registry,
        cache_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        generation: Callable[[], Any] | None = None,
        unwatched_s: float = 1.0,
        on_revoke: Callable[[], int | None] | None = None,
    ) -> None:
        self.registry = registry
        self.models = registry.models
        self.store = registry.store
        self.cache_s = cache_s
        self.clock = clock
        self.generation = generation
        self.unwatched_s = unwatched_s
        self.on_revoke = on_revoke
        self.counters = {"hits": 0, "misses": 0, "dropped": 0}
        # hash -> (record of a valid token, generation, cached at); bounded, every entry
        # expires cache_s after lookup.
        self._cache: TTLCache[str, tuple[ServiceToken, Any, float]] | None = (
            TTLCache(maxsize=CACHE_ENTRIES, ttl=cache_s, timer=clock) if cache_s > 0 else None
        )
        self._generation: Any = None
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

    def revoke(self, service: str, tid: str) -> int | None:
        """Revoke one token of a service by its id; 404 if there is none.

        Returns the zxid of the revocation stamp that tells every other process (None: not
        published, they notice within their unwatched TTL)."""
        with self.store.operation("revoking the token"):
            found = list(self.models.Token.by_service.query(service, self.models.Token.id == tid))
        if not found:
            self.registry.get_service(service)
            raise NotFound(f"service {service!r} has no token {tid!r}")
        for m in found:
            self.store.delete(m, action="revoking the token")
        if self._cache is not None:
            with self._lock:
                for digest in [h for h, entry in self._cache.items() if entry[0].id == tid]:
                    self._cache.pop(digest, None)
        return self.on_revoke() if self.on_revoke is not None else None

    def _cached(self, digest: str) -> ServiceToken | None:
        """A cached record still valid under the current generation (under the lock)."""
        assert self._cache is not None
        gen = self.generation() if self.generation is not None else None
        if self.generation is not None and gen != self._generation:
            # A revocation anywhere, or a new session: forget every lookup.
            self.counters["dropped"] += len(self._cache)
            self._cache.clear()
            self._generation = gen
            return None
        entry = self._cache.get(digest)
        if entry is None:
            return None
        record, _, at = entry
        if self.generation is not None and gen is None and self.clock() - at >= self.unwatched_s:
            return None
        return record

    def lookup(self, token: str) -> ServiceToken | None:
        """The token's record if the token is valid, else None (one GetItem by hash)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        if self._cache is not None:
            with self._lock:
                hit = self._cached(digest)
                self.counters["hits" if hit is not None else "misses"] += 1
            if hit is not None:
                return hit
        # The generation before the read: a revocation published meanwhile moves it, and the
        # entry cached under the old one is dropped at the next lookup.
        gen = self.generation() if self.generation is not None else None
        m = self.store.get(self.models.Token, digest, action="checking the token")
        if m is None:
            return None
        record = self._record(m)
        if self._cache is not None:
            with self._lock:
                if self.generation is None or gen == self._generation:
                    self._cache[digest] = (record, gen, self.clock())
        return record
