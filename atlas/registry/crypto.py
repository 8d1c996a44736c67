"""Envelope encryption of secrets: AES-256-GCM with a fresh data key per value, wrapped by KMS
or by a local master key. The associated data binds realm, service, key and version, so a
ciphertext copied to another entry (or version) does not decrypt."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cachetools import TTLCache
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.config import ConfigError, Settings
from atlas.errors import SecretUnreadable, Unavailable

log = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
ALG = "AES-256-GCM"
NONCE_BYTES = 12


@dataclass(frozen=True)
class SecretContext:
    """What a secret is bound to; the AAD of its ciphertext and the KMS encryption context."""

    realm: str
    service: str
    key: str
    version: int

    def aad(self) -> bytes:
        """Canonical bytes of the context."""
        return json.dumps(
            {
                "realm": self.realm,
                "service": self.service,
                "key": self.key,
                "version": self.version,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def kms_context(self) -> dict[str, str]:
        """The context as a KMS EncryptionContext (string values)."""
        return {
            "atlas:realm": self.realm,
            "atlas:service": self.service,
            "atlas:key": self.key,
            "atlas:version": str(self.version),
        }

    def describe(self) -> str:
        """A human name of the secret for error messages (never its value)."""
        return f"secret {self.key!r} of service {self.service!r} (version {self.version})"


class KeyProvider(Protocol):
    """Wraps and unwraps data keys."""

    name: str

    def key_id(self) -> str:
        """The id of the key that wraps new data keys."""

    def wrap(self, data_key: bytes, ctx: SecretContext) -> bytes:
        """Encrypt a data key."""

    def unwrap(self, wrapped: bytes, key_id: str, ctx: SecretContext) -> bytes:
        """Decrypt a data key; raise SecretUnreadable if it was tampered with."""


class LocalKeyProvider:
    """A 256-bit master key read from a file (offline use, tests, the local stack)."""

    name = "local"

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        try:
            raw = p.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"ATLAS_MASTER_KEY_FILE: cannot read {p}: {exc.strerror}") from None
        try:
            key = base64.b64decode(raw, validate=True)
        except (ValueError, binascii.Error):
            key = b""
        if len(key) != 32:
            raise ConfigError(
                f"ATLAS_MASTER_KEY_FILE: {p} must hold 32 random bytes, base64-encoded "
                "(e.g. `head -c 32 /dev/urandom | base64`)"
            )
        if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("master key file %s is readable by group or others; chmod 600 it", p)
        self._aead = AESGCM(key)
        self._id = "local:" + hashlib.sha256(key).hexdigest()[:16]

    def key_id(self) -> str:
        """The master key's fingerprint."""
        return self._id

    def wrap(self, data_key: bytes, ctx: SecretContext) -> bytes:
        """Encrypt the data key under the master key."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, ctx.aad())

    def unwrap(self, wrapped: bytes, key_id: str, ctx: SecretContext) -> bytes:
        """Decrypt the data key."""
        if key_id != self._id:
            raise SecretUnreadable(
                f"{ctx.describe()} was wrapped by another master key ({key_id}); "
                "configure that key to read it"
            )
        try:
            return self._aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], ctx.aad())
        except (InvalidTag, ValueError):
            raise SecretUnreadable(
                f"{ctx.describe()}: its wrapped data key failed the integrity check"
            ) from None


class KmsKeyProvider:
    """AWS KMS (or moto's KMS on the same endpoint as DynamoDB) through boto3."""

    name = "kms"

    def __init__(
        self,
        key_id: str,
        endpoint_url: str | None,
        region: str,
        create_if_missing: bool = True,
        realm: str = "",
        client: Any = None,
    ) -> None:
        self._wanted = key_id
        self._create = create_if_missing
        self._realm = realm
        self._resolved: str | None = None
        self._lock = threading.Lock()
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "kms",
                endpoint_url=endpoint_url,
                region_name=region,
                config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
            )
        self.client = client

    def _errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def key_id(self) -> str:
        """The ARN of the wrapping key; creates `alias/atlas-<realm>` on first use if allowed."""
        if self._resolved is not None:
            return self._resolved
        with self._lock:
            if self._resolved is None:
                self._resolved = self._resolve()
            return self._resolved

    def _resolve(self) -> str:
        from botocore.exceptions import ClientError

        try:
            return str(self.client.describe_key(KeyId=self._wanted)["KeyMetadata"]["Arn"])
        except ClientError as exc:
            missing = exc.response["Error"]["Code"] == "NotFoundException"
            if not (missing and self._create and self._wanted.startswith("alias/")):
                # The AWS message (ARNs, account ids) goes to the log, not to the caller.
                log.error("KMS key %s is not usable: %s", self._wanted, exc)
                code = exc.response["Error"]["Code"]
                raise Unavailable(f"KMS key {self._wanted} is not usable ({code})") from None
        except self._errors() as exc:
            raise Unavailable(f"KMS did not answer: {exc.__class__.__name__}") from None
        try:
            meta = self.client.create_key(
                Description=f"Atlas secrets of realm {self._realm}", KeyUsage="ENCRYPT_DECRYPT"
            )["KeyMetadata"]
            try:
                self.client.create_alias(AliasName=self._wanted, TargetKeyId=meta["KeyId"])
                log.info("created KMS key %s for %s", meta["Arn"], self._wanted)
                return str(meta["Arn"])
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "AlreadyExistsException":
                    raise
                # Another process won the race: use its key, retire ours.
                self.client.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
                return str(self.client.describe_key(KeyId=self._wanted)["KeyMetadata"]["Arn"])
        except self._errors() as exc:
            log.error("KMS could not create %s: %s", self._wanted, exc)
            raise Unavailable(
                f"KMS could not create {self._wanted} ({exc.__class__.__name__})"
            ) from None

    def wrap(self, data_key: bytes, ctx: SecretContext) -> bytes:
        """KMS Encrypt of the data key, with the secret's context as EncryptionContext."""
        try:
            out = self.client.encrypt(
                KeyId=self.key_id(), Plaintext=data_key, EncryptionContext=ctx.kms_context()
            )
        except self._errors() as exc:
            raise Unavailable(f"KMS did not encrypt: {exc.__class__.__name__}") from None
        return bytes(out["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, key_id: str, ctx: SecretContext) -> bytes:
        """KMS Decrypt of the data key; a tampered blob or context is SecretUnreadable."""
        from botocore.exceptions import ClientError

        try:
            out = self.client.decrypt(
                CiphertextBlob=wrapped, EncryptionContext=ctx.kms_context(), KeyId=key_id
            )
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise SecretUnreadable(
                    f"{ctx.describe()}: KMS refused its wrapped data key ({code})"
                ) from None
            raise Unavailable(f"KMS did not decrypt: {code}") from None
        except self._errors() as exc:
            raise Unavailable(f"KMS did not answer: {exc.__class__.__name__}") from None
        return bytes(out["Plaintext"])


class DataKeyCache:
    """Unwrapped data keys by wrapped blob, for a bounded time (0 disables), LRU-bounded.

    Thread-safe: the cachetools TTLCache (which is not) is used under a lock.
    """

    def __init__(
        self, ttl_s: float, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._items: TTLCache[bytes, bytes] | None = (
            TTLCache(maxsize=max_entries, ttl=ttl_s, timer=clock) if ttl_s > 0 else None
        )
        self._lock = threading.Lock()

    def get(self, wrapped: bytes) -> bytes | None:
        """The data key if cached and fresh."""
        if self._items is None:
            return None
        with self._lock:
            return self._items.get(wrapped)

    def put(self, wrapped: bytes, data_key: bytes) -> None:
        """Remember a data key."""
        if self._items is None:
            return
        with self._lock:
            self._items[wrapped] = data_key


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class Sealer:
    """Seals and opens secret values (JSON) as envelopes stored in DynamoDB."""

    def __init__(self, provider: KeyProvider, cache: DataKeyCache | None = None) -> None:
        self.provider = provider
        self.cache = cache or DataKeyCache(0)

    def seal(self, value: Any, ctx: SecretContext) -> str:
        """Encrypt a JSON value under a fresh data key; return the envelope (JSON text)."""
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        plaintext = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, ctx.aad())
        key_id = self.provider.key_id()
        wrapped = self.provider.wrap(data_key, ctx)
        self.cache.put(wrapped, data_key)
        return json.dumps(
            {
                "v": ENVELOPE_VERSION,
                "alg": ALG,
                "provider": self.provider.name,
                "kid": key_id,
                "wk": _b64(wrapped),
                "n": _b64(nonce),
                "ct": _b64(ciphertext),
            },
            separators=(",", ":"),
        )

    def open(self, envelope: str, ctx: SecretContext) -> Any:
        """Decrypt an envelope made by seal() for the same context; SecretUnreadable otherwise."""
        try:
            env = json.loads(envelope)
            wrapped = base64.b64decode(env["wk"], validate=True)
            nonce = base64.b64decode(env["n"], validate=True)
            ciphertext = base64.b64decode(env["ct"], validate=True)
            provider, key_id = env["provider"], env["kid"]
            if env.get("v") != ENVELOPE_VERSION or env.get("alg") != ALG:
                raise ValueError("unknown envelope version")
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise SecretUnreadable(f"{ctx.describe()}: its stored envelope is malformed") from None
        if provider != self.provider.name:
            raise SecretUnreadable(
                f"{ctx.describe()} was sealed by the {provider!r} key provider, "
                f"but this Atlas uses {self.provider.name!r}"
            )
        data_key = self.cache.get(wrapped)
        if data_key is None:
            data_key = self.provider.unwrap(wrapped, str(key_id), ctx)
            self.cache.put(wrapped, data_key)
        try:
            plaintext = AESGCM(data_key).decrypt(nonce, ciphertext, ctx.aad())
        except (InvalidTag, ValueError):
            raise SecretUnreadable(
                f"{ctx.describe()}: its ciphertext failed the integrity check "
                "(tampered with, or copied from another entry)"
            ) from None
        return json.loads(plaintext)


def provider_for(settings: Settings) -> KeyProvider:
    """The key provider the settings name (KMS, or the local master key file)."""
    if settings.key_provider == "local":
        return LocalKeyProvider(settings.master_key_file)
    return KmsKeyProvider(
        settings.kms_key_id,
        settings.kms_endpoint_url,
        settings.aws_region,
        create_if_missing=settings.kms_create_key,
        realm=settings.realm,
    )


def sealer_for(settings: Settings) -> Sealer:
    """A Sealer with the configured provider and data-key cache."""
    return Sealer(provider_for(settings), DataKeyCache(settings.data_key_cache_s))
