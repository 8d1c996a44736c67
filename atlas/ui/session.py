"""The dashboard's session: keys, the sealed bearer token, the cookie, and the CSRF token.

The cookie is Flask's signed session (HttpOnly, SameSite=Strict, path /ui/,
Secure on https). It carries the operator's bearer token sealed with AES-GCM,
so a leaked cookie log line shows nothing, and every request authenticates the
token again through the API's own Authenticator (a revoked token stops working
at once). Each session has a random CSRF token that every form posts back.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask, Request, request, session
from flask.sessions import SecureCookieSessionInterface

from atlas.config import Settings

COOKIE_NAME = "atlas_ui"
COOKIE_PATH = "/ui/"
TOKEN_KEY = "t"
CSRF_KEY = "csrf"
_TOKEN_AAD = b"atlas-ui-token-v1"


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def master_secret(settings: Settings) -> bytes:
    """ATLAS_UI_SECRET_KEY, else a key derived from the admin tokens (same in every worker).

    With auth off (local realm only) there is no secret to derive from: the key is then
    derived from the realm, which is enough for a dashboard nobody needs to log in to.
    """
    if settings.ui_secret_key:
        return settings.ui_secret_key.encode()
    if settings.admin_tokens:
        return b"admin-tokens\n" + "\n".join(sorted(settings.admin_tokens)).encode()
    return f"local-realm\n{settings.realm}\n{settings.table_prefix}".encode()


class Keys:
    """The cookie signing key and the token sealing key, both derived from one secret."""

    def __init__(self, secret: bytes) -> None:
        self.signing = _derive(secret, b"atlas-ui-cookie-v1")
        self._aead = AESGCM(_derive(secret, b"atlas-ui-token-v1"))

    def seal(self, token: str) -> str:
        """Encrypt a bearer token for the cookie (thread-safe)."""
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, token.encode(), _TOKEN_AAD)
        return base64.urlsafe_b64encode(sealed).decode()

    def unseal(self, sealed: Any) -> str | None:
        """The token a cookie carries, or None when it was not sealed by this key (thread-safe)."""
        if not isinstance(sealed, str):
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            return self._aead.decrypt(raw[:12], raw[12:], _TOKEN_AAD).decode()
        except (ValueError, InvalidTag, UnicodeDecodeError):
            return None


class UiSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, opened only under /ui/ and Secure when on https."""

    salt = "atlas-ui-session"

    def open_session(self, app: Flask, request: Request) -> Any:
        """The dashboard's session; the API's requests get none (nothing to parse or sign)."""
        if not request.path.startswith("/ui"):
            return None
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure whenever the request came over https (or the app says so)."""
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def configure(app: Flask, settings: Settings) -> Keys:
    """Set the app's session key, interface and cookie attributes; return the keys."""
    keys = Keys(master_secret(settings))
    app.secret_key = keys.signing
    app.session_interface = UiSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH=COOKIE_PATH,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )
    return keys


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get(CSRF_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def csrf_ok() -> bool:
    """True when a form post carries this session's CSRF token and comes from this origin."""
    expected = session.get(CSRF_KEY)
    sent = request.form.get(CSRF_KEY, "")
    if not isinstance(expected, str) or len(expected) < 32:
        return False
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        return False
    origin = request.headers.get("Origin")
    # The host only: behind a TLS-terminating proxy the scheme Atlas sees is not the browser's.
    if origin is not None and urlsplit(origin).netloc != request.host:
        return False
    fetch_site = request.headers.get("Sec-Fetch-Site")
    return fetch_site in (None, "same-origin", "none")
