"""Debounce and reload pacing, driven by an injected clock so tests never sleep.

Not thread-safe: each object belongs to the loop (the Debouncer is poked under the loop's
condition lock by the watcher thread, and read under it).
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Debouncer:
    """Coalesces bursts: a change after a quiet period is due at once (leading edge); changes
    following it are due once `quiet_s` passed since the last one, or `max_s` since the first.
    """

    def __init__(self, quiet_s: float, max_s: float) -> None:
        self.quiet_s = quiet_s
        self.max_s = max(max_s, quiet_s)
        self._first: float | None = None
        self._last: float | None = None
        self._taken: float | None = None
        self._undo: tuple[float | None, float | None, float | None] | None = None

    def poke(self, now: float) -> None:
        """Record a change at `now`."""
        if self._first is None:
            self._first = now
        self._last = now

    @property
    def pending(self) -> bool:
        """True while a change waits to be taken."""
        return self._first is not None

    def deadline(self) -> float | None:
        """When the pending changes become due, or None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        if self._taken is None or self._first - self._taken >= self.quiet_s:
            return self._first  # first change after a quiet period: no added latency
        return min(self._last + self.quiet_s, self._first + self.max_s)

    def clear(self) -> None:
        """Forget pending changes (they were read another way)."""
        self._first = self._last = None

    def take(self, now: float) -> bool:
        """Return True (and reset) when pending changes are due at `now`."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return False
        self._undo = (self._first, self._last, self._taken)
        self._first = self._last = None
        self._taken = now
        return True

    def untake(self) -> None:
        """Undo the last `take` (nothing could be taken after all): pending again, as before."""
        if self._undo is not None:
            first, last, taken = self._undo
            if first is not None:
                self._first = first if self._first is None else min(first, self._first)
            if self._last is None:
                self._last = last
            self._taken = taken
            self._undo = None


class ReloadPacer:
    """At most one reload per `min_interval_s` plus a random jitter (spreads a fleet's reloads)."""

    def __init__(
        self,
        min_interval_s: float,
        jitter_s: float = 0.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.min_interval_s = min_interval_s
        self.jitter_s = jitter_s
        self._rng = rng
        self._next: float | None = None

    def next_allowed(self) -> float | None:
        """The earliest moment of the next reload (None: right away)."""
        return self._next

    def ready(self, now: float) -> bool:
        """True when a reload may happen at `now`."""
        return self._next is None or now >= self._next

    def record(self, now: float) -> None:
        """Record a reload at `now`."""
        self._next = now + self.min_interval_s + self.jitter_s * self._rng()


class Backoff:
    """Exponential retry delay for failed checks, reloads and restarts."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._current = 0.0

    def failure(self) -> float:
        """Return the delay before the next attempt, growing each call."""
        self._current = self.initial_s if self._current == 0 else min(self.max_s, self._current * 2)
        return self._current

    def success(self) -> None:
        """Reset after a success."""
        self._current = 0.0
