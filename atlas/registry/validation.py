"""Validation of names, hosts and instance ids shared by the API and the registry."""

from __future__ import annotations

import ipaddress
import re

from atlas.errors import ValidationFailed

SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE | re.ASCII)
# Characters a hostname or an IP address (IPv6 possibly in brackets) may contain: no zone ids,
# no whitespace or control characters, nothing outside ASCII.
_HOST_CHARS_RE = re.compile(r"[A-Za-z0-9.:\[\]-]+", re.ASCII)


def is_service_name(value: str) -> bool:
    """True for a DNS-label service name."""
    return bool(SERVICE_NAME_RE.fullmatch(value))


def normalize_host(value: str) -> str | None:
    """Return the canonical form of a hostname or IP address, or None if it is neither."""
    if not value or len(value) > 253 or not _HOST_CHARS_RE.fullmatch(value):
        return None
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    if candidate != value:
        return None
    name = value.rstrip(".").lower() if value.endswith(".") and len(value) > 1 else value.lower()
    labels = name.split(".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    # A dotted all-numeric name that is not a valid IPv4 address is a typo, not a hostname.
    if all(label.isdigit() for label in labels):
        return None
    return name


def parse_instance_id(value: str) -> tuple[str, int]:
    """Split `host:port` (or `[v6]:port`) into a normalized host and a port.

    Raises ValidationFailed naming `host` or `port`.
    """
    host, sep, port_s = value.rpartition(":")
    errors: dict[str, list[str]] = {}
    port = 0
    if not sep:
        raise ValidationFailed(
            "instance id must be host:port", {"instance_id": ["Expected host:port."]}
        )
    digits = port_s.isascii() and port_s.isdigit()
    if not digits or len(port_s) > 5 or not 1 <= int(port_s) <= 65535:
        errors["port"] = ["Must be an integer between 1 and 65535."]
    else:
        port = int(port_s)
    normalized = None if ":" in host and not host.startswith("[") else normalize_host(host)
    if normalized is None:
        errors["host"] = ["Must be a hostname or an IP address (IPv6 in brackets)."]
    if errors or normalized is None:
        raise ValidationFailed("invalid instance id " + repr(value)[:80], errors)
    return normalized, port


def check_service_name(value: str, field: str = "name") -> str:
    """Return the name if valid, else raise ValidationFailed naming the field."""
    if not is_service_name(value):
        raise ValidationFailed(
            f"invalid service name {value[:80]!r}",
            {field: [f"Must match {SERVICE_NAME_RE.pattern}."]},
        )
    return value
