"""Output for people (aligned tables, key/value blocks) and for scripts (JSON); durations."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click

MAX_CELL = 60
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MAX_DURATION = timedelta(days=365)


def cell(value: Any, limit: int = MAX_CELL) -> str:
    """One table cell: `-` for nothing, yes/no for booleans, k=v for mappings, cut when long."""
    if value is None or value == "":
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, Mapping):
        text = ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    elif isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value) or "-"
    else:
        text = str(value)
    text = " ".join(text.split())  # no newline or tab may break the columns
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], wide: Sequence[str] = ()) -> str:
    """An aligned plain-text table with a header line; `wide` columns are never cut."""
    limits = [10**6 if h in wide else MAX_CELL for h in headers]
    cells = [[cell(v, limits[i]) for i, v in enumerate(row)] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(t.ljust(widths[i]) for i, t in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def describe_changes(changes: Sequence[Mapping[str, Any]] | None) -> str:
    """An audit record's changes in one line: `owner: a → b; enabled: yes → no` (instances of
    a host action first), `-` when the record has none."""
    if not changes:
        return "-"

    def show(value: Any) -> str:
        if value is None:
            return "∅"
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    parts = []
    for c in changes:
        if "before" not in c:
            extra = ", ".join(f"{k}={v}" for k, v in c.items() if k != "field")
            parts.append(f"{c.get('field')} ({extra})")
            continue
        where = f"{c['instance']} " if c.get("instance") else ""
        parts.append(f"{where}{c['field']}: {show(c['before'])} → {show(c['after'])}")
    return "; ".join(parts)


def block(pairs: Iterable[tuple[str, Any]]) -> str:
    """`key: value` lines, keys aligned."""
    items = [(k, cell(v) if not isinstance(v, str) else (v or "-")) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{(k + ':').ljust(width + 1)} {v}" for k, v in items)


def emit_json(data: Any) -> None:
    """Print data as JSON (sorted keys, one document) for scripts."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def parse_time(value: str) -> datetime | None:
    """Parse an RFC 3339 time as Atlas writes it (`...Z`); None when it is not one."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def ago(value: str | None, now: datetime | None = None) -> str:
    """`2026-05-01T10:00:00.000Z (5m ago)`, or the value unchanged when it is not a time."""
    if not value:
        return "-"
    dt = parse_time(value)
    if dt is None:
        return value
    delta = (now or datetime.now(UTC)) - dt
    seconds = int(delta.total_seconds())
    when = "from now" if seconds < 0 else "ago"
    return f"{value} ({human_duration(abs(seconds))} {when})"


def human_duration(seconds: int) -> str:
    """90 -> `1m30s`, 7200 -> `2h`, 90061 -> `1d1h`: the largest unit and the next one."""
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for i, (unit, size) in enumerate(units):
        if seconds >= size or unit == "s":
            text = f"{seconds // size}{unit}"
            if i + 1 < len(units):
                next_unit, next_size = units[i + 1]
                rest = (seconds % size) // next_size
                if rest:
                    text += f"{rest}{next_unit}"
            return text
    return f"{seconds}s"


def parse_duration(text: str) -> timedelta:
    """`30m`, `1h30m`, `2d`, `45s` -> a timedelta (ValueError naming the rule otherwise)."""
    m = DURATION_RE.fullmatch(text.strip())
    if not text.strip() or m is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 1h30m, 2d or 45s")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if delta <= timedelta(0):
        raise ValueError("the duration must be longer than zero")
    if delta > MAX_DURATION:
        raise ValueError("the duration must be at most 365d")
    return delta


def rfc3339(dt: datetime) -> str:
    """A UTC time as Atlas writes times: `2026-05-01T10:00:00.000Z`."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
