"""The registry's store layer: the one door to DynamoDB for services, config, tokens and audit.

- named errors: `Unavailable` (DynamoDB did not answer: 503, safe to repeat), `ConditionFailed`
  (a conditional write's condition did not hold) and `TransactionCanceled` (which items'
  conditions failed, by the role each item was given);
- `operation()`: DynamoDB failures become `Unavailable`;
- `Store`: consistent reads, conditional writes, transactions with named items, and full scans
  in bounded pages, each retried where it stopped, optionally in parallel segments;
- `CursorKey` and `paginate()`: the listings' limit+1 pages behind opaque cursors;
- `race_retries()`: the retry loop of a read-modify-write that may lose a race;
- the clock: `utcnow()` and `timestamp()`;
- metrics: every call of a `Store` (and every `Store.operation` / `Store.paginate` block) is
  timed and its failure classified for the injected `StoreMetrics` (atlas.registry.metrics).

Nothing else in Atlas calls pynamodb's connection layer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pynamodb.connection import Connection
from pynamodb.exceptions import DoesNotExist, PynamoDBException, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from atlas.errors import Conflict, Unavailable, ValidationFailed
from atlas.registry.metrics import NullStoreMetrics, StoreMetrics, dynamodb_error_kind
from atlas.registry.models import Models
from atlas.registry.records import Page

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Model)
T = TypeVar("T")
Clock = Callable[[], datetime]

MAX_RACE_RETRIES = 5
CONDITION_FAILED = "ConditionalCheckFailed"
TRANSACTION_CONFLICT = "TransactionConflict"

__all__ = [
    "CONDITION_FAILED",
    "MAX_RACE_RETRIES",
    "Clock",
    "ConditionFailed",
    "CursorKey",
    "ScanPolicy",
    "Store",
    "StoreMetrics",
    "Transaction",
    "TransactionCanceled",
    "TransactionConflict",
    "Unavailable",
    "operation",
    "paginate",
    "race_retries",
    "timestamp",
    "utcnow",
]


# ------------------------------------------------------------------- clock


def utcnow() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(UTC)


def timestamp(dt: datetime) -> str:
    """A stored timestamp: RFC 3339 in UTC, milliseconds, `Z`."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------ errors


class ConditionFailed(Conflict):
    """A conditional write's condition did not hold; nothing was written.

    A Conflict (409) if it reaches a caller; the registry turns it into what it means there
    (412 for an If-Match, a retry for a lost race, 409 for a name taken).
    """

    def __init__(self, action: str) -> None:
        super().__init__(f"{action}: the item changed concurrently")
        self.action = action


class TransactionCanceled(Conflict):
    """A transaction was canceled because the condition of one or more items failed.

    `reasons` maps the role each item was given to DynamoDB's code for it (None where the
    item had no objection). Nothing of the transaction was written.
    """

    def __init__(self, action: str, reasons: Mapping[str, str | None]) -> None:
        failed = ", ".join(role for role, code in reasons.items() if code == CONDITION_FAILED)
        super().__init__(f"{action}: the condition of {failed} did not hold")
        self.action = action
        self.reasons = dict(reasons)

    def failed(self, role: str) -> bool:
        """True if the item with this role failed its condition."""
        return self.reasons.get(role) == CONDITION_FAILED


class TransactionConflict(Unavailable):
    """DynamoDB canceled a transaction because another one was writing one of its items at the
    same moment (no condition failed). Nothing was written; trying again is safe. A 503 if it
    reaches a caller; read-modify-write loops that can simply retry catch it."""

    def __init__(self, action: str) -> None:
        super().__init__(
            f"DynamoDB did not complete {action} (a concurrent transaction); retry the request "
            "(it is safe to repeat)"
        )
        self.action = action


@contextmanager
def operation(action: str) -> Iterator[None]:
    """Turn DynamoDB failures that are not ours to explain into `Unavailable` (503)."""
    try:
        yield
    except PynamoDBException as exc:
        log.warning("dynamodb error while %s: %s", action, exc.__class__.__name__)
        raise Unavailable(
            f"DynamoDB did not complete {action}; retry the request (it is safe to repeat)"
        ) from exc


