"""Smart config: a service's settings at boot = its own defaults, overridden by Atlas's values
for the realm it runs in (secrets included), with a last-known-good copy on disk.

    from atlas.client.config import load
    import myservice.default_settings as defaults

    settings = load("myservice", defaults=defaults, required=("DATABASE_URL",))
    settings.DATABASE_URL, settings["DEBUG"], settings.realm

Environment: ATLAS_URL (default http://127.0.0.1:8080), ATLAS_TOKEN (the service token),
ATLAS_CONFIG_TIMEOUT_S (default 2), ATLAS_CONFIG_CACHE_DIR (default
$XDG_CACHE_HOME/atlas-config), ATLAS_CONFIG_CACHE_KEY (32 random bytes, base64; without it no
copy is kept). Flask and pynamodb are never imported here; kazoo only by `watch(zk_hosts=...)`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.contract import Layout
from atlas.envvars import CONFIG_CLIENT, ConfigError

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

DEFAULT_URL: str = CONFIG_CLIENT["ATLAS_URL"].default
DEFAULT_TIMEOUT_S: float = CONFIG_CLIENT["ATLAS_CONFIG_TIMEOUT_S"].default
CACHE_FORMAT = 1

__all__ = [
    "ConfigLoadError",
    "MissingSettings",
    "ServiceSettings",
    "Watcher",
    "init_app",
    "load",
    "watch",
]


class ConfigLoadError(RuntimeError):
    """The config could not be loaded from Atlas nor from a last-known-good copy."""


class MissingSettings(ConfigLoadError):
    """Required settings are absent after merging the defaults and Atlas's values."""

    def __init__(self, service: str, missing: list[str], source: str) -> None:
        self.missing = missing
        super().__init__(
            f"config of service {service!r} lacks required setting(s) {', '.join(missing)} "
            f"(not in the defaults, not in Atlas's values from {source}); "
            f"set them with PUT /v1/services/{service}/config/<key>"
        )


class ServiceSettings(Mapping[str, Any]):
    """Read-only settings: mapping and attribute access, plus where they came from."""

    def __init__(
        self,
        values: Mapping[str, Any],
        *,
        service: str,
        realm: str,
        version: int,
        source: str,
        age_s: float = 0.0,
    ) -> None:
        self._values = dict(values)
        self.service = service
        self.realm = realm
        self.version = version
        self.source = source  # "atlas" or "cache"
        self.age_s = age_s

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(
                f"setting {name!r} is neither a default nor an Atlas value of this service"
            ) from None

    def __repr__(self) -> str:
        # Never the values: some are secrets.
        return (
            f"<ServiceSettings service={self.service!r} realm={self.realm!r} version={self.version} "
            f"source={self.source!r} keys={sorted(self._values)}>"
        )


def defaults_of(defaults: ModuleType | Mapping[str, Any] | None) -> dict[str, Any]:
    """The UPPER_CASE names of a config module or mapping (as Flask's from_object does)."""
    if defaults is None:
        return {}
    if isinstance(defaults, Mapping):
        return {k: v for k, v in defaults.items() if isinstance(k, str) and k.isupper()}
    return {k: getattr(defaults, k) for k in dir(defaults) if k.isupper()}


# ------------------------------------------------------------------ the cache


