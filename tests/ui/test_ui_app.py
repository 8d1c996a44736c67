"""The dashboard in-process (moto's mock_aws): login, cookie, CSRF, secrets, authorization."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask, render_template_string

from atlas.app import create_app
from atlas.config import ConfigError, Settings
from atlas.migrate import Migrator
from atlas.ui.session import COOKIE_NAME
from tests.helpers import ADMIN_TOKEN
from tests.ui.conftest import Ui, csrf_of

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def api(app: Flask, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN) -> Any:
    """Call the JSON API of the same app (setup and checks)."""
    resp = app.test_client().open(
        path, method=method, json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code < 300, resp.get_data(as_text=True)
    return resp.get_json(silent=True)


def seed(app: Flask, name: str = "identity") -> None:
    """A service with two instances, a plain key and a secret."""
    api(app, "POST", "/v1/services", {"name": name, "port": 8000})
    api(app, "PUT", f"/v1/services/{name}/instances/10.0.0.1:8000", {"zone": "a"})
    api(app, "PUT", f"/v1/services/{name}/instances/10.0.0.2:8000", {"zone": "b", "weight": 50})
    api(app, "PUT", f"/v1/services/{name}/config/DATABASE_URL", {"value": "postgres://db/x"})
    api(app, "PUT", f"/v1/services/{name}/config/DB_PASSWORD", {"value": "hunter2", "secret": True})


def instance(app: Flask, iid: str, name: str = "identity") -> Any:
    """An instance as the API returns it."""
    return api(app, "GET", f"/v1/services/{name}/instances/{iid}")


def test_pages_need_a_login_and_a_good_token(ui: Ui, app: Flask) -> None:
    resp = ui.get("/ui/services/identity")
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/ui/login?next=/ui/services/identity"

    resp = ui.login("not-a-valid-token-at-all")
    assert resp.status_code == 401
    page = resp.get_data(as_text=True)
    assert "unknown or revoked token" in page and "not-a-valid-token-at-all" not in page
    assert ui.get("/ui/").status_code == 302

    resp = ui.login()
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/"
    assert ui.get("/ui/").status_code == 200


def test_session_cookie_is_httponly_strict_and_holds_no_token(ui: Ui, app: Flask) -> None:
    resp = ui.login()
    cookies = [c for c in resp.headers.getlist("Set-Cookie") if c.startswith(COOKIE_NAME + "=")]
    assert len(cookies) == 1
    attrs = [a.strip().lower() for a in cookies[0].split(";")]
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/ui/" in attrs
    assert "secure" not in attrs  # plain http here; https requests get Secure
    value = cookies[0].split(";")[0].split("=", 1)[1]
    assert ADMIN_TOKEN not in value
    decoded = app.session_interface.get_signing_serializer(app).loads(value)  # type: ignore[attr-defined]
    assert ADMIN_TOKEN not in json.dumps(decoded)  # sealed, not merely signed
    https = app.test_client().get("/ui/login", base_url="https://localhost")
    assert "Secure" in https.headers["Set-Cookie"]

    # the API never gets (or reads) the dashboard's cookie
    resp = app.test_client().get("/v1/services", headers=AUTH)
    assert resp.status_code == 200 and "Set-Cookie" not in resp.headers


def test_a_tampered_or_foreign_cookie_is_no_login(ui: Ui, app: Flask, settings: Settings) -> None:
    ui.login()
    other = create_app(settings=settings.with_overrides(ui_secret_key="k" * 40))
    try:
        stolen = ui.client.get_cookie(COOKIE_NAME, path="/ui/")
        assert stolen is not None
        thief = other.test_client()
        thief.set_cookie(COOKIE_NAME, stolen.value, path="/ui/")
        assert thief.get("/ui/").status_code == 302  # signed with another key: no session
    finally:
        other.extensions["atlas"].close()


def test_disable_with_reason_needs_the_csrf_token(ui: Ui, app: Flask) -> None:
    seed(app)
    ui.login()
    page = ui.page("/ui/services/identity")
    assert "(2/2 enabled)" in page
    path = "/ui/services/identity/instances/10.0.0.2:8000/disable"

    for bad in ({"csrf": ""}, {"csrf": "x" * 43}, {}):
        form = {"reason": "deploying", **bad}
        if not bad:
            resp = ui.client.post(path, data={"reason": "deploying"})  # no field at all
        else:
            resp = ui.post(path, form)
        assert resp.status_code == 403
        assert instance(app, "10.0.0.2:8000")["enabled"] is True
    resp = ui.post(path, {"reason": "deploying"}, headers={"Origin": "https://evil.example"})
    assert resp.status_code == 403
    resp = ui.post(path, {"reason": "deploying"}, headers={"Origin": "null"})
    assert resp.status_code == 403
    resp = ui.post(path, {"reason": "deploying"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status_code == 403
    assert instance(app, "10.0.0.2:8000")["enabled"] is True

    resp = ui.post(path, {"reason": "deploying v42"}, headers={"Origin": "http://localhost"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/services/identity"
    got = instance(app, "10.0.0.2:8000")
    assert got["enabled"] is False and got["disabled_reason"] == "deploying v42"

    page = ui.page("/ui/services/identity")
    assert "disabled identity 10.0.0.2:8000 (deploying v42)" in page
    assert "(1/2 enabled)" in page and "deploying v42" in page
    assert "POST /ui/services/{name}/instances/{instance}/disable" in page  # audited
    records = api(app, "GET", "/v1/audit?service=identity")["items"]
    mine = [r for r in records if r["action"].startswith("POST /ui/")]
    assert [(r["target"], r["status"], r["principal"]) for r in mine] == [
        ("10.0.0.2:8000", 200, "admin")
    ]


def test_enable_at_a_stale_version_is_refused(ui: Ui, app: Flask) -> None:
    seed(app)
    ui.login()
    ui.page("/ui/services/identity")
    version = instance(app, "10.0.0.1:8000")["version"]
    api(app, "PATCH", "/v1/services/identity/instances/10.0.0.1:8000", {"weight": 7})
    resp = ui.post(
        "/ui/services/identity/instances/10.0.0.1:8000/disable",
        {"reason": "x", "version": str(version)},
    )
    assert resp.status_code == 302
    page = ui.page("/ui/services/identity")
    assert "Precondition failed" in page
    assert instance(app, "10.0.0.1:8000")["enabled"] is True


def test_secrets_are_never_rendered(ui: Ui, app: Flask) -> None:
    seed(app)
    ui.login()
    pages = [
        ui.page("/ui/"),
        ui.page("/ui/services/identity"),
        ui.page("/ui/hosts/10.0.0.1"),
    ]
    for page in pages:
        assert "hunter2" not in page
    service_page = pages[1]
    assert "DB_PASSWORD" in service_page and "•••••• secret" in service_page
    assert "postgres://db/x" in service_page
    # the dashboard opened no secret: the audit trail records no secret read
    records = api(app, "GET", "/v1/audit?service=identity")["items"]
    assert not [r for r in records if "secrets read" in (r["target"] or "")]


def test_service_token_reads_its_own_service_and_changes_nothing(ui: Ui, app: Flask) -> None:
    seed(app)
    seed(app, "billing")
    token = api(app, "POST", "/v1/services/identity/tokens", {"description": "ui"})["token"]
    assert ui.login(token).status_code == 302
    own = ui.page("/ui/services/identity")
    assert "DB_PASSWORD" in own and "hunter2" not in own
    assert "not available to this token (admins only)" in own
    assert ">Disable</button>" not in own
    other = ui.page("/ui/services/billing")
    assert "DATABASE_URL" not in other and "not available to this token" in other

    resp = ui.post("/ui/services/identity/instances/10.0.0.1:8000/disable", {"reason": "x"})
    assert resp.status_code == 302
    assert "only admin tokens may change the registry" in ui.page("/ui/services/identity")
    assert instance(app, "10.0.0.1:8000")["enabled"] is True

    token_id = api(app, "GET", "/v1/services/identity/tokens")["items"][0]["id"]
    api(app, "DELETE", f"/v1/services/identity/tokens/{token_id}")
    resp = ui.get("/ui/services/identity")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/ui/login")
    assert "no longer valid" in ui.page("/ui/login")


def test_host_page_and_host_wide_disable(ui: Ui, app: Flask) -> None:
    seed(app)
    api(app, "POST", "/v1/services", {"name": "billing"})
    api(app, "PUT", "/v1/services/billing/instances/10.0.0.2:9000", {})
    ui.login()
    page = ui.page("/ui/hosts/10.0.0.2")
    assert "(2/2 enabled)" in page and "billing" in page and "identity" in page
    resp = ui.post("/ui/hosts/10.0.0.2/disable", {"reason": "disk failing"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/hosts/10.0.0.2"
    page = ui.page("/ui/hosts/10.0.0.2")
    assert "disabled 2 instance(s) on 10.0.0.2" in page and "(0/2 enabled)" in page
    assert page.count("disk failing") >= 2
    # an instance form on the host page comes back to the host page
    resp = ui.post("/ui/services/billing/instances/10.0.0.2:9000/enable", {"back_host": "10.0.0.2"})
    assert resp.headers["Location"] == "/ui/hosts/10.0.0.2"
    assert ui.get("/ui/hosts/not%20a%20host").status_code == 422


def test_errors_are_pages_with_security_headers(ui: Ui, app: Flask) -> None:
    ui.login()
    resp = ui.get("/ui/services/nope")
    assert resp.status_code == 404 and resp.mimetype == "text/html"
    assert "404 Not found" in resp.get_data(as_text=True)
    assert "does not exist" in resp.get_data(as_text=True)
    for header in ("Content-Security-Policy", "X-Frame-Options", "Cache-Control"):
        assert header in resp.headers
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    with ui.client.get("/ui/static/ui.css") as css:
        assert css.status_code == 200 and css.mimetype == "text/css"


def test_login_redirect_stays_on_the_dashboard(ui: Ui) -> None:
    ui.get("/ui/login")
    for target in ("https://evil.example/", "//evil.example/ui/", "/v1/services"):
        resp = ui.post("/ui/login", {"token": ADMIN_TOKEN, "next": target})
        assert resp.headers["Location"] == "/ui/"
        ui.get("/ui/login")
    resp = ui.post("/ui/login", {"token": ADMIN_TOKEN, "next": "/ui/hosts/h1"})
    assert resp.headers["Location"] == "/ui/hosts/h1"


def test_logout_forgets_the_token(ui: Ui) -> None:
    ui.login()
    page = ui.get("/ui/")
    assert ui.post("/ui/logout", {"csrf": csrf_of(page)}).status_code == 302
    assert ui.get("/ui/").status_code == 302


def test_local_realm_with_auth_off_needs_no_login(aws: None) -> None:
    s = Settings(realm="local", auth_disabled=True, table_prefix="ui-local-")
    Migrator(s).run()
    app = create_app(settings=s)
    try:
        seed(app)
        ui = Ui(app)
        page = ui.page("/ui/")
        assert "auth off (local realm)" in page and "identity" in page
        assert ui.get("/ui/login").status_code == 302
        assert ">Disable</button>" in ui.page("/ui/services/identity")
        resp = ui.post("/ui/services/identity/instances/10.0.0.1:8000/disable", {"reason": "r"})
        assert resp.status_code == 302
        assert instance(app, "10.0.0.1:8000")["disabled_reason"] == "r"
        resp = ui.client.post(
            "/ui/services/identity/instances/10.0.0.1:8000/enable", data={"csrf": "forged"}
        )
        assert resp.status_code == 403  # no login, but still no cross-site form posts
    finally:
        app.extensions["atlas"].close()


def test_newer_fields_show_when_the_api_returns_them(app: Flask) -> None:
    # A server without disabled_until or min_enabled (an older Atlas): the pages say "not
    # available"; with them the same templates show them (this renders such a record).
    row = {
        "service": "identity", "id": "10.0.0.9:80", "host": "10.0.0.9", "port": 80,
        "enabled": False, "weight": 100, "zone": None, "disabled_reason": "kernel",
        "updated_at": "2026-05-01T10:00:00.000Z", "disabled_until": "2026-05-01T10:30:00.000Z",
        "version": 3,
    }  # fmt: skip
    with app.test_request_context("/ui/"):
        html = render_template_string(
            '{% from "_macros.html" import instance_table, na %}'
            "{{ instance_table(rows, true, false) }}|{{ na(svc.min_enabled) }}|{{ na(2) }}",
            rows=[row],
            svc={"name": "identity"},
        )
    assert "<th>Until</th>" in html and 'datetime="2026-05-01T10:30:00.000Z"' in html
    assert html.endswith('|<span class="na">not available</span>|2')


def test_pages_show_min_enabled_timed_disables_drain_and_refusals(ui: Ui, app: Flask) -> None:
    seed(app)
    base = "/v1/services/identity/instances"
    api(app, "PATCH", "/v1/services/identity", {"min_enabled": 1})
    end = (datetime.now(UTC) + timedelta(minutes=30)).isoformat(timespec="milliseconds")
    until = api(app, "PATCH", f"{base}/10.0.0.1:8000", {"enabled": False, "disabled_until": end})
    api(app, "PUT", f"{base}/10.0.0.3:8000", {"drain": True})
    ui.login()
    page = ui.page("/ui/services/identity")
    assert '<dd id="min-enabled">1</dd>' in page
    assert "<th>Until</th>" in page
    assert f'<time datetime="{until["disabled_until"]}">' in page and "from now" in page
    row = page[page.index('data-instance="10.0.0.3:8000"') :].split("</tr>")[0]
    assert '<span class="drain">draining</span>' in row
    # The last serving instance: the dashboard's disable is refused, and says why.
    resp = ui.post("/ui/services/identity/instances/10.0.0.2:8000/disable", {"reason": "x"})
    assert resp.status_code == 302
    page = ui.page("/ui/services/identity")
    assert "Too few instances would stay enabled" in page and "must keep 1" in page
    assert instance(app, "10.0.0.2:8000")["enabled"] is True


def test_ui_secret_key_must_be_long() -> None:
    with pytest.raises(ConfigError, match="ATLAS_UI_SECRET_KEY"):
        Settings(admin_tokens=("a" * 20,), ui_secret_key="short")
    assert "k" * 40 not in repr(Settings(admin_tokens=("a" * 20,), ui_secret_key="k" * 40))


def test_the_audit_list_shows_what_changed(ui: Ui, app: Flask) -> None:
    seed(app)
    api(app, "PATCH", "/v1/services/identity/instances/10.0.0.2:8000",
        {"enabled": False, "disabled_reason": "deploying"})  # fmt: skip
    ui.login()
    page = ui.get("/ui/services/identity").get_data(as_text=True)
    assert "<th>Changes</th>" in page
    assert "enabled: true → false; disabled_reason: ∅ → deploying; version: 1 → 2" in page
    assert "hunter2" not in page  # the secret's write is listed by version and flag only
    assert "secret: ∅ → true" in page


def test_without_zookeeper_the_view_and_the_fleet_say_not_available(ui: Ui, app: Flask) -> None:
    seed(app)
    ui.login()
    page = ui.page("/ui/")
    view = page[page.index('id="view"') :].split("</section>")[0]
    assert "not available: no in-memory view here" in view
    fleet = page[page.index('id="sidecars"') :].split("</section>")[0]
    assert "not available:" in fleet and "ATLAS_ZK_HOSTS" in fleet
    svc = ui.page("/ui/services/identity")
    conv = svc[svc.index('id="convergence"') :].split("</section>")[0]
    assert "not available:" in conv and "ATLAS_ZK_HOSTS" in conv


def test_the_fleet_and_a_services_convergence_are_shown(ui: Ui, app: Flask) -> None:
    from dataclasses import replace

    from atlas.contract import LaggingService
    from tests.unit.test_fleet_units import STATE, FakeFleet, sidecar

    api(app, "POST", "/v1/services", {"name": "web"})
    held = sidecar("b", 15, lagging={"web": LaggingService(10, "held last-known-good")},
                   stale=True, stale_reasons=("zookeeper disconnected",))  # fmt: skip
    broken = replace(sidecar("c", 0), report=None, problem="not a report")
    app.extensions["atlas"].fleet = FakeFleet([sidecar("a", 30), held, broken], {"web": STATE})
    ui.login()
    page = ui.page("/ui/")
    fleet = page[page.index('id="sidecars"') :].split("</section>")[0]
    assert "(3 live)" in fleet
    row_b = fleet[fleet.index('data-sidecar="b"') :].split("</tr>")[0]
    assert "web <small>(held last-known-good)</small>" in row_b
    assert "yes: zookeeper disconnected" in row_b
    assert "unreadable report: not a report" in fleet
    svc = ui.page("/ui/services/web")
    conv = svc[svc.index('id="convergence"') :].split("</section>")[0]
    assert 'data-state="lagging"' in conv and "1 of 3 sidecar(s) have applied change 30" in conv
    row_b = conv[conv.index('data-sidecar="b"') :].split("</tr>")[0]
    assert "lagging" in row_b and "held last-known-good" in row_b and " s</td>" in row_b
    row_a = conv[conv.index('data-sidecar="a"') :].split("</tr>")[0]
    assert '<td class="ok">converged</td>' in row_a