@contextmanager
def _conditional(action: str) -> Iterator[None]:
    """A single-item conditional write: a failed condition is ConditionFailed, else operation()."""
    with operation(action):
        try:
            yield
        except PynamoDBException as exc:
            if exc.cause_response_code == "ConditionalCheckFailedException":
                raise ConditionFailed(action) from None
            raise


def _failure_kind(exc: BaseException) -> str | None:
    """The `dynamodb_error_kind` of a DynamoDB failure, None for any other exception."""
    if isinstance(exc, TransactionCanceled):
        return "transaction_canceled"
    if isinstance(exc, ConditionFailed):
        return "condition_failed"
    cause = exc.__cause__ if isinstance(exc, Unavailable) else exc
    if isinstance(cause, PynamoDBException):
        return dynamodb_error_kind(cause.cause_response_code)
    return None


def race_retries(what: str, tries: int = MAX_RACE_RETRIES) -> Iterator[int]:
    """The attempts of a read-modify-write; raises Conflict (409) once every one lost a race.

    `for _ in race_retries("instance x"):` read, decide, write; `return` on success and
    `continue` when a concurrent writer got there first.
    """
    yield from range(tries)
    raise Conflict(f"{what} kept changing; retry")


# ------------------------------------------------------------- pagination

_NOT_A_CURSOR = ("invalid pagination cursor", {"cursor": ["Not a cursor Atlas issued."]})
_OTHER_LISTING = (
    "cursor belongs to another listing",
    {"cursor": ["Not a cursor of this listing."]},
)


@dataclass(frozen=True)
class CursorKey:
    """The key attributes a listing's cursor carries (as strings; `numbers` are N in DynamoDB)."""

    names: tuple[str, ...]
    numbers: frozenset[str] = frozenset()

    def encode(self, item: Model) -> str:
        """The cursor of the listing page that ends with `item`."""
        key = {}
        for name in self.names:
            value = getattr(item, name)
            key[name] = {"S": str(int(value)) if name in self.numbers else str(value)}
        raw = json.dumps(key, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, cursor: str | None, **listing: str) -> dict[str, Any] | None:
        """The start key of a cursor made by encode(); 422 unless it is one of this listing.

        `listing` names the attributes the cursor must hold these values of (its partition).
        """
        if not cursor:
            return None
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise ValidationFailed(*_NOT_A_CURSOR) from None
        if not isinstance(key, dict) or set(key) != set(self.names):
            raise ValidationFailed(*_NOT_A_CURSOR)
        for value in key.values():
            if not (
                isinstance(value, dict)
                and set(value) == {"S"}
                and isinstance(value["S"], str)
                and value["S"]
            ):
                raise ValidationFailed(*_NOT_A_CURSOR)
        for name, wanted in listing.items():
            if key[name]["S"] != wanted:
                raise ValidationFailed(*_OTHER_LISTING)
        for name in self.numbers:
            text = key[name]["S"]
            if not (text.isascii() and text.isdigit() and len(text) <= 15):
                raise ValidationFailed(*_OTHER_LISTING)
            key[name] = {"N": str(int(text))}
        return key


def paginate(
    fetch: Callable[..., Iterable[M]],
    *,
    limit: int,
    start: Mapping[str, Any] | None,
    key: CursorKey,
    convert: Callable[[M], Any],
    action: str,
) -> Page:
    """One page of a listing: `limit` items after `start`, and a cursor only if more follow.

    `fetch(limit=, page_size=, last_evaluated_key=)` is a pynamodb query or scan; it is asked
    for one item more than the page holds, so a page that ends the listing has no cursor.
    """
    with operation(action):
        items = list(fetch(limit=limit + 1, page_size=limit + 1, last_evaluated_key=start))
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = key.encode(items[-1])
    return Page([convert(m) for m in items], next_cursor)


# ------------------------------------------------------------ transactions

# pynamodb's TransactWrite sends condition checks, then deletes, then puts, then updates, and
# DynamoDB reports cancellation reasons in that order (pinned by a test).
_WIRE_ORDER = ("check", "delete", "put", "update")


