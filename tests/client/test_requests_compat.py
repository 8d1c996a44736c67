"""requests' own usage patterns, unchanged, through atlas.client (plain http and service://)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from requests.auth import HTTPBasicAuth

import atlas.client
from atlas.client.testing import StaticHAProxy

from .conftest import WSGIServer

pytestmark = pytest.mark.integration


@pytest.fixture(params=["http", "service"])
def base(
    request: pytest.FixtureRequest,
    httpbin: WSGIServer,
    httpbin_sidecar: StaticHAProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The httpbin base URL: straight over http, or service://httpbin through HAProxy."""
    monkeypatch.setenv("ATLAS_SIDECAR_URL", httpbin_sidecar.url)
    yield httpbin.url if request.param == "http" else "service://httpbin"


def test_module_functions_and_json(base: str) -> None:
    r = atlas.client.get(base + "/get", params={"a": "1", "b": ["2", "3"]})
    assert r.status_code == 200 and r.ok
    assert r.json()["args"] == {"a": ["1"], "b": ["2", "3"]}
    assert r.url == base + "/get?a=1&b=2&b=3"
    assert r.headers["content-type"] == r.headers["Content-Type"] == "application/json"
    posted = atlas.client.post(base + "/post", json={"key": [1, 2, {"x": None}]})
    assert posted.json()["json"] == {"key": [1, 2, {"x": None}]}
    form = atlas.client.post(base + "/post", data={"field": "value"})
    assert form.json()["form"] == {"field": "value"}
    files = atlas.client.post(base + "/post", files={"upload": ("a.txt", b"file body")})
    assert files.json()["files"] == {"upload": "file body"}
    assert atlas.client.put(base + "/put", data="x").json()["method"] == "PUT"
    assert atlas.client.patch(base + "/patch", data="x").json()["method"] == "PATCH"
    assert atlas.client.delete(base + "/delete").json()["method"] == "DELETE"
    assert atlas.client.head(base + "/get").text == ""
    assert atlas.client.options(base + "/anything").status_code == 200
    assert atlas.client.request("GET", base + "/get", timeout=5).status_code == 200


def test_session_headers_params_and_cookies_persist(base: str) -> None:
    with atlas.client.Session() as s:
        s.headers.update({"X-Team": "atlas"})
        r = s.get(base + "/cookies/set", params={"flavour": "oat"})
        assert r.json() == {"cookies": {"flavour": "oat"}}
        assert r.history and r.history[0].status_code == 302
        assert s.cookies.get("flavour") == "oat"
        s.params = {"always": "1"}
        again = s.get(base + "/get", cookies={"extra": "yes"})
        assert again.json()["cookies"] == {"flavour": "oat", "extra": "yes"}
        assert again.json()["headers"]["x-team"] == "atlas"
        assert again.json()["args"] == {"always": ["1"]}


def test_auth(base: str) -> None:
    url = base + "/basic-auth/user/secret"
    assert atlas.client.get(url, auth=("user", "secret")).json()["authenticated"] is True
    with atlas.client.Session() as s:
        s.auth = HTTPBasicAuth("user", "secret")
        assert s.get(url).json()["user"] == "user"
        denied = s.get(url, auth=("user", "wrong"))
    assert denied.status_code == 401


def test_raise_for_status(base: str) -> None:
    atlas.client.get(base + "/status/204").raise_for_status()
    for code in (404, 500):
        response = atlas.client.get(base + f"/status/{code}")
        assert not response.ok
        with pytest.raises(requests.HTTPError) as info:
            response.raise_for_status()
        assert info.value.response is response
        assert str(code) in str(info.value)


def test_streaming(base: str) -> None:
    with atlas.client.Session() as s:
        with s.get(base + "/stream/5", stream=True) as r:
            lines = [line for line in r.iter_lines() if line]
        assert len(lines) == 5 and lines[0] == b'{"id": 0}'
        with s.get(base + "/bytes/1000", stream=True) as r:
            chunks = list(r.iter_content(chunk_size=128))
        assert sum(len(c) for c in chunks) == 1000
        assert all(len(c) <= 128 for c in chunks)
        r = s.get(base + "/bytes/300", stream=True)
        assert r.raw.read(10) == bytes(range(10))
        r.close()


def test_hooks(base: str) -> None:
    seen: list[int] = []

    def on_response(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        seen.append(response.status_code)

    atlas.client.get(base + "/get", hooks={"response": on_response})
    with atlas.client.Session() as s:
        s.hooks["response"].append(on_response)
        s.get(base + "/status/404")
    assert seen == [200, 404]


def test_redirects(base: str) -> None:
    r = atlas.client.get(base + "/redirect/3")
    assert r.status_code == 200
    assert [h.status_code for h in r.history] == [302, 302, 302]
    assert r.url == base + "/get"
    stay = atlas.client.get(base + "/redirect/1", allow_redirects=False)
    assert stay.status_code == 302 and stay.is_redirect
    assert stay.next is not None and stay.next.url == base + "/get"


def test_prepared_requests_and_send(base: str) -> None:
    with atlas.client.Session() as s:
        req = requests.Request("POST", base + "/post", json={"p": 1}, params={"q": "2"})
        prepped = s.prepare_request(req)
        prepped.headers["X-Extra"] = "1"
        r = s.send(prepped, timeout=5)
    assert r.json()["json"] == {"p": 1}
    assert r.json()["args"] == {"q": ["2"]}
    assert r.json()["headers"]["x-extra"] == "1"
    assert r.request is prepped


def test_every_request_carries_a_request_id(base: str) -> None:
    r = atlas.client.get(base + "/get")
    assert r.json()["headers"]["x-request-id"] == r.request.headers["X-Request-Id"]
    mine = atlas.client.get(base + "/get", headers={"X-Request-Id": "mine"})
    assert mine.json()["headers"]["x-request-id"] == "mine"
