"""Atlas smart client: ``requests`` with ``service://name/path`` URLs resolved by the local sidecar.

Change ``import requests`` to ``from atlas import client as requests`` (or use
``atlas.client.Session``) and call ``service://identity/teams``: the request
goes to the sidecar (``ATLAS_SIDECAR_URL``, default http://127.0.0.1:4000)
with ``Atlas-Service: identity``. Idempotent calls are retried safely, every
call carries a request id, and ``Session.map`` / ``gather`` run calls in parallel.
"""

from requests import RequestException, Response

from atlas.client.adapters import (
    DEFAULT_SERVICE_HEADER,
    DEFAULT_SIDECAR_URL,
    DEFAULT_TIMEOUT,
    RequestIdAdapter,
    ServiceAdapter,
    parse_service_url,
)
from atlas.client.errors import InvalidServiceName, InvalidServiceURL
from atlas.client.parallel import gather
from atlas.client.request_id import (
    DEFAULT_HEADER as DEFAULT_REQUEST_ID_HEADER,
)
from atlas.client.request_id import (
    current_request_id,
    new_request_id,
    request_id,
)
from atlas.client.retry import IDEMPOTENT_METHODS, RETRY_STATUSES, AtlasRetry
from atlas.client.session import (
    Session,
    delete,
    get,
    head,
    options,
    patch,
    post,
    put,
    request,
)

__all__ = [
    "DEFAULT_REQUEST_ID_HEADER",
    "DEFAULT_SERVICE_HEADER",
    "DEFAULT_SIDECAR_URL",
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "AtlasRetry",
    "InvalidServiceName",
    "InvalidServiceURL",
    "RequestException",
    "RequestIdAdapter",
    "Response",
    "ServiceAdapter",
    "Session",
    "current_request_id",
    "delete",
    "gather",
    "get",
    "head",
    "new_request_id",
    "options",
    "parse_service_url",
    "patch",
    "post",
    "put",
    "request",
    "request_id",
]