def _cache_key(raw: str | None) -> AESGCM | None:
    if not raw:
        return None
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ConfigLoadError(
            "ATLAS_CONFIG_CACHE_KEY must be 32 random bytes, base64-encoded "
            "(e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return AESGCM(key)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "atlas-config"


class Cache:
    """The last-known-good copy of one service's Atlas values: mode 0600, values encrypted."""

    def __init__(self, directory: Path, service: str, aead: AESGCM | None) -> None:
        self.path = directory / f"{service}.json"
        self.service = service
        self.aead = aead

    @staticmethod
    def _aad(meta: Mapping[str, Any]) -> bytes:
        return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()

    def write(self, realm: str, version: int, values: Mapping[str, Any]) -> None:
        """Atomically replace the copy (never readable by group or others, even briefly)."""
        if self.aead is None:
            return
        meta = {
            "format": CACHE_FORMAT,
            "service": self.service,
            "realm": realm,
            "version": version,
            "fetched_at": time.time(),
        }
        nonce = os.urandom(12)
        sealed = self.aead.encrypt(nonce, json.dumps(values).encode(), self._aad(meta))
        body = json.dumps({**meta, "nonce": base64.b64encode(nonce).decode(),
                           "values": base64.b64encode(sealed).decode()})  # fmt: skip
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.service}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(meta, values) of the copy; ConfigLoadError naming what is wrong with it."""
        if self.aead is None:
            raise ConfigLoadError(
                f"no last-known-good copy can be used: ATLAS_CONFIG_CACHE_KEY is not set "
                f"(it decrypts {self.path})"
            )
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise ConfigLoadError(f"there is no last-known-good copy at {self.path}") from None
        except (OSError, ValueError) as exc:
            raise ConfigLoadError(
                f"the last-known-good copy {self.path} is unreadable: {exc}"
            ) from None
        meta = {k: doc.get(k) for k in ("format", "service", "realm", "version", "fetched_at")}
        try:
            nonce = base64.b64decode(doc["nonce"])
            plain = self.aead.decrypt(nonce, base64.b64decode(doc["values"]), self._aad(meta))
            values = json.loads(plain)
        except (KeyError, ValueError, TypeError, binascii.Error, InvalidTag):
            raise ConfigLoadError(
                f"the last-known-good copy {self.path} does not decrypt with "
                "ATLAS_CONFIG_CACHE_KEY (another key, or tampered with)"
            ) from None
        return meta, values


# ------------------------------------------------------------------- loading


class _Unreachable(Exception):
    """Atlas gave no usable answer (connection, timeout, 5xx): the cache may stand in."""


def _fetch(
    session: requests.Session, url: str, service: str, token: str | None, timeout: float
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = session.get(
            f"{url.rstrip('/')}/v1/services/{service}/config", headers=headers, timeout=timeout
        )
    except requests.RequestException as exc:
        raise _Unreachable(f"{exc.__class__.__name__}") from None
    if resp.status_code in (502, 503, 504):
        raise _Unreachable(f"HTTP {resp.status_code}")
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", "")
        except ValueError:
            detail = resp.text[:200]
        hint = {
            401: " (set ATLAS_TOKEN to a token issued by POST /v1/services/<name>/tokens)",
            403: f" (the token does not belong to service {service!r})",
            404: f" (register the service: POST /v1/services {{'name': {service!r}}})",
        }.get(resp.status_code, "")
        raise ConfigLoadError(
            f"Atlas at {url} refused the config of service {service!r}: "
            f"HTTP {resp.status_code} {detail}{hint}"
        )
    body: dict[str, Any] = resp.json()
    return body


def load(
    service: str,
    defaults: ModuleType | Mapping[str, Any] | None = None,
    realm: str | None = None,
    atlas_url: str | None = None,
    token: str | None = None,
    required: tuple[str, ...] | list[str] = (),
    timeout: float | None = None,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
    session: requests.Session | None = None,
) -> ServiceSettings:
    """Defaults overridden by Atlas's values for the realm; the last-known-good copy if Atlas
    cannot be reached within `timeout`; raise ConfigLoadError / MissingSettings otherwise."""
    try:  # arguments win; the environment as declared in atlas.envvars (one-line errors)
        url = atlas_url or CONFIG_CLIENT.get("ATLAS_URL")
        token = token if token is not None else CONFIG_CLIENT.get("ATLAS_TOKEN")
        if timeout is None:
            timeout = float(CONFIG_CLIENT.get("ATLAS_CONFIG_TIMEOUT_S"))
        directory = Path(
            cache_dir or CONFIG_CLIENT.get("ATLAS_CONFIG_CACHE_DIR") or _default_cache_dir()
        )
        if cache_key is not None:
            aead = _cache_key(cache_key)
        else:
            key = CONFIG_CLIENT.get("ATLAS_CONFIG_CACHE_KEY")
            aead = AESGCM(key) if key else None
    except ConfigError as exc:
        raise ConfigLoadError(str(exc)) from None
    cache = Cache(directory, service, aead)
    base = defaults_of(defaults)

    own = session is None
    http = session or requests.Session()
    try:
        doc = _fetch(http, url, service, token, timeout)
    except _Unreachable as exc:
        reason = f"Atlas at {url} did not answer within {timeout}s ({exc})"
        try:
            meta, values = cache.read()
        except ConfigLoadError as no_copy:
            raise ConfigLoadError(
                f"cannot load the config of service {service!r}: {reason}, and {no_copy}"
            ) from None
        if realm is not None and meta["realm"] != realm:
            raise ConfigLoadError(
                f"cannot load the config of service {service!r}: {reason}, and the "
                f"last-known-good copy is of realm {meta['realm']!r}, not {realm!r}"
            ) from None
        age = max(0.0, time.time() - float(meta["fetched_at"]))
        fetched = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(meta["fetched_at"])))
        log.warning(
            "ATLAS UNREACHABLE: %s; service %r boots on its LAST-KNOWN-GOOD config "
            "(realm %s, version %s) from %s, %s old (fetched %s)",
            reason, service, meta["realm"], meta["version"], cache.path, _human(age), fetched,
        )  # fmt: skip
        settings = ServiceSettings(
            {**base, **values},
            service=service,
            realm=str(meta["realm"]),
            version=int(meta["version"]),
            source="cache",
            age_s=age,
        )
    else:
        if realm is not None and doc["realm"] != realm:
            raise ConfigLoadError(
                f"Atlas at {url} serves realm {doc['realm']!r}, but service {service!r} "
                f"expects realm {realm!r}"
            )
        values = doc["values"]
        try:
            cache.write(doc["realm"], int(doc["version"]), values)
        except OSError as exc:
            log.warning("could not keep a last-known-good copy at %s: %s", cache.path, exc)
        if aead is None:
            log.info("ATLAS_CONFIG_CACHE_KEY is not set: no last-known-good copy is kept")
        settings = ServiceSettings(
            {**base, **values},
            service=service,
            realm=doc["realm"],
            version=int(doc["version"]),
            source="atlas",
        )
    finally:
        if own:
            http.close()
    missing = [k for k in required if k not in settings]
    if missing:
        raise MissingSettings(service, missing, "the cache" if settings.source == "cache" else url)
    return settings


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86_400:.1f} days"


# -------------------------------------------------------------- live reload


class Watcher:
    """Calls back with new settings whenever the service's config version changes."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop

    def stop(self) -> None:
        """Stop watching."""
        self._stop()


