"""Bearer-token authentication and the read/write authorization rule."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from atlas.config import Settings
from atlas.errors import Forbidden, Unauthorized


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


def token_id(token: str) -> str:
    """A short, non-reversible id for a token, safe to log and to audit."""
    return "tok_" + hashlib.sha256(token.encode()).hexdigest()[:12]


class Authenticator:
    """Resolves a bearer token to a Principal."""

    def __init__(self, settings: Settings) -> None:
        self.auth_disabled = settings.auth_disabled
        self._admin = [t.encode() for t in settings.admin_tokens]

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
        raise Unauthorized("unknown or revoked token")

    @staticmethod
    def authorize(principal: Principal, write: bool) -> None:
        """Admins may do anything; service tokens may only read the topology."""
        if write and not principal.is_admin:
            raise Forbidden("only admin tokens may change the registry")
