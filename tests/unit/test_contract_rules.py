"""The address patterns of atlas.contract say exactly what a plain reading of the rules says.

HOST_PATTERN and INSTANCE_ID_PATTERN are what the API checks and what openapi.yaml publishes. Each
is compared, on generated strings, with a reference written without regular expressions
(Python's `ipaddress` plus the hostname rules), both ways: every string one accepts the other
accepts, and normalization never fails on a string the pattern accepts.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atlas.contract import (
    HOST_PATTERN,
    HOST_RE,
    INSTANCE_ID_PATTERN,
    INSTANCE_ID_RE,
    instance_id,
    normalize_host,
    parse_instance_id,
    routable_ip,
    split_instance_id,
)
from atlas.errors import ValidationFailed

LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Addresses on either side of every boundary the rules draw.
EDGE_ADDRESSES = (
    "0.0.0.0", "255.255.255.255", "224.0.0.1", "239.255.255.255", "240.0.0.1", "0.1.2.3",
    "1.0.0.0", "223.255.255.255", "127.0.0.1", "::", "::1", "ff02::1", "fe80::1", "febf::1",
    "fec0::1", "ff00::", "feff::1", "64:ff9b::1",
)  # fmt: skip
SETTINGS = settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def reference_host(value: str) -> bool:
    """The host rule read plainly: a routable IP address, or DNS labels whose last is no number."""
    if not value or len(value) > 253 or not value.isascii():
        return False
    bracketed = value.startswith("[") and value.endswith("]")
    candidate = value[1:-1] if bracketed else value
    if "%" not in candidate:  # ipaddress takes IPv6 zone ids; an instance cannot use one
        try:
            ip = ipaddress.ip_address(candidate)
        except ValueError:
            pass
        else:
            return not (bracketed and ip.version == 4) and routable_ip(ip)
    if any(c in value for c in "[]:"):
        return False
    labels = (value[:-1] if value.endswith(".") else value).split(".")
    if not all(LABEL.fullmatch(label) for label in labels):
        return False
    last = labels[-1]
    return not (last.isdigit() or re.fullmatch("0[xX][0-9A-Fa-f]*", last))


def reference_instance_id(value: str) -> bool:
    """`host:port`: a reference host (an IPv6 one in brackets) and a port without leading zeros."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or port != str(int(port)):
        return False
    if not 1 <= int(port) <= 65535:
        return False
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return False
    return reference_host(host)


def _groups(ip: ipaddress.IPv6Address) -> list[str]:
    return ip.exploded.split(":")


@st.composite
def address_texts(draw: st.DrawFn) -> str:
    """An IP address written in one of the forms people write: compressed, expanded, zero-padded,
    upper-case, compressed anywhere, IPv4-mapped (dotted and hex), with or without brackets."""
    ip = draw(
        st.one_of(
            st.ip_addresses(),
            st.sampled_from([ipaddress.ip_address(a) for a in EDGE_ADDRESSES]),
        )
    )
    if isinstance(ip, ipaddress.IPv4Address):
        kind = draw(st.sampled_from(["plain", "mapped", "mapped-long", "hex", "hex-long"]))
        high, low = (
            g.lstrip("0") or "0" for g in _groups(ipaddress.IPv6Address(f"::ffff:{ip}"))[6:]
        )
        tail = f"{high}:{low}"
        if kind.startswith("hex") and low == "0" and draw(st.booleans()):
            tail = f"{high}::" if high != "0" else ":"  # trailing zero groups compressed
        text = {
            "plain": str(ip),
            "mapped": f"::ffff:{ip}",
            "mapped-long": f"0:0:0:0:0:ffff:{ip}",
            "hex": f"::ffff:{high}:{low}",
            "hex-long": f"0:0:0:0:0:ffff:{tail}",
        }[kind]
    else:
        groups = _groups(ip)
        style = draw(st.sampled_from(["compressed", "exploded", "short", "zeros-run"]))
        if style == "compressed":
            text = str(ip)
        elif style == "exploded":
            text = ip.exploded
        else:
            short = [g.lstrip("0") or "0" for g in groups]
            text = ":".join(short)
            if style == "zeros-run":
                # Compress one run of zero groups (any one, not only the longest).
                runs = [i for i, g in enumerate(short) if g == "0"]
                if runs:
                    start = draw(st.sampled_from(runs))
                    end = start
                    while end + 1 < 8 and short[end + 1] == "0" and draw(st.booleans()):
                        end += 1
                    text = ":".join(short[:start]) + "::" + ":".join(short[end + 1 :])
    if draw(st.booleans()):
        text = text.upper()
    if ":" in text and draw(st.booleans()):
        text = f"[{text}]"
    return text


