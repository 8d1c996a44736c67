"""Retry policy for service:// calls: urllib3's Retry plus a time budget and injectable clock/sleep."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Any, Self

from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import MaxRetryError, ReadTimeoutError, ResponseError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry
from urllib3.util.timeout import _DEFAULT_TIMEOUT, Timeout

#: Methods that are safe to repeat (RFC 9110 idempotent methods, TRACE left out).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Statuses a proxy returns when an instance is down, overloaded or reloading.
RETRY_STATUSES = frozenset({502, 503, 504})


class AtlasRetry(Retry):
    """urllib3 Retry with atlas defaults, a total time budget and injectable clock/sleep.

    ``budget`` bounds the whole call: no retry starts, and no backoff or
    Retry-After wait is taken, past ``budget`` seconds after the call started.
    A Retry-After longer than what is left of the budget ends the retries at once
    (the caller gets the 503) instead of sleeping into a certain failure.

    A read timeout is not retried unless ``retry_read_timeouts=True``: the
    request reached a backend that is slow, and sending it again doubles the
    load on a service that is already behind while spending the caller's time.
    Other read errors (a keep-alive connection closed by a reloading HAProxy, a
    reset) are retried for idempotent methods, as before.

    ``bounded`` (set by ``start(limit)`` when the caller gave a timeout): the
    budget bounds the attempts too, so no retry starts whose wait would use up
    what is left of it.
    """

    # 413 + Retry-After is a client problem; retrying it is never useful.
    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    def __init__(
        self,
        total: bool | int | None = 3,
        *,
        budget: float | None = 10.0,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleeper: Callable[[float], Any] = time.sleep,
        allowed_methods: Collection[str] | None = IDEMPOTENT_METHODS,
        status_forcelist: Collection[int] | None = RETRY_STATUSES,
        backoff_factor: float = 0.05,
        backoff_max: float = 2.0,
        backoff_jitter: float = 0.05,
        raise_on_status: bool = False,
        retry_read_timeouts: bool = False,
        bounded: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            total,
            allowed_methods=allowed_methods,
            status_forcelist=status_forcelist,
            backoff_factor=backoff_factor,
            backoff_max=backoff_max,
            backoff_jitter=backoff_jitter,
            raise_on_status=raise_on_status,
            **kwargs,
        )
        self.budget = budget
        self.retry_read_timeouts = retry_read_timeouts
        self.deadline = deadline
        self.bounded = bounded
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleeper = sleeper

    def new(self, **kw: Any) -> Self:
        """Return a copy with some parameters changed (keeps budget, deadline, clocks)."""
        kw.setdefault("budget", self.budget)
        kw.setdefault("retry_read_timeouts", self.retry_read_timeouts)
        kw.setdefault("deadline", self.deadline)
        kw.setdefault("bounded", self.bounded)
        kw.setdefault("clock", self.clock)
        kw.setdefault("wall_clock", self.wall_clock)
        kw.setdefault("sleeper", self.sleeper)
        return super().new(**kw)

    def start(self, limit: float | None = None) -> Self:
        """Return a copy whose budget starts now (once per request), cut to ``limit`` seconds.

        With a ``limit`` (the caller's timeout) the budget bounds the attempts
        too, so no retry starts whose backoff would use up what is left.
        """
        budgets = [b for b in (self.budget, limit) if b is not None]
        deadline = self.clock() + min(budgets) if budgets else None
        return self.new(deadline=deadline, history=(), bounded=limit is not None)

    def remaining(self) -> float | None:
        """Seconds left in the budget, or None when there is no budget."""
        if self.deadline is None:
            return None
        return self.deadline - self.clock()

    def allowing(self, method: str) -> Self:
        """Return a copy that also retries ``method`` (an explicit per-call opt-in)."""
        if self.allowed_methods is None or method.upper() in self.allowed_methods:
            return self
        return self.new(allowed_methods=frozenset(self.allowed_methods) | {method.upper()})

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        """Count one failure; raise MaxRetryError when retries or the time budget are used up."""
        if isinstance(error, ReadTimeoutError) and not self.retry_read_timeouts:
            raise error  # as urllib3 does for a read error it may not retry
        current = self
        if self.deadline is None and self.budget is not None:
            # Used without start(): count the budget from the first failure.
            current = self.new(deadline=self.clock() + self.budget)
        new = super(AtlasRetry, current).increment(method, url, response, error, _pool, _stacktrace)
        left = new.remaining()
        if left is None:
            return new
        wait = 0.0
        if response is not None and self.respect_retry_after_header:
            wait = new.get_retry_after(response) or 0.0
        if self.bounded and not wait:
            # The next attempt must have time left after its backoff, or it would
            # only time out: the caller gets this failure now instead.
            wait = new.get_backoff_time()
        if left <= 0 or wait > left or (self.bounded and wait >= left):
            reason = error or ResponseError(
                "retry budget exhausted"
                + (f" (last status {response.status})" if response is not None else "")
            )
            raise MaxRetryError(_pool, url or "", reason) from reason  # type: ignore[arg-type]
        return new

    def parse_retry_after(self, retry_after: str) -> float:
        """Parse Retry-After (seconds or an HTTP date, read against the injected wall clock)."""
        if retry_after.strip().isdigit():
            return super().parse_retry_after(retry_after)
        parsed = email.utils.parsedate_tz(retry_after)
        if parsed is None:
            return super().parse_retry_after(retry_after)  # raises InvalidHeader
        seconds = max(email.utils.mktime_tz(parsed) - self.wall_clock(), 0.0)
        return float(min(seconds, self.retry_after_max))

    def sleep_for_retry(self, response: BaseHTTPResponse) -> bool:
        """Sleep for the response's Retry-After, if it has one; return whether it slept."""
        retry_after = self.get_retry_after(response)
        if retry_after:
            self._nap(retry_after)
            return True
        return False

    def _sleep_backoff(self) -> None:
        backoff = self.get_backoff_time()
        if backoff > 0:
            self._nap(backoff)

    def _nap(self, seconds: float) -> None:
        left = self.remaining()
        if left is not None:
            seconds = min(seconds, max(left, 0.0))
        if seconds > 0:
            self.sleeper(seconds)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, budget={self.budget})"


