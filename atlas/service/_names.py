"""Service-name rule, the same rule and message as the API's (a private copy for now).

TODO(atlas.contract): import the rule and its message from `atlas.contract` once it is on main.
`atlas.registry.validation` holds them today, but importing it runs `atlas/registry/__init__`,
which imports pynamodb, and `atlas.service` must ship without it. `tests/service` checks that this
copy and `atlas.registry.validation.check_service_name` agree, message included.
"""

from __future__ import annotations

import re

from atlas.errors import ValidationFailed

SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def check_service_name(value: str, field: str = "name") -> str:
    """Return the name if valid, else raise the API's ValidationFailed naming the field."""
    if not SERVICE_NAME_RE.fullmatch(value):
        raise ValidationFailed(
            f"invalid service name {value[:80]!r}",
            {field: [f"Must match {SERVICE_NAME_RE.pattern}."]},
        )
    return value


def python_package(service: str) -> str:
    """The Python package name of a service (`my-svc` → `my_svc`)."""
    return service.replace("-", "_")
