"""Atlas smart client: ``requests`` with ``service://name/path`` URLs resolved by the local sidecar.

Change ``import requests`` to ``from atlas import client as requests`` (or use
``atlas.client.Session``) and call ``service://identity/teams``: the request
goes to the sidecar (``ATLAS_SIDECAR_URL``, default http://127.0.0.1:4000)
with ``Atlas-Service: identity``. Idempotent calls are retried safely, every
call carries a request id and a default timeout, and ``Session.map`` /
``gather`` run calls in parallel.

This package answers every public name of the installed ``requests``
(``exceptions``, ``HTTPError``, ``codes``, ``Request``, ``auth``, ``utils``,
``__version__``, ...): the names are copied from requests at import, so they
are requests' own objects. ``Session``, ``session()``, the verb functions and
the modules ``sessions``, ``adapters`` and ``api`` are atlas' (they stand in
for requests' modules of the same names).
"""

from typing import TYPE_CHECKING

import requests as _requests

from atlas.client import adapters, api, sessions
from atlas.client.adapters import (
    DEFAULT_SERVICE_HEADER,
    DEFAULT_SIDECAR_URL,
    DEFAULT_TIMEOUT,
    RequestIdAdapter,
    ServiceAdapter,
    parse_service_url,
)
from atlas.client.api import delete, get, head, options, patch, post, put, request
from atlas.client.errors import InvalidServiceName, InvalidServiceURL
from atlas.client.parallel import gather
from atlas.client.request_id import DEFAULT_HEADER as DEFAULT_REQUEST_ID_HEADER
from atlas.client.request_id import current_request_id, new_request_id, request_id
from atlas.client.retry import IDEMPOTENT_METHODS, RETRY_STATUSES, AtlasRetry
from atlas.client.sessions import Session, session

if TYPE_CHECKING:
    # What the loop below copies at run time, spelled out for type checkers.
    from requests import (
        ConnectionError as ConnectionError,
    )
    from requests import (
        ConnectTimeout as ConnectTimeout,
    )
    from requests import (
        HTTPError as HTTPError,
    )
    from requests import (
        JSONDecodeError as JSONDecodeError,
    )
    from requests import (
        PreparedRequest as PreparedRequest,
    )
    from requests import (
        ReadTimeout as ReadTimeout,
    )
    from requests import (
        Request as Request,
    )
    from requests import (
        RequestException as RequestException,
    )
    from requests import (
        Response as Response,
    )
    from requests import (
        Timeout as Timeout,
    )
    from requests import (
        TooManyRedirects as TooManyRedirects,
    )
    from requests import (
        URLRequired as URLRequired,
    )
    from requests import (
        __version__ as __version__,
    )
    from requests import (
        auth as auth,
    )
    from requests import (
        codes as codes,
    )
    from requests import (
        compat as compat,
    )
    from requests import (
        cookies as cookies,
    )
    from requests import (
        exceptions as exceptions,
    )
    from requests import (
        hooks as hooks,
    )
    from requests import (
        models as models,
    )
    from requests import (
        packages as packages,
    )
    from requests import (
        status_codes as status_codes,
    )
    from requests import (
        structures as structures,
    )
    from requests import (
        utils as utils,
    )

# atlas' own names; requests' public names are added below, from requests itself.
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
    "RequestIdAdapter",
    "ServiceAdapter",
    "Session",
    "adapters",
    "api",
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
    "session",
    "sessions",
]


def requests_names() -> list[str]:
    """The names of the installed requests that atlas.client answers: public ones and metadata."""
    metadata = [n for n in vars(_requests) if n.startswith("__") and n.endswith("__")]
    own = {"__builtins__", "__cached__", "__doc__", "__file__", "__loader__", "__name__"}
    own |= {"__package__", "__path__", "__spec__", "__all__"}
    public = [n for n in vars(_requests) if not n.startswith("_")]
    return sorted(public + [n for n in metadata if n not in own])


def _copy_requests_namespace() -> None:
    namespace = globals()
    for name in requests_names():
        # atlas' Session, session(), verbs and shadowing modules stay; the rest is requests'.
        namespace.setdefault(name, getattr(_requests, name))


_copy_requests_namespace()
__all__ += [name for name in getattr(_requests, "__all__", ()) if name not in __all__]
