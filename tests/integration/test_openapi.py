"""openapi.yaml: a valid OpenAPI document, complete for every route, exactly as strict as the
server, and true of the live app.

The patterns of the document are the contract's own (atlas.contract, atlas.api.schemas), checked
equal here. The schemathesis test drives Atlas under real gunicorn (a private realm on the
session moto server) with the schemathesis CLI, every phase (examples, coverage, fuzzing,
stateful) and every check, auth on: every response must be a non-5xx whose status code, content
type, headers and body are the ones the document promises; data the document declares valid
must be accepted (positive_data_acceptance) and data it declares invalid refused
(negative_data_rejection).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import schemathesis
import yaml
from openapi_spec_validator import validate

from atlas.api.schemas import CURSOR_RE, MIN_ENABLED_MAX, RFC3339_RE
from atlas.app import create_app
from atlas.config import Settings
from atlas.contract import (
    CONFIG_KEY_RE,
    HEALTH_CHECK_PATH_MAX,
    HEALTH_CHECK_PATH_RE,
    HOST_MAX,
    HOST_PATTERN,
    INSTANCE_ID_MAX,
    INSTANCE_ID_PATTERN,
    LABEL_KEY_RE,
    SERVICE_NAME_RE,
    SLOW_START_MAX_S,
    TAG_RE,
)
from atlas.stack import AtlasServer, MotoServer
from tests.helpers import ADMIN_TOKEN
from tests.integration.conftest import atlas_env, migrate

pytestmark = pytest.mark.integration

DOC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch"}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")

# Fuzzed cases per operation (27 operations); the examples and coverage phases (boundary values,
# missing and extra fields, every refused form) and the stateful phase come on top: about 2,000
# cases, 2-3 minutes on a busy 2-core machine. One worker: with two, Hypothesis describing its
# filters in two threads at once trips CPython 3.11's AST constructor (a schemathesis "Runtime
# Error", not a finding).
MAX_EXAMPLES = 30
SEED = 20261201


def load_doc() -> dict[str, Any]:
    """The document as a dict."""
    doc: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
    return doc


def _string_rules(schema: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    return schema.get("pattern"), schema.get("minLength"), schema.get("maxLength")


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


def test_document_patterns_are_the_contracts() -> None:
    """What the document declares valid is what the server checks, rule for rule."""
    doc = load_doc()
    schemas, params = doc["components"]["schemas"], doc["components"]["parameters"]
    assert _string_rules(schemas["HostName"]) == (HOST_PATTERN, 1, HOST_MAX)
    assert _string_rules(params["InstanceId"]["schema"]) == (
        INSTANCE_ID_PATTERN,
        3,
        INSTANCE_ID_MAX,
    )
    path = schemas["HealthCheck"]["properties"]["path"]
    assert _string_rules(path) == (HEALTH_CHECK_PATH_RE.pattern, 1, HEALTH_CHECK_PATH_MAX)
    assert _string_rules(params["Cursor"]["schema"]) == (CURSOR_RE.pattern, 4, 2048)
    assert schemas["ServiceName"]["pattern"] == SERVICE_NAME_RE.pattern
    assert schemas["ConfigKey"]["pattern"] == CONFIG_KEY_RE.pattern
    assert schemas["Tag"]["pattern"] == TAG_RE.pattern
    assert schemas["Labels"]["propertyNames"]["pattern"] == LABEL_KEY_RE.pattern
    assert schemas["DisabledUntil"]["pattern"] == RFC3339_RE.pattern
    for name in ("InstancePut", "InstancePatch"):
        assert schemas[name]["properties"]["slow_start_s"]["maximum"] == SLOW_START_MAX_S
    for name in ("ServiceCreate", "ServicePatch"):
        assert schemas[name]["properties"]["min_enabled"]["maximum"] == MIN_ENABLED_MAX
    # The length bounds agree with the patterns' own.
    longest_host = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(longest_host) == HOST_MAX and re.fullmatch(HOST_PATTERN, longest_host)
    assert not re.fullmatch(HOST_PATTERN, longest_host + "b")
    assert len(f"{longest_host}:65535") == INSTANCE_ID_MAX
    assert re.fullmatch(INSTANCE_ID_PATTERN, f"{longest_host}:65535")
    assert re.fullmatch(CURSOR_RE, "eyJ" + "a" * 2045)
    assert not re.fullmatch(CURSOR_RE, "eyJ" + "a" * 2046)


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
    # More than one of each listing, so that small pages issue cursors to follow.
    session.post(base, json={"name": "api"}, timeout=10).raise_for_status()
    session.close()
    yield server
    server.stop()


# An explicit configuration, so that no schemathesis.toml lying around changes the run.
# Invalid requests must be refused with a 4xx: If-Match / If-None-Match values outside the
# document are a failed precondition (412) by RFC 9110, a bad body may be 400/413/415.
# Valid requests may still meet the state: a made-up name (404), a conflict (409), a
# well-formed If-Match naming another version (412); anything else is a failure, 422 above all.
CONFIG = {
    "checks": {
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
        },
        "negative_data_rejection": {
            "expected-statuses": [400, 401, 403, 404, 405, 412, 413, 415, 422]
        },
    }
}
schema = schemathesis.openapi.from_path(DOC_PATH, config=schemathesis.Config.from_dict(CONFIG))


def _toml(config: dict[str, Any]) -> str:
    lines = []
    for check, options in config["checks"].items():
        lines.append(f"[checks.{check}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def test_live_app_conforms_to_the_document(live_atlas: AtlasServer, tmp_path: Path) -> None:
    """Every phase, every check, auth on: no failure, no error, and enough cases."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(_toml(CONFIG))
    report = tmp_path / "report.json"
    cli = Path(sys.executable).with_name("schemathesis")
    argv = [
        str(cli), "--config-file", str(config), "--no-color", "run", str(DOC_PATH),
        "--url", live_atlas.url, "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
        "--request-timeout", "30", "--generation-database", "none",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    stats = tmp_path / "hook-stats.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "SCHEMATHESIS_HOOK_STATS": str(stats)}
    run = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    assert report.exists(), run.stdout[-5000:] + run.stderr[-3000:]
    result = json.loads(report.read_text())
    cases = result["test_cases"]
    summary = (
        f"schemathesis: {cases['generated']} cases on {result['operations']['tested']} operations"
        f" in {result['running_time']:.0f} s, {cases['unique_failures']} unique failures,"
        f" {len(result['errors'])} errors, {result['filtered']} gunicorn-limit answers excused;"
        f" hooks: {stats.read_text() if stats.exists() else '{}'}"
    )
    print(summary)  # shown with -s / -rP
    assert result["failures"] == [] and result["errors"] == [], summary + "\n" + run.stdout[-20000:]
    assert run.returncode == 0, run.stdout[-5000:]
    documented = {
        f"{method.upper()} {path}"
        for path, item in load_doc()["paths"].items()
        for method in set(item) & METHODS
    }
    assert result["operations"]["tested"] == len(documented) == result["operations"]["total"]
    assert all(result["phases"][p]["status"] == "success" for p in result["phases"]), result[
        "phases"
    ]
    assert cases["generated"] >= 1500, summary
    # Valid cases carried real cursors (the coverage phase's limit=1 pages make some).
    assert json.loads(stats.read_text())["cursors_sent"] > 0, summary


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
