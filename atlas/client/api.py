"""requests-style module functions (``get``, ``post``, ...); stands in for ``requests.api``.

Each call uses a fresh ``atlas.client.Session`` and closes it, as requests does.
"""

from __future__ import annotations

from typing import Any

import requests.api
from requests.models import Response

from atlas.client._shadow import shadow
from atlas.client.sessions import Session


def request(method: str, url: str, **kwargs: Any) -> Response:
    """Send one request with a fresh Session (like ``requests.request``)."""
    with Session() as session:
        return session.request(method=method, url=url, **kwargs)


def get(url: str, params: Any = None, **kwargs: Any) -> Response:
    """Send a GET request (like ``requests.get``)."""
    return request("get", url, params=params, **kwargs)


def options(url: str, **kwargs: Any) -> Response:
    """Send an OPTIONS request (like ``requests.options``)."""
    return request("options", url, **kwargs)


def head(url: str, **kwargs: Any) -> Response:
    """Send a HEAD request, not following redirects by default (like ``requests.head``)."""
    kwargs.setdefault("allow_redirects", False)
    return request("head", url, **kwargs)


def post(url: str, data: Any = None, json: Any = None, **kwargs: Any) -> Response:
    """Send a POST request (like ``requests.post``); never retried unless opted in."""
    return request("post", url, data=data, json=json, **kwargs)


def put(url: str, data: Any = None, **kwargs: Any) -> Response:
    """Send a PUT request (like ``requests.put``)."""
    return request("put", url, data=data, **kwargs)


def patch(url: str, data: Any = None, **kwargs: Any) -> Response:
    """Send a PATCH request (like ``requests.patch``); never retried unless opted in."""
    return request("patch", url, data=data, **kwargs)


def delete(url: str, **kwargs: Any) -> Response:
    """Send a DELETE request (like ``requests.delete``)."""
    return request("delete", url, **kwargs)


shadow(__name__, requests.api)