HOSTISH = st.text(alphabet="0123456789abcdefxAF:.[]-%", max_size=24)


@SETTINGS
@given(st.one_of(address_texts(), HOSTISH, st.from_regex(HOST_PATTERN, fullmatch=True)))
@example("0:0:0:0:0:ffff::")
@example("0:0:0:0:0:ffff:e000::")
@example("::ffff:0.0.0.0")
@example("::0.0.0.0")
@example("0x7f000001")
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61)
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62)
def test_host_pattern_is_the_plain_rule(value: str) -> None:
    accepted = HOST_RE.fullmatch(value) is not None
    assert accepted == reference_host(value), value
    normalized = normalize_host(value)
    assert (normalized is not None) == accepted, value
    if normalized is not None:
        assert normalize_host(normalized) == normalized  # canonical forms are fixed points


@SETTINGS
@given(
    st.one_of(
        st.tuples(address_texts(), st.integers(0, 70000)).map(
            lambda hp: (f"[{hp[0]}]" if ":" in hp[0] and "[" not in hp[0] else hp[0]) + f":{hp[1]}"
        ),
        st.tuples(HOSTISH, st.sampled_from(["80", "0", "08080", "65535", "65536", "x"])).map(
            ":".join
        ),
        st.from_regex(INSTANCE_ID_PATTERN, fullmatch=True),
    )
)
def test_instance_id_pattern_is_the_plain_rule(value: str) -> None:
    accepted = INSTANCE_ID_RE.fullmatch(value) is not None
    assert accepted == reference_instance_id(value), value
    try:
        host, port = parse_instance_id(value)
    except ValidationFailed as exc:
        assert not accepted, value
        assert set(exc.errors) <= {"host", "port", "instance_id"}
    else:
        assert accepted, value
        assert split_instance_id(instance_id(host, port)) == (host, port)


@pytest.mark.parametrize(
    "value,field",
    [("0.0.0.0:80", "host"), ("[::]:80", "host"), ("255.255.255.255:80", "host"),
     ("224.0.0.1:80", "host"), ("[ff02::1]:80", "host"), ("[fe80::1]:80", "host"),
     ("[::ffff:0.0.0.0]:80", "host"), ("::1:80", "host"), ("10.0.0.1:080", "port"),
     ("10.0.0.1", "instance_id")],
)  # fmt: skip
def test_refusals_name_the_field(value: str, field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_instance_id(value)
    assert field in info.value.errors


def test_equivalent_forms_are_one_identity() -> None:
    forms = ["[::ffff:127.0.0.1]:80", "[::ffff:7f00:1]:80", "[0:0:0:0:0:ffff:127.0.0.1]:80",
             "127.0.0.1:80"]  # fmt: skip
    assert {parse_instance_id(f) for f in forms} == {("127.0.0.1", 80)}
    forms = ["[::1]:80", "[0:0:0:0:0:0:0:1]:80", "[0000:0000:0000:0000:0000:0000:0000:0001]:80"]
    assert {parse_instance_id(f) for f in forms} == {("::1", 80)}
    assert parse_instance_id("LocalHost.:80") == ("localhost", 80)
