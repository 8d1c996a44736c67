"""Atlas with its store replaced by fixed in-memory answers: isolates the HTTP/auth/schema layer."""

from __future__ import annotations

import os
from typing import Any

from atlas.app import create_app
from atlas.config import Settings
from atlas.registry import Instance, Page, Registry, Service, build_models

T = "2026-01-01T00:00:00.000Z"
INSTANCES = [
    Instance("catalog", f"10.0.0.{i}", 8080, True, 100, None, {}, None, 1, T, T) for i in range(20)
]


class InMemoryRegistry(Registry):
    """Answers the benchmarked reads without DynamoDB."""

    def list_instances(self, service: str, limit: int, cursor: str | None = None) -> Page:
        """The same 20 instances every time."""
        return Page(INSTANCES[:limit], None)

    def get_service(self, name: str) -> Service:
        """A fixed service."""
        return Service(name, "", "", 8080, None, (), 1, T, T)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


settings = Settings(realm="bench", admin_tokens=(os.environ["ATLAS_ADMIN_TOKENS"],))
app = create_app(settings=settings, registry=InMemoryRegistry(build_models("unused-")))
