"""The contract every part of Atlas shares: the ZooKeeper layout, names, and the rules of what
an instance may be. The API refuses what these rules refuse, and the mirror, the sidecar and
the clients honour everything they accept, so a value that passes here is routable.

No Flask, no pynamodb: the sidecar, the clients and the Smart Service import this module alone.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from atlas.errors import ValidationFailed

#: A realm names DynamoDB tables and the ZooKeeper root.
REALM_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
#: A service name is a DNS label: it is a znode name, an HAProxy backend and a header value.
SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
#: A config key, as a service reads it (`settings.DATABASE_URL`).
CONFIG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
#: The request header that names the service at the sidecar.
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
#: Tags of a service and label keys of an instance (Synapse reads labels).
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
LABEL_KEY_RE = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?(/[A-Za-z0-9_.-]{1,63})?$"
)

PORT_MIN, PORT_MAX = 1, 65535
WEIGHT_MIN, WEIGHT_MAX = 0, 256  # HAProxy's range
DEFAULT_WEIGHT = 100

#: A health check path is an HTTP origin-form request target (RFC 9112 §3.2.1): an absolute
#: path of RFC 3986 pchars and an optional query. No space, quote, backslash or `#` (a fragment
#: is never sent), so it goes on the wire and into HAProxy's config as it is written.
HEALTH_CHECK_PATH_MAX = 1024
_PCHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@"
HEALTH_CHECK_PATH_RE = re.compile(
    rf"^/(?:[{_PCHARS}/]|%[0-9A-Fa-f]{{2}})*(?:\?(?:[{_PCHARS}/?]|%[0-9A-Fa-f]{{2}})*)?$"
)
HEALTH_CHECK_PATH_RULE = (
    "Must be an absolute path with an optional query (RFC 3986 characters: letters, digits, "
    "-._~!$&'()*+,;=:@/? and %XX escapes), at most 1024 characters."
)

# ------------------------------------------------------------------- host and port patterns
#
# The address rules are regular expressions first, so the API, the OpenAPI document (which
# carries these exact patterns) and every consumer agree on one set of strings. They use only
# the part of regex syntax that Python and ECMA-262 (JSON Schema) read alike, and only negative
# lookaheads (generators such as Hypothesis honour those by filtering).

_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
# 1-223: not 0.0.0.0/8 ("this network", never a destination), not 224.0.0.0/4 (multicast),
# not 240.0.0.0/4 (reserved, and 255.255.255.255, broadcast).
_FIRST_OCTET = r"(?:22[0-3]|2[01][0-9]|1[0-9]{2}|[1-9][0-9]?)"
_DOTTED = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
#: A unicast IPv4 address in dotted-decimal form, no leading zeros.
IPV4_PATTERN = rf"{_FIRST_OCTET}(?:\.{_DEC_OCTET}){{3}}"

_H16 = "[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_DOTTED})"
# RFC 3986 section 3.2.2, IPv6address.
_IPV6_FORMS = "|".join(
    [
        rf"(?:{_H16}:){{6}}{_LS32}",
        rf"::(?:{_H16}:){{5}}{_LS32}",
        rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
        rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
        rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
        rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
    ]
)
# The high 16 bits of an IPv4-mapped address whose IPv4 address is refused (first octet 0 or
# 224 and above), and the same for a dotted tail.
_BAD_MAPPED_HIGH = "(?:0{0,2}[0-9A-Fa-f]{1,2}|[EeFf][0-9A-Fa-f]{3})"
_BAD_MAPPED_DOTTED = r"(?:0|22[4-9]|2[3-5][0-9])\."


def _ipv6_pattern(end: str) -> str:
    """A unicast IPv6 address that ends where `end` matches (`$`, or `\\]` in brackets).

    Refused: the unspecified address (only zeros), multicast (ff00::/8), link-local (fe80::/10,
    unroutable without a zone id) and IPv4-mapped addresses of a refused IPv4 address.
    """
    return (
        rf"(?![0:.]*{end})"
        rf"(?![Ff]{{2}}[0-9A-Fa-f]{{2}}:)"
        rf"(?![Ff][Ee][89ABab][0-9A-Fa-f]:)"
        rf"(?![0:]*:[Ff]{{4}}:(?::{end}|{_BAD_MAPPED_HIGH}:(?::{end}|{_H16}{end})"
        rf"|{_BAD_MAPPED_DOTTED}))"
        rf"(?:{_IPV6_FORMS})"
    )


_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"


def _hostname_pattern(end: str) -> str:
    """DNS labels, an optional trailing dot; the last label is not a number (decimal or 0x-hex,
    which resolvers read as an IPv4 address: `10.1`, `0x7f000001`)."""
    tld = rf"(?![0-9]+\.?{end})(?!0[Xx][0-9A-Fa-f]*\.?{end}){_LABEL}"
    return rf"(?:{_LABEL}\.)*{tld}\.?"


HOST_MAX = 253
#: A port, 1-65535, no leading zeros.
PORT_PATTERN = (
    "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
)
_IPV6_BRACKETED = r"\[" + _ipv6_pattern(r"\]") + r"\]"
#: A host as the API takes it in a body or in /v1/hosts/{host}: a hostname, an IPv4 address, or
#: an IPv6 address with or without brackets; at most 253 characters.
HOST_PATTERN = (
    rf"^(?!.{{{HOST_MAX + 1}}})(?:{IPV4_PATTERN}|{_hostname_pattern('$')}"
    rf"|{_ipv6_pattern('$')}|{_IPV6_BRACKETED})$"
)
#: An instance id as the API takes it in a path: `host:port`, an IPv6 host in brackets.
INSTANCE_ID_PATTERN = (
    rf"^(?:{_IPV6_BRACKETED}"
    rf"|(?![^:]{{{HOST_MAX + 1}}})(?:{IPV4_PATTERN}|{_hostname_pattern(':')}))"
    rf":{PORT_PATTERN}$"
)
INSTANCE_ID_MAX = HOST_MAX + 6
HOST_RE = re.compile(HOST_PATTERN)
INSTANCE_ID_RE = re.compile(INSTANCE_ID_PATTERN)
HOST_RULE = (
    "Must be a hostname (its last label not a number), a unicast IPv4 address (first octet "
    "1-223) or a unicast IPv6 address (in brackets in an instance id; not link-local); not an "
    "unspecified, broadcast or multicast address; at most 253 characters."
)
PORT_RULE = "Must be an integer between 1 and 65535 (no leading zeros)."


# ------------------------------------------------------------------------------- names


def is_service_name(value: object) -> TypeGuard[str]:
    """True for a valid service name (a DNS label)."""
    return isinstance(value, str) and SERVICE_NAME_RE.fullmatch(value) is not None


def check_service_name(value: str, field: str = "name") -> str:
    """Return the name if valid, else raise ValidationFailed naming the field."""
    if not is_service_name(value):
        raise ValidationFailed(
            f"invalid service name {value[:80]!r}",
            {field: [f"Must match {SERVICE_NAME_RE.pattern}."]},
        )
    return value


def is_config_key(value: object) -> TypeGuard[str]:
    """True for a valid config key."""
    return isinstance(value, str) and CONFIG_KEY_RE.fullmatch(value) is not None


def check_config_key(value: str, field: str = "key") -> str:
    """Return the key if valid, else raise ValidationFailed naming the field."""
    if not is_config_key(value):
        raise ValidationFailed(
            f"invalid config key {value[:80]!r}", {field: [f"Must match {CONFIG_KEY_RE.pattern}."]}
        )
    return value


def is_health_check_path(value: object) -> TypeGuard[str]:
    """True for a health check path the sidecar can put in HAProxy's config and send."""
    return (
        isinstance(value, str)
        and len(value) <= HEALTH_CHECK_PATH_MAX
        and HEALTH_CHECK_PATH_RE.fullmatch(value) is not None
    )


