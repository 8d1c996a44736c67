"""Exceptions raised by the smart client."""

from __future__ import annotations

from requests.exceptions import InvalidURL


class InvalidServiceName(InvalidURL):
    """A service:// URL whose service name is not a DNS label (also a ValueError)."""


class InvalidServiceURL(InvalidURL):
    """A service:// URL that is malformed in another way (port, credentials, no name)."""