class Transaction:
    """The items of one TransactWriteItems, each named by a role unique in the transaction.

    Not thread-safe: one request builds it and `Store.transaction` commits it.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._ops: list[Callable[[TransactWrite], None]] = []
        self._roles: dict[str, list[str]] = {kind: [] for kind in _WIRE_ORDER}

    def _add(self, kind: str, role: str, op: Callable[[TransactWrite], None]) -> None:
        if role in self.roles():
            raise ValueError(f"transaction role {role!r} is used twice")
        self._roles[kind].append(role)
        self._ops.append(op)

    def check(
        self,
        role: str,
        model: type[Model],
        hash_key: Any,
        range_key: Any = None,
        *,
        condition: Condition,
    ) -> None:
        """Require `condition` of an item this transaction does not write."""
        self._add(
            "check",
            role,
            lambda tx: tx.condition_check(model, hash_key, range_key, condition=condition),
        )

    def save(self, role: str, item: Model, *, condition: Condition | None = None) -> None:
        """Put `item` (all of it), if `condition` holds."""
        self._add("put", role, lambda tx: tx.save(item, condition=condition))

    def update(
        self,
        role: str,
        item: Model,
        actions: list[Action],
        *,
        condition: Condition | None = None,
    ) -> None:
        """Apply `actions` to the item with `item`'s key, if `condition` holds."""
        self._add("update", role, lambda tx: tx.update(item, actions, condition=condition))

    def delete(self, role: str, item: Model, *, condition: Condition | None = None) -> None:
        """Delete the item with `item`'s key, if `condition` holds."""
        self._add("delete", role, lambda tx: tx.delete(item, condition=condition))

    def roles(self) -> list[str]:
        """The roles, in the order DynamoDB receives the items and reports their reasons."""
        return [role for kind in _WIRE_ORDER for role in self._roles[kind]]

    def commit(self, action: str) -> None:
        """Write every item or none; TransactionCanceled names the items whose condition failed."""
        try:
            with TransactWrite(connection=self._connection) as tx:
                for op in self._ops:
                    op(tx)
        except TransactWriteError as exc:
            if exc.cause_response_code == "TransactionCanceledException":
                codes = [r.code if r is not None else None for r in exc.cancellation_reasons]
                reasons = dict(zip(self.roles(), codes, strict=True))
                if CONDITION_FAILED in reasons.values():
                    raise TransactionCanceled(action, reasons) from None
                if TRANSACTION_CONFLICT in reasons.values():
                    log.info("dynamodb transaction conflict while %s", action)
                    raise TransactionConflict(action) from exc
            log.warning("dynamodb transaction failed while %s: %s", action, exc)
            raise Unavailable(
                f"DynamoDB did not complete {action}; retry the request (it is safe to repeat)"
            ) from exc
        except PynamoDBException as exc:
            log.warning("dynamodb error while %s: %s", action, exc.__class__.__name__)
            raise Unavailable(
                f"DynamoDB did not complete {action}; retry the request (it is safe to repeat)"
            ) from exc


# ------------------------------------------------------------------- scans


@dataclass(frozen=True)
class ScanPolicy:
    """How full-table scans read: bounded pages, each retried where it stopped, in segments.

    A page asks for at most `page_size` items (DynamoDB also stops at 1 MB). A page that fails
    (a read timeout on a busy store, throttling) is retried up to `attempts` times from the
    key where it stopped, with jittered exponential backoff from `first_backoff_s` up to
    `max_backoff_s`, each time asking for half as many items (down to `min_page_size`), so a
    page too slow to answer in time still gets through; successful pages grow back.
    `segments` > 1 reads that many DynamoDB parallel-scan segments at once (one thread each):
    worth it on DynamoDB proper for a large realm, not on moto (it serves one request at a
    time and hashes every item of the table for every segment's page).
    """

    page_size: int = 500
    min_page_size: int = 25
    segments: int = 1
    attempts: int = 8
    first_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    @classmethod
    def of(cls, settings: ScanSettings) -> ScanPolicy:
        """The policy Atlas settings name (ATLAS_SCAN_PAGE_SIZE, ATLAS_SCAN_SEGMENTS)."""
        return cls(page_size=settings.scan_page_size, segments=settings.scan_segments)


