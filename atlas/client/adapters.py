"""Transport adapters: ``service://`` through the local sidecar, request ids on plain http(s).

Stands in for ``requests.adapters``: its other names (``HTTPAdapter``,
``BaseAdapter``, ``DEFAULT_POOLSIZE``, ...) are answered from requests' module.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
from requests.adapters import HTTPAdapter as HTTPAdapter
from requests.models import PreparedRequest, Response
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from atlas.client._shadow import shadow
from atlas.client.errors import InvalidServiceName, InvalidServiceURL
from atlas.client.request_id import DEFAULT_HEADER as DEFAULT_REQUEST_ID_HEADER
from atlas.client.request_id import outgoing_request_id
from atlas.client.retry import (
    IDEMPOTENT_METHODS,
    NO_RETRY,
    AtlasRetry,
    DeadlineTimeout,
    as_retry,
    timeout_total,
)
from atlas.contract import SERVICE_NAME_RE, is_service_name
from atlas.envvars import CLIENT

SERVICE_SCHEME = "service://"
DEFAULT_SIDECAR_URL: str = CLIENT["ATLAS_SIDECAR_URL"].default
DEFAULT_SERVICE_HEADER: str = CLIENT["ATLAS_SERVICE_HEADER"].default
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
#: (connect, read) seconds for every call whose caller gives none (or ``timeout=None``).
#: 3.05 s lets a connect survive two lost SYNs; ``timeout=(None, None)`` waits forever.
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 30.0)

TimeoutArg = float | tuple[float | None, float | None] | None


@dataclass(frozen=True)
class CallOptions:
    """Per-call retry options given to ``Session.request`` (``retries=``, ``idempotent=``)."""

    retries: Retry | int | bool | None = None
    idempotent: bool | None = None


# Set by Session.request around one call (redirects included); read by ServiceAdapter.send.
call_options: ContextVar[CallOptions | None] = ContextVar("atlas_call_options", default=None)
# The Retry one ServiceAdapter.send chose for the request it is sending (see max_retries).
_sending: ContextVar[tuple[ServiceAdapter, Retry] | None] = ContextVar(
    "atlas_sending_retry", default=None
)


def is_service_url(url: str | bytes | None) -> bool:
    """Return True for a ``service://`` URL."""
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    return isinstance(url, str) and url.lstrip()[: len(SERVICE_SCHEME)].lower() == SERVICE_SCHEME


def parse_service_url(url: str | bytes) -> tuple[str, str]:
    """Split ``service://name/path?query`` into (name, "/path?query"); raise on a bad name."""
    if isinstance(url, bytes):
        url = url.decode("utf-8")
    url = url.strip()
    if not is_service_url(url):
        raise InvalidServiceURL(f"not a service:// URL: {url!r}")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise InvalidServiceURL(f"service URLs take no credentials: {url!r}")
    if ":" in parts.netloc:
        raise InvalidServiceURL(f"service URLs take no port (the sidecar routes by name): {url!r}")
    name = parts.netloc
    if not is_service_name(name):
        raise InvalidServiceName(
            f"invalid service name {name!r} in {url!r}: "
            f"a service name is a DNS label matching {SERVICE_NAME_RE.pattern}"
        )
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return name, target


