"""Guard rails on taking instances out of service: `min_enabled` and timed disables.

An instance is *serving* when it takes new requests: enabled and not draining. A service's
`min_enabled` is the fewest serving instances a write may leave it with: a disable, a drain, a
detach or a host-disable that would leave fewer is refused (409, `MinEnabledRefused`) unless
forced. Writes that only add serving instances (attach, enable, undrain, an expiry) are never
refused, whatever the count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from atlas.errors import Conflict, ValidationFailed

#: How far ahead a timed disable may end.
MAX_DISABLE = timedelta(days=30)
#: A system principal: Atlas itself, ending a timed disable (the audit trail's `principal`).
EXPIRY_PRINCIPAL = "atlas:expiry"


@dataclass(frozen=True)
class Floor:
    """What one service's min_enabled says of a write: the floor and what the write leaves."""

    service: str
    min_enabled: int
    serving_after: int

    @property
    def refused(self) -> bool:
        """True when the write would leave fewer serving instances than the floor."""
        return self.serving_after < self.min_enabled


class MinEnabledRefused(Conflict):
    """A write would leave a service with fewer serving instances than its min_enabled.

    The problem names every refused service with its floor and what the write would have left
    (`refused`, beside the RFC 9457 members); nothing was written.
    """

    slug = "min-enabled"
    title = "Too few instances would stay enabled"

    def __init__(self, floors: Sequence[Floor]) -> None:
        self.floors = list(floors)
        parts = [
            f"service {f.service!r} must keep {f.min_enabled} enabled instance"
            f"{'s' if f.min_enabled != 1 else ''} (min_enabled); this would leave "
            f"{f.serving_after}"
            for f in self.floors
        ]
        super().__init__(
            "; ".join(parts) + ". Nothing was changed; ?force=true does it anyway.",
        )

    def to_problem(self) -> dict[str, Any]:
        """The problem+json body, with `refused`: [{service, min_enabled, enabled_after}]."""
        body = super().to_problem()
        body["refused"] = [
            {"service": f.service, "min_enabled": f.min_enabled, "enabled_after": f.serving_after}
            for f in self.floors
        ]
        return body


def serving(enabled: Any, drain: Any) -> bool:
    """Whether a stored instance takes new requests (what min_enabled counts)."""
    return bool(enabled) and not bool(drain)


def check_until(value: datetime, now: datetime) -> datetime:
    """A timed disable's end: in the future, at most MAX_DISABLE ahead; 422 naming the field."""
    if value.tzinfo is None:
        raise ValidationFailed(
            "disabled_until needs a time zone",
            {"disabled_until": ["An RFC 3339 time with Z or an offset."]},
        )
    if value <= now:
        raise ValidationFailed(
            "disabled_until is not in the future",
            {"disabled_until": ["Must be in the future."]},
        )
    if value > now + MAX_DISABLE:
        raise ValidationFailed(
            "disabled_until is too far ahead",
            {"disabled_until": [f"Must be at most {MAX_DISABLE.days} days ahead."]},
        )
    return value


def with_until(changes: Mapping[str, Any], stamp: Any, now: datetime) -> dict[str, Any]:
    """`changes` with a datetime `disabled_until` checked and turned into its stored form."""
    out = dict(changes)
    value = out.get("disabled_until")
    if isinstance(value, datetime):
        out["disabled_until"] = stamp(check_until(value, now))
    return out
