"""What the environment dump may show: secrets never, whatever their name or where they came from.

A value is hidden when any of these holds:
- its key is declared a secret in the service's config module (`KEY = secret()`);
- its key looks like a secret (password, token, key, dsn, ...);
- its key came from Atlas without being declared in the config module and Atlas says it is a
  secret (the document's `"secrets"` list), or the document did not say (an older Atlas), in
  which case an undeclared one is assumed to be;
and URLs lose the password part. Last, every string hidden anywhere is scrubbed from the whole
rendered dump, so a secret copied into another value, an argument or an environment variable
never shows either.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "********"
SECRET_NAME_RE = re.compile(
    r"pass|secret|token|key|dsn|credential|private|auth|salt|cookie|signature|cert", re.I
)
# Scrubbing very short strings would mangle unrelated text; such values are still masked by key.
MIN_SCRUB_LEN = 4


def looks_secret(name: str) -> bool:
    """True for a setting or variable name that usually holds a secret."""
    return bool(SECRET_NAME_RE.search(name))


def strip_url_password(value: str) -> str:
    """`scheme://user:pw@host/...` → `scheme://user:********@host/...`; other strings unchanged."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return MASK
    if not password:
        return value
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc[1]}"))


class Redactor:
    """Decides what the dump shows and remembers every secret string it hid (not thread-safe:
    build one per dump)."""

    def __init__(
        self,
        secret_keys: Iterable[str] = (),
        undeclared_keys: Iterable[str] = (),
        atlas_secrets: Iterable[str] | None = None,
    ):
        self.secret_keys = set(secret_keys)
        self.undeclared_keys = set(undeclared_keys)
        if atlas_secrets is not None:  # Atlas said which of its keys are secrets
            self.undeclared_keys &= set(atlas_secrets)
        self.hidden: set[str] = set()

    def _hide(self, value: Any) -> str:
        if isinstance(value, str):
            self.hidden.add(value)
        elif isinstance(value, Mapping | list | tuple):
            for s in _strings(value):
                self.hidden.add(s)
        elif isinstance(value, int | float):
            self.hidden.add(str(value))
        return MASK

    def value(self, key: str, value: Any) -> Any:
        """The shown form of one setting."""
        if key in self.secret_keys or key in self.undeclared_keys or looks_secret(key):
            if value in ("", None):
                return value  # an empty placeholder hides nothing, and says it is unset
            return self._hide(value)
        if isinstance(value, str):
            shown = strip_url_password(value)
            if shown != value:
                pw = urlsplit(value).password
                if pw:
                    self.hidden.add(pw)
            return shown
        return value

    def mapping(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every item of a mapping in its shown form."""
        return {k: self.value(k, v) for k, v in values.items()}

    def scrub(self, text: str) -> str:
        """Replace every hidden string (raw and JSON-escaped) in a rendered document."""
        for secret in sorted(self.hidden, key=len, reverse=True):
            if len(secret) < MIN_SCRUB_LEN:
                continue
            text = text.replace(secret, MASK)
            escaped = json.dumps(secret)[1:-1]
            if escaped != secret:
                text = text.replace(escaped, MASK)
        return text


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