class DeadlineTimeout(Timeout):
    """urllib3 Timeout whose connect and read timeouts never run past a deadline.

    urllib3 hands the same Timeout to every retry of a call; this one cuts each
    attempt's connect and read timeouts to what is left until ``deadline`` (read
    on ``clock``), so the retry budget bounds the whole call, attempts included.
    """

    def __init__(
        self,
        connect: Any,
        read: Any,
        *,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(connect=connect, read=read)
        self.deadline = deadline
        self.clock = clock

    def clone(self) -> DeadlineTimeout:
        """A fresh copy for one attempt (urllib3 clones the Timeout per attempt)."""
        return DeadlineTimeout(self._connect, self._read, deadline=self.deadline, clock=self.clock)

    @staticmethod
    def _left_alone(value: Any) -> float | None:
        return None if value is _DEFAULT_TIMEOUT else value

    def _cut(self, seconds: float | None) -> float:
        # Never 0 for connect: a socket timeout of 0 means non-blocking, not "expired".
        left = max(self.deadline - self.clock(), 0.001)
        return left if seconds is None else min(seconds, left)

    @property
    def connect_timeout(self) -> float:
        """The connect timeout, cut to what is left of the deadline."""
        return self._cut(self._left_alone(super().connect_timeout))

    @property
    def read_timeout(self) -> float:
        """The read timeout, cut to what is left of the deadline."""
        return self._cut(self._left_alone(super().read_timeout))


def timeout_total(timeout: Any) -> float | None:
    """Longest one attempt may take with a requests ``timeout`` (connect + read), or None."""
    if isinstance(timeout, Timeout):
        if isinstance(timeout.total, int | float):
            return float(timeout.total)
        connect, read = timeout._connect, timeout._read
    elif isinstance(timeout, tuple):
        connect, read = timeout
    else:
        connect = read = timeout
    if isinstance(connect, int | float) and isinstance(read, int | float):
        return float(connect) + float(read)
    return None


#: What requests uses by default: no retry at all (a read error is re-raised).
NO_RETRY = Retry(0, read=False)


def as_retry(value: Retry | int | bool | None, base: Retry) -> Retry:
    """Turn a per-call ``retries=`` value into a Retry, using ``base`` for an int."""
    if value is None:
        return base
    if isinstance(value, Retry):
        return value
    if value is False or value == 0:
        return NO_RETRY
    if value is True:
        return base
    return base.new(total=int(value))