# ------------------------------------------------------------------------------- hosts


def routable_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address an instance can have (what HOST_PATTERN's IP forms accept).

    IPv4: first octet 1-223. IPv6: not unspecified, multicast or link-local; an IPv4-mapped
    address follows the rule of the IPv4 address it maps.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return routable_ip(ip.ipv4_mapped)
        return not (ip.is_unspecified or ip.is_multicast or ip.is_link_local)
    return 1 <= ip.packed[0] <= 223


def normalize_host(value: str) -> str | None:
    """The canonical form of a hostname or IP address an instance can have, or None.

    Accepts exactly what HOST_PATTERN matches. IP addresses are compressed (`2001:db8::1`); an
    IPv4-mapped IPv6 address becomes the IPv4 address it maps (one identity per endpoint);
    hostnames are lower-cased without a trailing dot.
    """
    if not isinstance(value, str) or HOST_RE.fullmatch(value) is None:
        return None
    candidate = value[1:-1] if value.startswith("[") else value
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        ip = None
    if ip is not None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        # The pattern already refused the rest; this only guards against a gap in it.
        return str(ip) if routable_ip(ip) else None
    if ":" in candidate:
        return None
    return (value[:-1] if value.endswith(".") else value).lower()


def is_ip(host: str) -> bool:
    """True when a normalized host is an IP address, False for a hostname (to be resolved)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_ipv6(host: str) -> bool:
    """True when a normalized host is an IPv6 address."""
    return ":" in host


def instance_id(host: str, port: int) -> str:
    """The instance id of host and port, `host:port` (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if is_ipv6(host) else f"{host}:{port}"


def split_instance_id(value: str) -> tuple[str, int] | None:
    """(normalized host, port) of a canonical instance id, or None for anything else."""
    if not isinstance(value, str) or INSTANCE_ID_RE.fullmatch(value) is None:
        return None
    host, _, port_s = value.rpartition(":")
    normalized = normalize_host(host)
    port = int(port_s)
    if normalized is None or instance_id(normalized, port) != value:
        return None
    return normalized, port


def parse_instance_id(value: str) -> tuple[str, int]:
    """Split `host:port` (or `[v6]:port`) into a normalized host and a port.

    Accepts exactly what INSTANCE_ID_PATTERN matches; raises ValidationFailed naming
    `instance_id`, `host` or `port`.
    """
    host, sep, port_s = value.rpartition(":")
    if not sep:
        raise ValidationFailed(
            "instance id must be host:port", {"instance_id": ["Expected host:port."]}
        )
    if INSTANCE_ID_RE.fullmatch(value) is not None:
        normalized = normalize_host(host)
        if normalized is not None:
            return normalized, int(port_s)
    errors: dict[str, list[str]] = {}
    if re.fullmatch(PORT_PATTERN, port_s) is None:
        errors["port"] = [PORT_RULE]
    # An IPv6 host must be in brackets here: without them, its last group reads as the port.
    if (":" in host and not host.startswith("[")) or normalize_host(host) is None:
        errors["host"] = [HOST_RULE]
    if not errors:
        errors["instance_id"] = ["Expected host:port, an IPv6 host in brackets."]
    raise ValidationFailed("invalid instance id " + repr(value)[:80], errors)


# ------------------------------------------------------------------------------ layout


class Layout:
    """The znode paths of one realm, `/atlas/<realm>/...` (DESIGN.md's layout).

    Consumers (Curator, Synapse, the sidecar) read `services/`; everything else is Atlas's own
    and lives beside it, where no consumer looks.
    """

    def __init__(self, realm: str, root: str = "/atlas") -> None:
        self.realm = realm
        self.root = f"{root.rstrip('/')}/{realm}"
        self.services = f"{self.root}/services"
        self.config = f"{self.root}/config"
        self.election = f"{self.root}/reconciler"
        # The leader's last reconcile report (numbers and times only), for every process's
        # /v1/info: the realm's view, whichever process answers.
        self.reconciled = f"{self.root}/reconciled"
        # One guard znode per service: every mirror commit checks and bumps it, which
        # serializes writers of one service. Guards survive a service's delete, not a wipe.
        self.guards = f"{self.root}/guards"
        # One ephemeral node per running sidecar: what it has applied.
        self.sidecars = f"{self.root}/sidecars"
        # The token revocation stamp, `{"revocations": n}` (a number only): every revoke bumps
        # it, and every Atlas process drops its cached service-token lookups when it moves.
        self.tokens = f"{self.root}/tokens"

    def service(self, name: str) -> str:
        """Path of a service node."""
        return f"{self.services}/{name}"

    def instance(self, service: str, iid: str) -> str:
        """Path of an instance node (`iid` is `host:port`)."""
        return f"{self.services}/{service}/{iid}"

    def guard(self, service: str) -> str:
        """Path of a service's guard znode."""
        return f"{self.guards}/{service}"

    def config_stamp(self, service: str) -> str:
        """Path of a service's config version stamp (a number only, never values)."""
        return f"{self.config}/{service}"

    def sidecar(self, host_id: str) -> str:
        """Path of one sidecar's ephemeral status node."""
        return f"{self.sidecars}/{host_id}"


# ----------------------------------------------------------------- instance extras

#: Instance node fields (Atlas's own, beside Curator's and Synapse's) that the sidecar applies
#: through HAProxy's runtime API. Consumers read them leniently: anything else means "not set".
#: `drain: true` -- no new requests, open ones finish (HAProxy's `drain` state).
INSTANCE_DRAIN = "drain"
#: `slow_start_s: n` -- after an enable (or a recovery) the weight ramps up over n seconds
#: (HAProxy's `slowstart`). 0 or absent: none.
INSTANCE_SLOW_START = "slow_start_s"
SLOW_START_MAX_S = 3600


def parse_drain(value: object) -> bool:
    """An instance node's `drain`, leniently: only JSON `true` drains."""
    return value is True


def parse_slow_start(value: object) -> int:
    """An instance node's `slow_start_s`, leniently: an integer 0..SLOW_START_MAX_S, else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    seconds = int(value)
    return seconds if 0 <= seconds <= SLOW_START_MAX_S else 0


# ------------------------------------------------------------------ sidecar report

#: A sidecar's host id names its node under `sidecars/`: no `/`, short, printable.
SIDECAR_HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
SIDECAR_REPORT_SCHEMA = 1


def is_sidecar_host_id(value: object) -> TypeGuard[str]:
    """True for a host id usable as a znode name under `sidecars/`."""
    return isinstance(value, str) and SIDECAR_HOST_ID_RE.fullmatch(value) is not None


def change_index(stats: Iterable[Any]) -> int:
    """The ZooKeeper index of the latest change among znode stats (kazoo `ZnodeStat`s).

    A service's index is this over its service node and its instance nodes: `mzxid` moves with
    a node's data, `pzxid` with its children (an instance detached). Compare it with a
    sidecar report's `applied_index_of(service)` to tell whether that sidecar has applied it.
    """
    return max((max(int(s.mzxid), int(getattr(s, "pzxid", 0) or 0)) for s in stats), default=0)


@dataclass(frozen=True)
class LaggingService:
    """A service a sidecar has not applied in full yet: what it runs of it, why, since when."""

    applied_index: int  # index of the last state of the service it applied (0: none yet)
    reason: str
    since: str | None = None  # RFC 3339


@dataclass(frozen=True)
class SidecarReport:
    """The data of a sidecar's ephemeral node, `/atlas/<realm>/sidecars/<host-id>` (JSON).

    `applied_index` is a watermark: every change under `services/` with a ZooKeeper index at
    or below it is applied to this host's HAProxy, except the services in `lagging`, which are
    applied up to their own `applied_index`. A sidecar that lags in nothing is converged for a
    service whose index (`change_index`) is <= `applied_index`. Counts are since the sidecar
    started; times are RFC 3339 UTC.
    """

    host_id: str
    realm: str
    applied_index: int
    lagging: Mapping[str, LaggingService] = field(default_factory=dict)
    stale: bool = False
    stale_reasons: tuple[str, ...] = ()
    reloads: int = 0
    runtime_updates: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    failures: Mapping[str, int] = field(default_factory=dict)
    haproxy_version: str | None = None
    sidecar_version: str | None = None
    services: int = 0
    instances: int = 0
    started_at: str | None = None
    updated_at: str | None = None
    schema: int = SIDECAR_REPORT_SCHEMA

    def applied_index_of(self, service: str) -> int:
        """The index up to which this sidecar has applied one service."""
        lag = self.lagging.get(service)
        return lag.applied_index if lag is not None else self.applied_index

    def has_applied(self, service: str, index: int) -> bool:
        """True when this sidecar has applied the service's change at `index` (or a later one)."""
        return self.applied_index_of(service) >= index

    def to_dict(self) -> dict[str, Any]:
        """The node's JSON object."""
        return {
            "schema": self.schema,
            "host_id": self.host_id,
            "realm": self.realm,
            "applied_index": self.applied_index,
            "lagging": {
                name: {"applied_index": lag.applied_index, "reason": lag.reason, "since": lag.since}
                for name, lag in sorted(self.lagging.items())
            },
            "stale": self.stale,
            "stale_reasons": list(self.stale_reasons),
            "reloads": self.reloads,
            "runtime_updates": self.runtime_updates,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "failures": dict(sorted(self.failures.items())),
            "haproxy_version": self.haproxy_version,
            "sidecar_version": self.sidecar_version,
            "services": self.services,
            "instances": self.instances,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the node (sorted keys, no spaces)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def _int(value: object, default: int = 0) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def parse_sidecar_report(data: bytes | None, host_id: str) -> SidecarReport | None:
    """Parse a sidecar node's data; None when it is not a report at all.

    Lenient like every consumer of the layout: a missing or mistyped field takes its default
    (a newer sidecar may add fields), so one odd node never hides the others.
    """
    try:
        obj = json.loads((data or b"").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("applied_index"), int):
        return None
    lagging: dict[str, LaggingService] = {}
    raw_lagging = obj.get("lagging")
    if isinstance(raw_lagging, dict):
        for name, lag in raw_lagging.items():
            if is_service_name(name) and isinstance(lag, dict):
                lagging[name] = LaggingService(
                    applied_index=_int(lag.get("applied_index")),
                    reason=_str(lag.get("reason")) or "",
                    since=_str(lag.get("since")),
                )
    reasons = obj.get("stale_reasons")
    failures = obj.get("failures")
    return SidecarReport(
        host_id=host_id,
        realm=_str(obj.get("realm")) or "",
        applied_index=_int(obj.get("applied_index")),
        lagging=lagging,
        stale=obj.get("stale") is True,
        stale_reasons=tuple(r for r in reasons if isinstance(r, str))
        if isinstance(reasons, list)
        else (),
        reloads=_int(obj.get("reloads")),
        runtime_updates=_int(obj.get("runtime_updates")),
        last_error=_str(obj.get("last_error")),
        last_error_at=_str(obj.get("last_error_at")),
        failures={k: _int(v) for k, v in failures.items() if isinstance(k, str)}
        if isinstance(failures, dict)
        else {},
        haproxy_version=_str(obj.get("haproxy_version")),
        sidecar_version=_str(obj.get("sidecar_version")),
        services=_int(obj.get("services")),
        instances=_int(obj.get("instances")),
        started_at=_str(obj.get("started_at")),
        updated_at=_str(obj.get("updated_at")),
        schema=_int(obj.get("schema"), SIDECAR_REPORT_SCHEMA),
    )
