"""Operators' tools over the Atlas HTTP API: the admin commands of `atlas` (no Flask, no pynamodb)."""

from atlas.admin.api import AdminApi, ApiError, Unreachable

__all__ = ["AdminApi", "ApiError", "Unreachable"]
