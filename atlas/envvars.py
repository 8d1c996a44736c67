"""Declared environment settings of the parts that ship without the server (no pydantic).

The server's settings are pydantic-settings classes (`atlas.config`); the smart client, smart
config, the admin CLI, the Smart Service, the dev stack and the test suite read their
variables through the declarations here instead of `os.environ`, so that each variable has
one name, one meaning and one rule wherever it is read, a bad value is a one-line
`ConfigError` naming it (`ATLAS_CONFIG_TIMEOUT_S: expected a number, got 'abc'`), and
`atlas settings` lists every one of them by component.

An empty value counts as unset. Importing this module costs nothing (no I/O, no imports
beyond the contract).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas.contract import HEADER_NAME_RE, REALM_RE

Parser = Callable[[str], Any]


class ConfigError(ValueError):
    """A setting has a bad value; start-up must stop with this message."""


# ------------------------------------------------------------------------- parsers
# Each takes the stripped raw string and returns the value, or raises ValueError saying what
# was expected (the variable's name and the value given are added by Var.read).


def text(raw: str) -> str:
    """Any string."""
    return raw


def path(raw: str) -> Path:
    """A filesystem path (`~` expanded)."""
    return Path(raw).expanduser()


def url(raw: str) -> str:
    """An http(s) URL with a host."""
    scheme, sep, rest = raw.partition("://")
    if scheme.lower() not in ("http", "https") or not sep or not rest.strip("/") or " " in raw:
        raise ValueError("expected an http(s)://host[:port] URL")
    return raw.rstrip("/")


def boolean(raw: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case)."""
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected a boolean (true/false)")


def number(lo: float, hi: float) -> Parser:
    """A number within [lo, hi]."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
        if not lo <= value <= hi:  # NaN fails too
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return value

    return parse


def integer(lo: int, hi: int) -> Parser:
    """An integer within [lo, hi]."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def choice(*values: str) -> Parser:
    """One of `values` (any case; returned as declared)."""

    def parse(raw: str) -> str:
        for v in values:
            if raw.lower() == v.lower():
                return v
        raise ValueError("expected " + ", ".join(values[:-1]) + f" or {values[-1]}")

    return parse


def header(raw: str) -> str:
    """An HTTP header name."""
    if not HEADER_NAME_RE.match(raw):
        raise ValueError(f"expected a header name ({HEADER_NAME_RE.pattern})")
    return raw


def realm(raw: str) -> str:
    """A realm name (it names tables and znodes)."""
    if not REALM_RE.match(raw):
        raise ValueError(f"must match {REALM_RE.pattern}")
    return raw


