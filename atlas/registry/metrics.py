"""What the registry reports about its DynamoDB calls and its audit trail (interfaces + null).

Warehouse's pattern: the registry depends on these small interfaces only, never on a metrics
library; `atlas.metrics.instruments` implements them with Prometheus and the app injects that
implementation; the null ones below are the defaults (tools, tests, the migrator).
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "AuditMetrics",
    "NullAuditMetrics",
    "NullStoreMetrics",
    "StoreMetrics",
    "dynamodb_error_kind",
]

# DynamoDB error codes worth a label of their own; any other code is "other", and a call
# that got no answer at all (connect or read timeout, refused) is "no_response".
_KINDS = {
    "ConditionalCheckFailedException": "condition_failed",
    "TransactionCanceledException": "transaction_canceled",
    "TransactionConflictException": "transaction_conflict",
    "ProvisionedThroughputExceededException": "throttled",
    "ThrottlingException": "throttled",
    "RequestLimitExceeded": "throttled",
    "InternalServerError": "server_error",
    "ServiceUnavailable": "server_error",
    "ResourceNotFoundException": "table_not_found",
    "ValidationException": "validation",
}


def dynamodb_error_kind(code: str | None) -> str:
    """The bounded label of a DynamoDB error code (None: the call got no answer)."""
    if code is None:
        return "no_response"
    return _KINDS.get(code, "other")


class StoreMetrics(Protocol):
    """Receives one observation per DynamoDB call of the store. Implementations are thread-safe
    and never raise."""

    def dynamodb_call(self, action: str, seconds: float, error: str | None) -> None:
        """One store action (`action` is one of the code's fixed phrases) took `seconds`;
        `error` is `dynamodb_error_kind(...)` of its failure, None when it succeeded."""

    def scan_page(self, retries: int) -> None:
        """A page of a full-table scan was read after `retries` failed attempts."""

    def swallowed(self, where: str) -> None:
        """An error was caught and logged where raising would fail a write already stored
        (`where`: one of the code's fixed names, such as `mirror_put_service`)."""


class NullStoreMetrics:
    """Reports nothing."""

    def dynamodb_call(self, action: str, seconds: float, error: str | None) -> None:
        """Do nothing."""

    def scan_page(self, retries: int) -> None:
        """Do nothing."""

    def swallowed(self, where: str) -> None:
        """Do nothing."""


class AuditMetrics(Protocol):
    """Receives the audit trail's record counts. Implementations are thread-safe and never
    raise."""

    def queued(self) -> None:
        """A record was queued for writing."""

    def dropped(self) -> None:
        """A record was dropped: the queue was full."""

    def written(self, n: int) -> None:
        """`n` queued records were written."""

    def lost(self, n: int) -> None:
        """`n` queued records could not be written and were given up on."""


class NullAuditMetrics:
    """Reports nothing."""

    def queued(self) -> None:
        """Do nothing."""

    def dropped(self) -> None:
        """Do nothing."""

    def written(self, n: int) -> None:
        """Do nothing."""

    def lost(self, n: int) -> None:
        """Do nothing."""