def watch(
    service: str,
    callback: Callable[[ServiceSettings], None],
    *,
    current: ServiceSettings | None = None,
    interval: float = 5.0,
    zk_hosts: str | None = None,
    **load_kwargs: Any,
) -> Watcher:
    """Reload on change: watch the ZooKeeper stamp `/atlas/<realm>/config/<service>` when
    `zk_hosts` is given, else poll Atlas every `interval` seconds. Returns a Watcher."""
    state = {"version": current.version if current is not None else -1}
    lock = threading.Lock()

    def reload(seen: int | None = None) -> None:
        with lock:
            if seen is not None and seen <= state["version"]:
                return
            try:
                settings = load(service, **load_kwargs)
            except ConfigLoadError as exc:
                log.warning("config reload of %r failed: %s", service, exc)
                return
            if settings.source != "atlas" or settings.version <= state["version"]:
                return
            state["version"] = settings.version
        try:
            callback(settings)
        except Exception:
            log.exception("config reload callback of %r failed", service)

    if zk_hosts:
        from kazoo.client import KazooClient

        realm = current.realm if current is not None else load_kwargs.get("realm")
        if realm is None:
            raise ValueError("watch(zk_hosts=...) needs `current` settings or realm=")
        zk = KazooClient(hosts=zk_hosts)
        zk.start(timeout=load_kwargs.get("timeout") or 10)

        def on_stamp(data: bytes | None, _stat: Any) -> None:
            if data is None:
                return
            try:
                version = int(json.loads(data)["version"])
            except (ValueError, KeyError, TypeError):
                return
            # Not in kazoo's event thread: load() does HTTP.
            threading.Thread(target=reload, args=(version,), daemon=True).start()

        zk.DataWatch(Layout(realm).config_stamp(service), on_stamp)

        def stop_zk() -> None:
            zk.stop()
            zk.close()

        return Watcher(stop_zk)

    done = threading.Event()

    def poll() -> None:
        while not done.wait(interval):
            reload()

    threading.Thread(target=poll, name=f"atlas-config-{service}", daemon=True).start()
    return Watcher(done.set)


# -------------------------------------------------------------------- Flask


def init_app(
    app: Flask,
    service: str,
    defaults: ModuleType | Mapping[str, Any] | None = None,
    **load_kwargs: Any,
) -> ServiceSettings:
    """Fill app.config with the service's settings (app.config's own values are the defaults
    unless `defaults` is given) and set app.realm."""
    base = defaults_of(defaults) if defaults is not None else defaults_of(dict(app.config))
    settings = load(service, defaults=base, **load_kwargs)
    app.config.update(settings)
    app.realm = settings.realm  # type: ignore[attr-defined]
    app.extensions["atlas_config"] = settings
    return settings