class RequestIdAdapter(HTTPAdapter):
    """requests' HTTPAdapter that sets the request id header and a default timeout.

    A call without a timeout (requests cannot tell that from ``timeout=None``)
    gets ``timeout``; ``timeout=(None, None)`` still means no timeout at all.
    """

    __attrs__ = [*HTTPAdapter.__attrs__, "request_id_header", "timeout"]

    def __init__(
        self,
        request_id_header: str = DEFAULT_REQUEST_ID_HEADER,
        *,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        self.request_id_header = request_id_header
        self.timeout = timeout
        super().__init__(**kwargs)

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Response:
        """Send like requests' HTTPAdapter, with ``self.timeout`` when the call gives none."""
        effective: Any = self.timeout if timeout is None else timeout
        return super().send(
            request,
            stream=stream,
            timeout=effective,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )

    def stamp(self, request: PreparedRequest) -> None:
        """Give ``request`` a request id header (the bound id, or a new one) unless it has one."""
        if self.request_id_header and self.request_id_header not in request.headers:
            request.headers[self.request_id_header] = outgoing_request_id()

    def add_headers(self, request: PreparedRequest, **kwargs: Any) -> None:
        """requests' hook for adapter-specific headers: the request id."""
        self.stamp(request)


class ServiceAdapter(RequestIdAdapter):
    """Sends ``service://name/path`` to the local sidecar with the service name in a header.

    Mounted on ``service://``. Idempotent methods are retried with an
    ``AtlasRetry``; POST/PATCH only when the call opts in (``idempotent=True``
    or an ``Idempotency-Key`` header). Calls without a timeout get ``timeout``.
    A call that gives a timeout ends within it, retries included: the retry
    budget is cut to connect + read seconds, and each attempt's timeouts to
    what is left of that.
    """

    __attrs__ = [
        *RequestIdAdapter.__attrs__,
        "sidecar_url",
        "service_header",
    ]

    def __init__(
        self,
        sidecar_url: str | None = None,
        *,
        service_header: str | None = None,
        request_id_header: str = DEFAULT_REQUEST_ID_HEADER,
        retries: Retry | int | None = None,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        pool_connections: int = 10,
        pool_maxsize: int = 32,
        pool_block: bool = False,
    ) -> None:
        url = sidecar_url or CLIENT.get("ATLAS_SIDECAR_URL")  # ConfigError names a bad one
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"sidecar URL must be http(s)://host:port, got {url!r}")
        self.sidecar_url = url.rstrip("/")
        self.service_header = service_header or CLIENT.get("ATLAS_SERVICE_HEADER")
        if retries is None:
            retry: Retry = AtlasRetry()
        elif isinstance(retries, Retry):
            retry = retries
        else:
            retry = AtlasRetry(retries)
        super().__init__(
            request_id_header,
            timeout=timeout,
            pool_connections=pool_connections,
            pool_maxsize=pool_maxsize,
            max_retries=retry,
            pool_block=pool_block,
        )

    # HTTPAdapter.send reads self.max_retries; a property lets each call (and
    # each thread) get its own Retry without copying requests' send().
    @property
    def max_retries(self) -> Retry:
        """The Retry for the request being sent on this thread, else the adapter default."""
        sending = _sending.get()
        if sending is not None and sending[0] is self:
            return sending[1]
        return self.default_retry

    @max_retries.setter
    def max_retries(self, value: Retry | int | None) -> None:
        self.default_retry = Retry.from_int(value)

    def retry_for(self, request: PreparedRequest, limit: float | None = None) -> Retry:
        """The Retry for one request: per-call options, method idempotency, opt-ins.

        ``limit`` (seconds) cuts an AtlasRetry's budget for this request.
        """
        options = call_options.get() or CallOptions()
        method = (request.method or "GET").upper()
        if options.idempotent is False:
            return NO_RETRY
        opted_in = bool(options.idempotent) or IDEMPOTENCY_KEY_HEADER in request.headers
        if method not in IDEMPOTENT_METHODS and not opted_in:
            return NO_RETRY
        retry = as_retry(options.retries, self.default_retry)
        if retry is NO_RETRY:
            return retry
        if opted_in:
            if isinstance(retry, AtlasRetry):
                retry = retry.allowing(method)
            elif retry.allowed_methods is not None and method not in retry.allowed_methods:
                retry = retry.new(allowed_methods=frozenset(retry.allowed_methods) | {method})
        if isinstance(retry, AtlasRetry):
            retry = retry.start(limit)
        return retry

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Response:
        """Resolve the service:// URL to the sidecar and send it (retrying as allowed)."""
        assert request.url is not None
        service, target = parse_service_url(request.url)
        self.stamp(request)
        outgoing = request.copy()
        outgoing.url = self.sidecar_url + target
        outgoing.headers[self.service_header] = service
        effective_timeout: Any = self.timeout if timeout is None else timeout
        total = None if timeout is None else timeout_total(timeout)
        retry = self.retry_for(request, limit=total)
        if total is not None and isinstance(retry, AtlasRetry):
            # The caller's timeout bounds the whole call: cut every attempt to it.
            connect, read = _connect_read(effective_timeout)
            effective_timeout = DeadlineTimeout(
                connect, read, deadline=retry.clock() + total, clock=retry.clock
            )
        token = _sending.set((self, retry))
        try:
            # proxies=None: the sidecar is on loopback and must never be proxied.
            response = super().send(
                outgoing,
                stream=stream,
                timeout=effective_timeout,
                verify=verify,
                cert=cert,
                proxies=None,
            )
        except requests.ConnectionError as exc:
            # With retries, urllib3 wraps a read timeout in MaxRetryError and requests
            # turns that into ConnectionError; give callers requests' usual ReadTimeout.
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            if isinstance(reason, ReadTimeoutError):
                raise requests.ReadTimeout(exc.args[0], request=exc.request) from exc
            raise
        finally:
            _sending.reset(token)
        # The caller sees its own URL: redirects and cookies stay per service.
        response.url = request.url if isinstance(request.url, str) else str(request.url)
        response.request = request
        location = response.headers.get("Location")
        if location and response.is_redirect:
            # urljoin does not resolve against service:// URLs, and a backend may
            # build an absolute URL from the sidecar's Host: map both back.
            absolute = urljoin(outgoing.url, location)
            if absolute == self.sidecar_url or absolute.startswith(self.sidecar_url + "/"):
                path = absolute[len(self.sidecar_url) :] or "/"
                response.headers["Location"] = f"{SERVICE_SCHEME}{service}{path}"
        return response


def _connect_read(timeout: Any) -> tuple[Any, Any]:
    """(connect, read) of a requests ``timeout`` (a number, a pair or a urllib3 Timeout)."""
    if isinstance(timeout, Timeout):
        return timeout._connect, timeout._read
    if isinstance(timeout, tuple):
        connect, read = timeout
        return connect, read
    return timeout, timeout


if TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        """For type checkers: requests.adapters' other names are answered at run time."""


shadow(__name__, requests.adapters)
