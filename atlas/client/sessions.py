"""``Session``: a requests.Session with ``service://`` mounted; stands in for ``requests.sessions``.

Every other name of ``requests.sessions`` (``SessionRedirectMixin``,
``merge_setting``, ``get_netrc_auth``, ...) is answered from requests' module,
and setting one sets it there (see ``atlas.client._shadow``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Union

import requests
import requests.sessions
from requests.models import PreparedRequest, Request, Response
from requests.sessions import merge_setting
from urllib3.util.retry import Retry

from atlas.client._shadow import shadow
from atlas.client.adapters import (
    DEFAULT_TIMEOUT,
    SERVICE_SCHEME,
    CallOptions,
    RequestIdAdapter,
    ServiceAdapter,
    TimeoutArg,
    call_options,
    is_service_url,
    parse_service_url,
)
from atlas.client.parallel import DEFAULT_CONCURRENCY, gather
from atlas.envvars import CLIENT

if TYPE_CHECKING:
    from requests.sessions import _Settings  # a TypedDict in types-requests only

#: Per-call ``retries=``: a Retry, a number of retries, False/0 for none, None for the default.
RetriesArg = Retry | int | bool | None
#: One entry of ``Session.map``: a Request, (method, url) or (method, url, kwargs).
Call = Union[Request, tuple[str, str], tuple[str, str, Mapping[str, Any]]]  # noqa: UP007
#: Connections kept per host and scheme: enough for Session.map at DEFAULT_CONCURRENCY and
#: a little more; a call beyond it opens a connection that is closed after use.
DEFAULT_POOL_MAXSIZE = 64

_executor_lock = threading.Lock()


class Session(requests.Session):
    """A requests.Session that also speaks ``service://name/path`` through the local sidecar.

    Plain http(s) URLs behave as in requests, plus a request id header and the
    default ``timeout`` (for every call that gives none). ``request()`` and the
    verb methods also accept ``retries=`` (a Retry, an int, or False) and
    ``idempotent=`` (True lets POST/PATCH be retried, False turns retries off)
    for service:// calls. Thread-safe as requests.Session is (calls from many
    threads at once are fine; changing headers/adapters meanwhile is not).
    """

    __attrs__ = [*requests.Session.__attrs__, "concurrency"]

    def __init__(
        self,
        *,
        sidecar_url: str | None = None,
        service_header: str | None = None,
        request_id_header: str | None = None,
        retries: Retry | int | None = None,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        pool_maxsize: int = DEFAULT_POOL_MAXSIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        super().__init__()
        header = request_id_header or CLIENT.get("ATLAS_REQUEST_ID_HEADER")
        self.concurrency = concurrency
        self._executor: tuple[ThreadPoolExecutor, int] | None = None
        for prefix in ("https://", "http://"):
            self.mount(prefix, RequestIdAdapter(header, timeout=timeout, pool_maxsize=pool_maxsize))
        self.mount(
            SERVICE_SCHEME,
            ServiceAdapter(
                sidecar_url,
                service_header=service_header,
                request_id_header=header,
                retries=retries,
                timeout=timeout,
                pool_maxsize=pool_maxsize,
            ),
        )

    @property
    def service_adapter(self) -> ServiceAdapter:
        """The adapter mounted on ``service://``."""
        adapter = self.get_adapter(SERVICE_SCHEME)
        assert isinstance(adapter, ServiceAdapter)
        return adapter

    def request(
        self,
        method: str | bytes,
        url: str | bytes,
        *args: Any,
        retries: RetriesArg = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Response:
        """Like requests.Session.request, plus per-call ``retries=`` and ``idempotent=``."""
        token = call_options.set(CallOptions(retries, idempotent))
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            call_options.reset(token)

    # The verb methods mirror requests.Session's, typed to accept the per-call options.
    def get(
        self,
        url: str | bytes,
        *,
        retries: RetriesArg = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Response:
        """Send a GET (retried on service:// unless turned off)."""
        kwargs.setdefault("allow_redirects", True)
        return self.request("GET", url, retries=retries, idempotent=idempotent, **kwargs)

    def options(
        self,
        url: str | bytes,
        *,
        retries: RetriesArg = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Response:
        """Send an OPTIONS request (retried on service:// unless turned off)."""
        kwargs.setdefault("allow_redirects", True)
        return self.request("OPTIONS", url, retries=retries, idempotent=idempotent, **kwargs)

    def head(
        self,
        url: str | bytes,
        *,
        retries: RetriesArg = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Response:
        """Send a HEAD request, not following redirects by default (as requests does)."""
        kwargs.setdefault("allow_redirects", False)
        return self.request("HEAD", url, retries=retries, idempotent=idempotent, **kwargs)

    def post(
        self,
        url: str | bytes,
        data: Any = None,
        json: Any = None,
        *,
        retries: RetriesArg = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Response:
        """Send a POST (never retried unless ``idempotent=True`` or an Idempotency-Key)."""
        return self.request(
            "POST", url, data=data, json=json, retries=retries, idempotent=idempotent, **kwargs
        )

    def put(
        self,
        url: str | bytes,
        data: Any = None,
        *,
        retries: RetriesArg = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Response:
        """Send a PUT (retried on service:// unless turned off)."""
        return self.request("PUT", url, data=data, retries=retries, idempotent=idempotent, **kwargs)

    def patch(
        self,
        url: str | bytes,
        data: Any = None,
        *,
        retries: RetriesArg = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Response:
        """Send a PATCH (never retried unless ``idempotent=True`` or an Idempotency-Key)."""
        return self.request(
            "PATCH", url, data=data, retries=retries, idempotent=idempotent, **kwargs
        )

    def delete(
        self,
        url: str | bytes,
        *,
        retries: RetriesArg = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> Response:
        """Send a DELETE (retried on service:// unless turned off)."""
        return self.request("DELETE", url, retries=retries, idempotent=idempotent, **kwargs)

    def prepare_request(self, request: Request) -> PreparedRequest:
        """Prepare like requests, encoding ``params`` and the path of service:// URLs too."""
        if not is_service_url(request.url):
            return super().prepare_request(request)
        # requests leaves non-http URLs untouched (and drops params), so prepare
        # the URL as http:// and put the scheme back afterwards.
        url = request.url.decode() if isinstance(request.url, bytes) else str(request.url)
        url = url.strip()
        parse_service_url(url)  # a bad service name fails here, before any I/O
        as_http = "http://" + url[len(SERVICE_SCHEME) :]
        original = request.url
        request.url = as_http
        try:
            prepared = super().prepare_request(request)
        finally:
            request.url = original
        assert prepared.url is not None and prepared.url.startswith("http://")
        prepared.url = SERVICE_SCHEME + prepared.url[len("http://") :]
        return prepared

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        """Like requests, but without the proxy scan of os.environ for service:// URLs."""
        if not is_service_url(url):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        # The sidecar is on loopback and never proxied (ServiceAdapter drops
        # proxies), and the scan costs as much as HAProxy's hop on every call.
        if self.trust_env and verify in (True, None):
            verify = (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or verify
            )
        return {
            "proxies": {},
            "stream": merge_setting(stream, self.stream),
            "verify": merge_setting(verify, self.verify),
            "cert": merge_setting(cert, self.cert),
        }

    def map(
        self, calls: Iterable[Call], *, concurrency: int | None = None
    ) -> list[Response | Exception]:
        """Send many requests at once; return each Response or raised exception, in order.

        At most ``concurrency`` (default ``self.concurrency``) are in flight; the
        worker threads are started once per session and reused. Thread-safe.
        """
        thunks = [self._thunk(call) for call in calls]
        limit = concurrency or self.concurrency
        executor = self._workers(min(limit, len(thunks))) if len(thunks) > 1 else None
        return gather(*thunks, concurrency=limit, executor=executor)

    def _workers(self, size: int) -> ThreadPoolExecutor:
        """This session's worker threads, at least ``size`` of them (grown, never shrunk)."""
        with _executor_lock:
            current: tuple[ThreadPoolExecutor, int] | None = getattr(self, "_executor", None)
            if current is not None and current[1] >= size:
                return current[0]
            executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="atlas-client")
            self._executor = (executor, size)
        if current is not None:
            current[0].shutdown(wait=False)  # its threads end once their calls are done
        return executor

    def close(self) -> None:
        """Close the adapters' connections and stop the map worker threads."""
        with _executor_lock:
            current: tuple[ThreadPoolExecutor, int] | None = getattr(self, "_executor", None)
            self._executor = None
        if current is not None:
            current[0].shutdown(wait=False)
        super().close()

    def _thunk(self, call: Call) -> Callable[[], Response]:
        if isinstance(call, Request):
            req = call
            return lambda: self.request(
                req.method,
                req.url,
                params=req.params,
                data=req.data,
                headers=req.headers,
                cookies=req.cookies,
                files=req.files,
                auth=req.auth,
                hooks=req.hooks,
                json=req.json,
            )
        method, url, *rest = call
        kwargs = dict(rest[0]) if rest else {}
        return lambda: self.request(method, url, **kwargs)


def session() -> Session:
    """Return a new atlas Session (like ``requests.session()``)."""
    return Session()


if TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        """For type checkers: requests.sessions' other names are answered at run time."""


shadow(__name__, requests.sessions)
