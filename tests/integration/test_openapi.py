"""openapi.yaml: a valid OpenAPI document, complete for every route, and true of the live app.

The last test drives Atlas under real gunicorn (a private realm on the session
moto server) with schemathesis: every documented operation gets generated
valid and invalid requests, and every response must be a non-5xx whose status
code, content type, headers and body are the ones the document promises.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import jsonschema
import pytest
import requests
import schemathesis
import yaml
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from atlas.app import create_app
from atlas.config import Settings
from atlas.stack import AtlasServer, MotoServer
from tests.helpers import ADMIN_TOKEN
from tests.integration.conftest import atlas_env, migrate

pytestmark = pytest.mark.integration

DOC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch"}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# Per operation (18 of them); schemathesis adds its examples and
# coverage phases (boundary values, missing/extra fields) on top of fuzzing.
MAX_EXAMPLES = 100

GUNICORN_LIMIT_REQUEST_LINE = 4094
GUNICORN_LIMIT_REQUEST_FIELD_SIZE = 8190
CALLS: dict[str, int] = {}  # generated cases sent, by operation

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def load_doc() -> dict[str, Any]:
    """The document as a dict."""
    doc: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
    return doc


def test_document_is_valid_openapi() -> None:
    doc = load_doc()
    validate(doc)
    assert doc["openapi"].startswith("3.")


def test_served_document_is_the_file() -> None:
    # atlas/openapi.yaml is a symlink to the repository's openapi.yaml (GET /openapi.yaml serves it).
    packaged = Path(__file__).resolve().parents[2] / "atlas" / "openapi.yaml"
    assert packaged.resolve() == DOC_PATH.resolve()
    app = create_app(settings=Settings(realm="local", auth_disabled=True))
    resp = app.test_client().get("/openapi.yaml")
    assert resp.status_code == 200
    assert resp.get_data(as_text=True) == DOC_PATH.read_text()


def _flask_path(rule: str) -> str:
    """/v1/services/<string:name> -> /v1/services/{name}"""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_every_route_is_documented_and_vice_versa() -> None:
    app = create_app(settings=Settings(realm="local", auth_disabled=True))
    served: set[tuple[str, str]] = set()
    served_params: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("ui."):
            continue  # the dashboard's HTML pages (atlas.ui) are not part of the JSON API
        path = _flask_path(rule.rule)
        served_params[path] = set(rule.arguments)
        served |= {(path, m.lower()) for m in rule.methods or () if m.lower() in METHODS}

    doc = load_doc()
    documented = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }
    assert sorted(served - documented) == [], "routes the app serves but openapi.yaml omits"
    assert sorted(documented - served) == [], "operations openapi.yaml documents but the app lacks"

    params = doc["components"]["parameters"]
    for path, item in doc["paths"].items():
        for method in set(item) & METHODS:
            declared = [*item.get("parameters", []), *item[method].get("parameters", [])]
            resolved = [params[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p for p in declared]
            in_path = {p["name"] for p in resolved if p["in"] == "path"}
            assert in_path == served_params[path], (path, method)


def test_every_error_is_a_problem() -> None:
    doc = load_doc()
    responses = doc["components"]["responses"]
    for path, item in doc["paths"].items():
        for method in set(item) & METHODS:
            for code, resp in item[method]["responses"].items():
                if path == "/readyz" or not str(code).startswith(("4", "5")):
                    continue
                assert "$ref" in resp, (path, method, code)
                content = responses[resp["$ref"].rsplit("/", 1)[1]]["content"]
                assert content == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (path, method, code)
            if item[method].get("security") != []:
                assert "401" in item[method]["responses"], (path, method)


# ------------------------------------------------------------------ schemathesis


@pytest.fixture(scope="module")
def live_atlas(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AtlasServer]:
    """Atlas under gunicorn in a private realm, so generated writes disturb no other test."""
    realm = f"t{uuid.uuid4().hex[:10]}"
    env = atlas_env(moto_server, realm)
    migrate(env)
    server = AtlasServer(tmp_path_factory.mktemp("atlas-openapi"), env, workers=2, threads=4)
    server.start()
    # The document's examples (service `web`, instances on the example hosts), so that the
    # examples phase and some generated requests reach existing resources, not only 404s.
    session = requests.Session()
    session.headers.update(AUTH)
    base = f"{server.url}/v1/services"
    session.post(base, json={"name": "web"}, timeout=10).raise_for_status()
    for iid in ("web-1.example.com:8080", "10.0.0.7:8080", "[::1]:8080"):
        session.put(f"{base}/web/instances/{iid}", json={}, timeout=10).raise_for_status()
    session.close()
    yield server
    server.stop()


# An explicit configuration, so that no schemathesis.toml lying around changes the run.
# Invalid requests must be refused with a 4xx: If-Match / If-None-Match values outside the
# document are a failed precondition (412) by RFC 9110, a bad body may be 400/413/415.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 412, 413, 415, 422]
            }
        }
    }
)
schema = schemathesis.openapi.from_path(DOC_PATH, config=CONFIG)


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_live_app_conforms_to_the_document(
    case: schemathesis.Case, live_atlas: AtlasServer
) -> None:
    CALLS[case.operation.label] = CALLS.get(case.operation.label, 0) + 1
    response = case.call(base_url=live_atlas.url, headers=AUTH, timeout=30)
    if response.status_code in (414, 431):
        # gunicorn's own limits (limit_request_line, limit_request_field_size), answered in
        # text/html before Atlas sees the request: make sure that is what happened.
        request = response.request
        line = f"{request.method} {request.path_url} HTTP/1.1"
        longest_header = max(len(f"{k}: {v}") for k, v in request.headers.items())
        if response.status_code == 414:
            assert len(line.encode()) > GUNICORN_LIMIT_REQUEST_LINE, line[:200]
        else:
            assert longest_header > GUNICORN_LIMIT_REQUEST_FIELD_SIZE
        return
    case.validate_response(response, checks=CHECKS, headers=AUTH)


def test_protocol_errors_are_documented_problems(live_atlas: AtlasServer) -> None:
    """The errors generated requests rarely reach: 413, 415, 400, 401, 404, 405."""
    url = f"{live_atlas.url}/v1/services"
    post = schema["/v1/services"]["POST"]
    json_ct = {**AUTH, "Content-Type": "application/json"}
    # The 413 goes on a connection of its own: the server closes it without reading the body.
    too_big = requests.post(
        url, data=b"{" + b" " * (1024 * 1024) + b"}", headers={**json_ct, "Connection": "close"}
    )
    with requests.Session() as http:
        cases = [
            (413, too_big),
            (415, http.post(url, data="name=x", headers={**AUTH, "Content-Type": "text/plain"})),
            (400, http.post(url, data='{"name": ', headers=json_ct)),
            (400, http.post(url, data='{"name": "x", "owner": "\\ud800"}', headers=json_ct)),
            (401, http.post(url, json={"name": "x"})),
            (401, http.post(url, json={"name": "x"}, headers={"Authorization": "Bearer nope"})),
        ]
        for status, resp in cases:
            assert resp.status_code == status, resp.text
            post.validate_response(resp)
        assert cases[-1][1].headers["WWW-Authenticate"] == 'Bearer realm="atlas"'

        resp = http.get(f"{live_atlas.url}/v1/nothing-here", headers=AUTH)
        assert (resp.status_code, resp.headers["Content-Type"]) == (404, "application/problem+json")
        resp = http.get(f"{live_atlas.url}/v1/services//instances", headers=AUTH)
        assert (resp.status_code, resp.headers["Content-Type"]) == (404, "application/problem+json")
        resp = http.delete(url, headers=AUTH)
        assert (resp.status_code, resp.headers["Content-Type"]) == (405, "application/problem+json")
        assert set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}
        problem = load_doc()["components"]["schemas"]["Problem"]
        jsonschema.validate(resp.json(), problem)


def test_schemathesis_ran_enough_cases(request: pytest.FixtureRequest) -> None:
    documented = {
        f"{method.upper()} {path}"
        for path, item in load_doc()["paths"].items()
        for method in set(item) & METHODS
    }
    selected = [
        item
        for item in request.session.items
        if getattr(item, "originalname", None) == test_live_app_conforms_to_the_document.__name__
    ]
    if len(selected) < len(documented):
        pytest.skip("only part of the schemathesis test was selected")
    assert set(CALLS) == documented
    total = sum(CALLS.values())
    print(f"schemathesis sent {total} generated requests: {CALLS}")  # shown with -s / -rP
    assert total >= 300, CALLS