def key32(raw: str) -> bytes:
    """32 bytes, base64-encoded."""
    try:
        key = base64.b64decode(raw, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ValueError(
            "must be 32 random bytes, base64-encoded (e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return key


# ---------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Var:
    """One environment variable: its name, default, meaning and rule."""

    name: str
    default: Any
    meaning: str
    parse: Parser = text
    shown: str | None = None  # the default as documented, when it is derived
    secret: bool = False  # never echoed in an error

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The value (default when unset or empty); ConfigError naming the variable if bad."""
        raw = (os.environ if environ is None else environ).get(self.name)
        if raw is None or not raw.strip():
            return self.default
        try:
            return self.parse(raw.strip())
        except ValueError as exc:
            got = "" if self.secret else f", got {raw!r}"
            raise ConfigError(f"{self.name}: {exc}{got}") from None

    def is_set(self, environ: Mapping[str, str] | None = None) -> bool:
        """True when the variable has a value (not unset, not empty)."""
        return bool((os.environ if environ is None else environ).get(self.name, "").strip())

    def documented(self) -> tuple[str, str, str]:
        """(variable, default as written in a shell, meaning)."""
        return self.name, self.shown if self.shown is not None else show(self.default), self.meaning


def show(value: Any) -> str:
    """A default as one would write it in the environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None or value == "":
        return "(none)"
    return str(value)


@dataclass(frozen=True)
class Component:
    """The variables one part of Atlas reads."""

    title: str
    vars: tuple[Var, ...]

    def __getitem__(self, name: str) -> Var:
        for var in self.vars:
            if var.name == name:
                return var
        raise KeyError(f"{self.title} declares no {name}")

    def get(self, name: str, environ: Mapping[str, str] | None = None) -> Any:
        """The value of one of its variables (ConfigError if bad)."""
        return self[name].read(environ)

    def read(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Every variable's value; one ConfigError naming every bad one."""
        values: dict[str, Any] = {}
        errors: list[str] = []
        for var in self.vars:
            try:
                values[var.name] = var.read(environ)
            except ConfigError as exc:
                errors.append(str(exc))
        if errors:
            raise ConfigError("; ".join(errors))
        return values

    def documented(self) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) of each variable, for `atlas settings`."""
        return [var.documented() for var in self.vars]


# Shared by several components: one declaration, so one name, one meaning, one rule.
ATLAS_URL = Var("ATLAS_URL", "http://127.0.0.1:8080", "the Atlas API the client side calls", url)
ATLAS_TOKEN = Var(
    "ATLAS_TOKEN",
    None,
    "bearer token sent to Atlas (service token; admin CLI: admin token)",
    secret=True,
)
REQUEST_ID_HEADER = Var(
    "ATLAS_REQUEST_ID_HEADER", "X-Request-Id", "header that carries the request id", header
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL = Var(
    "ATLAS_LOG_LEVEL",
    "INFO",
    "DEBUG, INFO, WARNING or ERROR (Atlas's own loggers)",
    choice(*LOG_LEVELS),
)

#: Read by atlas.gunicorn_conf before anything else is imported (gevent must patch the
#: standard library first); listed by `atlas settings` with the server's (ServeSettings).
WORKER_CLASS = Var(
    "ATLAS_WORKER_CLASS", "gevent", "gunicorn worker class", choice("gthread", "gevent")
)

CLIENT = Component(
    "Smart client (atlas.client)",
    (
        Var("ATLAS_SIDECAR_URL", "http://127.0.0.1:4000", "where service:// calls go", url),
        Var(
            "ATLAS_SERVICE_HEADER",
            "Atlas-Service",
            "header naming the service at the sidecar",
            header,
        ),
        REQUEST_ID_HEADER,
    ),
)

CONFIG_CLIENT = Component(
    "Smart config (atlas.client.config.load)",
    (
        ATLAS_URL,
        ATLAS_TOKEN,
        Var(
            "ATLAS_CONFIG_TIMEOUT_S",
            2.0,
            "how long load waits for Atlas before it uses the cached copy",
            number(0.01, 600),
        ),
        Var(
            "ATLAS_CONFIG_CACHE_DIR",
            None,
            "where the last-known-good copies are kept",
            path,
            shown="$XDG_CACHE_HOME/atlas-config",
        ),
        Var(
            "ATLAS_CONFIG_CACHE_KEY",
            None,
            "32 bytes, base64: encrypts the last-known-good copies (none: no copy of secrets)",
            key32,
            secret=True,
        ),
    ),
)

ADMIN_CLI = Component(
    "Admin CLI (atlas services, instances, hosts, config, tokens, audit)",
    (ATLAS_URL, ATLAS_TOKEN),
)

SERVICE = Component(
    "Smart Service (SmartService, atlas-service, atlas new-service)",
    (
        ATLAS_URL,
        ATLAS_TOKEN,
        Var(
            "ATLAS_REALM",
            None,
            "the realm the service expects (another one is refused)",
            realm,
            shown="(any; offline: local)",
        ),
        Var("ATLAS_OFFLINE", False, "boot on the config module's defaults alone (tests)", boolean),
        Var(
            "ATLAS_REGISTER",
            "auto",
            "attach host:port to Atlas: auto (= in realm local), true or false",
            choice("auto", "true", "false", "1", "0", "yes", "no", "on", "off"),
        ),
        Var(
            "ATLAS_REGISTER_TOKEN",
            None,
            "token for the registration writes",
            secret=True,
            shown="ATLAS_TOKEN",
        ),
        Var(
            "ATLAS_ADVERTISE_HOST",
            None,
            "host to register (for a wildcard bind)",
            shown="the bound address, or the FQDN",
        ),
        Var(
            "ATLAS_DRAIN_S",
            10.0,
            "on SIGTERM, seconds disabled but serving before detaching",
            number(0, 3600),
        ),
        REQUEST_ID_HEADER,
        Var(
            "ATLAS_WHEEL_CACHE",
            None,
            "atlas new-service: where built Atlas wheels are kept",
            path,
            shown="$XDG_CACHE_HOME/atlas/wheels",
        ),
        Var(
            "PORT",
            0,
            "atlas-service: port on 127.0.0.1 when no --bind (0: any free)",
            integer(0, 65535),
        ),
        Var(
            "WEB_CONCURRENCY",
            2,
            "atlas-service: gunicorn workers when no --workers (gunicorn reads it too)",
            integer(1, 256),
        ),
    ),
)

TESTS = Component(
    "Test suite (make test)",
    (
        Var(
            "ATLAS_TEST_MOTO_MODE",
            "serialized",
            "moto server of the session: serialized, or "
            "unserialized / stock to show what fails without the lock",
            choice("serialized", "unserialized", "stock"),
        ),
        Var(
            "ATLAS_TEST_CACHE",
            None,
            "where downloads of the tests are cached (requests' suite)",
            path,
            shown=".atlas-data/test-cache",
        ),
        Var(
            "ATLAS_ARTIFACT_DIR",
            None,
            "where browser tests leave their artifacts",
            path,
            shown="tests/.artifacts",
        ),
        Var(
            "ATLAS_SCREENSHOT_DIR",
            None,
            "where the dashboard test leaves its screenshots",
            path,
            shown="$ATLAS_ARTIFACT_DIR/screenshots",
        ),
    ),
)

COMPONENTS: tuple[Component, ...] = (CLIENT, CONFIG_CLIENT, ADMIN_CLI, SERVICE, TESTS)


def click_documented(command: Any) -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every option of a click command that reads one
    (`envvar=`): the command's own declaration, e.g. `atlas dev`'s or the sidecar's."""
    rows = []
    for param in getattr(command, "params", ()):
        envvar = getattr(param, "envvar", None)
        if not envvar:
            continue
        names: Iterable[str] = [envvar] if isinstance(envvar, str) else envvar
        default = param.default
        shown = "(none)" if default is None else show(default)
        help_text = " ".join(str(getattr(param, "help", "") or "").split())
        flag = max(getattr(param, "opts", ()), key=len, default="")
        for i, name in enumerate(names):
            meaning = f"{flag}: {help_text}" if i == 0 else f"same as {next(iter(names))}"
            rows.append((name, shown, meaning.strip()))
    return rows
