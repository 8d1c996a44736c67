"""Bearer-token authentication (admin tokens, service tokens) and the authorization rule."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol

from atlas.config import Settings
from atlas.errors import Forbidden, Unauthorized
from atlas.registry.records import ServiceToken
from atlas.registry.tokens import token_id

__all__ = ["ADMIN", "CONFIG", "TOPOLOGY", "Authenticator", "Principal", "token_id"]

# What a route exposes, for the authorization rule (set as `scope` on each resource class).
TOPOLOGY = "topology"  # services, instances, hosts, info: any valid token may read
CONFIG = "config"  # a service's config: admins, and that service's own tokens
ADMIN = "admin"  # tokens, audit: admins only


@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin, or a service acting for itself."""

    kind: str  # "admin" or "service"
    token_id: str
    service: str | None = None

    @property
    def is_admin(self) -> bool:
        """True for admin tokens (and for everyone when auth is off in the local realm)."""
        return self.kind == "admin"


class TokenLookup(Protocol):
    """Finds a service token by its value (by hash; the store never holds the token)."""

    def lookup(self, token: str) -> ServiceToken | None:
        """The token's record, or None when unknown or revoked."""


class Authenticator:
    """Resolves a bearer token to a Principal."""

    def __init__(self, settings: Settings, tokens: TokenLookup | None = None) -> None:
        self.auth_disabled = settings.auth_disabled
        self._admin = [t.encode() for t in settings.admin_tokens]
        self.tokens = tokens

    def authenticate(self, authorization: str | None) -> Principal:
        """Return the caller's principal or raise Unauthorized."""
        if self.auth_disabled:
            return Principal("admin", "anonymous-local")
        if not authorization:
            raise Unauthorized("an Authorization: Bearer <token> header is required")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        presented = token.encode()
        matched = False
        # Compare against every admin token so timing does not reveal which one (or how many).
        for candidate in self._admin:
            matched |= hmac.compare_digest(presented, candidate)
        if matched:
            return Principal("admin", token_id(token))
        # Service tokens are found by their SHA-256: the lookup key reveals nothing useful.
        record = self.tokens.lookup(token) if self.tokens is not None else None
        if record is not None:
            return Principal("service", record.id, record.service)
        raise Unauthorized("unknown or revoked token")

    @staticmethod
    def authorize(
        principal: Principal, write: bool, scope: str = TOPOLOGY, service: str | None = None
    ) -> None:
        """Admins may do anything; a service token may read the topology and its own config."""
        if principal.is_admin:
            return
        if write:
            raise Forbidden("only admin tokens may change the registry")
        if scope == TOPOLOGY:
            return
        if scope == CONFIG and service is not None and service == principal.service:
            return
        if scope == CONFIG:
            raise Forbidden("a service token may read only its own service's config")
        raise Forbidden("only admin tokens may do this")