class ScanSettings(Protocol):
    """What `ScanPolicy.of` reads of Atlas settings."""

    scan_page_size: int
    scan_segments: int


_DONE = object()


def _hash_key_name(model: type[Model]) -> str:
    return next(name for name, attr in model.get_attributes().items() if attr.is_hash_key)


class Store:
    """One realm's tables: reads, conditional writes, transactions and scans.

    Thread-safe: pynamodb keeps a client per thread, the counters are locked, and `metrics`
    must be thread-safe (every implementation in Atlas is).
    """

    def __init__(
        self,
        models: Models,
        clock: Clock = utcnow,
        scan: ScanPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        metrics: StoreMetrics | None = None,
    ) -> None:
        self.models = models
        self.clock = clock
        self.scan_policy = scan or ScanPolicy()
        self.metrics: StoreMetrics = metrics or NullStoreMetrics()
        self._sleep = sleep
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {"scan_pages": 0, "scan_page_retries": 0}

    def now(self) -> str:
        """The current time as stored in records."""
        return timestamp(self.clock())

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    # ---------------------------------------------------------- metrics

    @contextmanager
    def timed(self, action: str) -> Iterator[None]:
        """Report the DynamoDB work of the block to `metrics`: how long it took, and how it
        failed when it raised a DynamoDB failure (raw, or as ConditionFailed,
        TransactionCanceled or Unavailable). A block that fails for another reason (the
        caller's own checks) is not a DynamoDB call's outcome and is not reported."""
        t0 = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            kind = _failure_kind(exc)
            if kind is not None:
                self.metrics.dynamodb_call(action, time.perf_counter() - t0, kind)
            raise
        self.metrics.dynamodb_call(action, time.perf_counter() - t0, None)

    @contextmanager
    def operation(self, action: str) -> Iterator[None]:
        """`operation(action)`, timed and reported to `metrics`."""
        with self.timed(action), operation(action):
            yield

    def paginate(
        self,
        fetch: Callable[..., Iterable[M]],
        *,
        limit: int,
        start: Mapping[str, Any] | None,
        key: CursorKey,
        convert: Callable[[M], Any],
        action: str,
    ) -> Page:
        """`paginate(...)`, its DynamoDB read timed and reported to `metrics`."""
        with self.timed(action):
            return paginate(
                fetch, limit=limit, start=start, key=key, convert=convert, action=action
            )

    # ------------------------------------------------------------ items

    def get(self, model: type[M], hash_key: Any, range_key: Any = None, *, action: str) -> M | None:
        """The item as stored now (a consistent read), or None."""
        with self.timed(action), operation(action):
            try:
                return model.get(hash_key, range_key, consistent_read=True)
            except DoesNotExist:
                return None

    def put(self, item: Model, *, action: str, condition: Condition | None = None) -> None:
        """Put the whole item if `condition` holds; ConditionFailed otherwise."""
        with self.timed(action), _conditional(action):
            item.save(condition=condition)

    def update(
        self,
        item: M,
        actions: list[Action],
        *,
        action: str,
        condition: Condition | None = None,
    ) -> M:
        """Apply `actions` to the item with `item`'s key if `condition` holds; `item` becomes
        the stored item. ConditionFailed otherwise."""
        with self.timed(action), _conditional(action):
            item.update(actions=actions, condition=condition)
        return item

    def delete(self, item: Model, *, action: str, condition: Condition | None = None) -> None:
        """Delete the item with `item`'s key if `condition` holds; ConditionFailed otherwise."""
        with self.timed(action), _conditional(action):
            item.delete(condition=condition)

    @contextmanager
    def transaction(self, action: str) -> Iterator[Transaction]:
        """Collect a transaction's items in the block; commit them when it ends without error."""
        tx = Transaction(self.models.connection)
        yield tx
        with self.timed(action):
            tx.commit(action)

    # ------------------------------------------------------------ scans

    def scan(self, model: type[M], action: str) -> Iterator[M]:
        """Every item of a table (consistent reads), streamed page by page.

        The items of one partition key arrive together, one run after another (a run split
        by a page boundary is held back until it is complete). With several segments, runs
        of different segments interleave; DynamoDB puts each partition key in one segment.
        A page that fails is retried where it stopped; Unavailable once its retries are spent.
        """
        if self.scan_policy.segments <= 1:
            for items in self._segment(model, None, action):
                yield from items
            return
        yield from self._parallel(model, action)

    def _segment(self, model: type[M], segment: int | None, action: str) -> Iterator[list[M]]:
        """The pages of one segment (or of the whole table when `segment` is None)."""
        policy = self.scan_policy
        total = policy.segments if segment is not None else None
        start: dict[str, Any] | None = None
        size = policy.page_size
        while True:
            items, start, size = self._page(model, start, size, segment, total, action)
            yield items
            if start is None:
                return
            size = min(policy.page_size, size * 2)

    def _page(
        self,
        model: type[M],
        start: dict[str, Any] | None,
        size: int,
        segment: int | None,
        total: int | None,
        action: str,
    ) -> tuple[list[M], dict[str, Any] | None, int]:
        """One page from `start` (items, the key to go on from, the page size that worked)."""
        policy = self.scan_policy
        asked = [size]
        retries = [0]

        def failed(state: RetryCallState) -> None:
            self._count("scan_page_retries")
            retries[0] += 1
            exc = state.outcome.exception() if state.outcome else None
            asked[0] = max(policy.min_page_size, asked[0] // 2)
            log.warning(
                "a scan page failed while %s (%s, attempt %d); retrying where it stopped, "
                "%d items a page",
                action,
                exc.__class__.__name__,
                state.attempt_number,
                asked[0],
            )

        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait_exponential(multiplier=policy.first_backoff_s, max=policy.max_backoff_s)
            + wait_random(0, policy.first_backoff_s),
            retry=retry_if_exception_type(PynamoDBException),
            sleep=self._sleep,
            before_sleep=failed,
            reraise=True,
        )
        with self.timed(action), operation(action):
            for attempt in retrying:
                with attempt:
                    pages = model.scan(
                        segment=segment,
                        total_segments=total,
                        page_size=asked[0],
                        last_evaluated_key=start,
                        consistent_read=True,
                    ).page_iter
                    raw = next(pages)
        self._count("scan_pages")
        self.metrics.scan_page(retries[0])
        items = [model.from_raw_data(data) for data in raw.get("Items", [])]
        return items, pages.last_evaluated_key, asked[0]

    def _parallel(self, model: type[M], action: str) -> Iterator[M]:
        segments = self.scan_policy.segments
        hash_key = _hash_key_name(model)
        out: queue.Queue[Any] = queue.Queue(maxsize=2 * segments)
        stop = threading.Event()

        def post(message: Any) -> bool:
            while not stop.is_set():
                try:
                    out.put(message, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read(segment: int) -> None:
            try:
                held: list[M] = []
                for items in self._segment(model, segment, action):
                    if not items:
                        continue
                    run = held + items
                    last = getattr(run[-1], hash_key)
                    cut = len(run)
                    while cut and getattr(run[cut - 1], hash_key) == last:
                        cut -= 1
                    # The last partition key of the page may go on in the next page: hold it.
                    complete, held = run[:cut], run[cut:]
                    if complete and not post(complete):
                        return
                if (not held or post(held)) and post(_DONE):
                    return
            except BaseException as exc:  # handed to the consumer, which raises it
                post(exc)

        threads = [
            threading.Thread(target=read, args=(s,), name=f"atlas-scan-{s}", daemon=True)
            for s in range(segments)
        ]
        for t in threads:
            t.start()
        try:
            running = segments
            while running:
                message = out.get()
                if message is _DONE:
                    running -= 1
                elif isinstance(message, BaseException):
                    raise message
                else:
                    yield from message
        finally:
            stop.set()  # a consumer that stops early (or an error) ends every reader
