"""The dashboard in headless Chromium (Debian's) against a real Atlas under gunicorn + ZooKeeper.

Screenshots of every page go to `tests/.artifacts/screenshots/` (or
`$ATLAS_SCREENSHOT_DIR`); the test prints their paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from tests.helpers import ADMIN_TOKEN, ApiClient, wait_until
from tests.integration.conftest import StartAtlas
from tests.ui.conftest import SCREENSHOTS

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
# As root, in a container without a GPU, with nothing fetched from the network.
# (Playwright adds --headless itself for headless=True.)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium context (empty profile) driven by Playwright."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required (apt-get install chromium; see the Makefile)")
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


def seed(api: ApiClient) -> None:
    """Two services sharing host 10.0.0.2, a plain config key and a secret."""
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/services", {"name": "identity", "port": 8000, "owner": "team-identity",
                                  "health_check": {"path": "/health"}, "tags": ["tier-1"]}),
        ("POST", "/v1/services", {"name": "billing", "port": 9000, "owner": "team-billing"}),
        ("PUT", "/v1/services/identity/instances/10.0.0.1:8000", {"zone": "a"}),
        ("PUT", "/v1/services/identity/instances/10.0.0.2:8000", {"zone": "b", "weight": 50}),
        ("PUT", "/v1/services/billing/instances/10.0.0.2:9000", {"zone": "b"}),
        ("PUT", "/v1/services/identity/config/DATABASE_URL", {"value": "postgres://db/identity"}),
        ("PUT", "/v1/services/identity/config/DB_PASSWORD",
         {"value": "hunter2-never-shown", "secret": True}),
    ]  # fmt: skip
    for method, path, body in calls:
        resp = api.request(method, path, json=body)
        assert resp.status_code in (200, 201), resp.text


def test_dashboard_in_chromium(
    start_atlas: StartAtlas, zk_hosts: str, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_atlas("uibrowser", workers=2, ATLAS_ZK_HOSTS=zk_hosts)
    api = ApiClient(server.url)
    seed(api)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    page = browser.new_page()
    contents: list[str] = []

    def shot(name: str) -> None:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)
        contents.append(page.content())

    try:
        # 1. the dashboard asks for a token once
        page.goto(server.url + "/ui/")
        assert page.url.startswith(server.url + "/ui/login")
        shot("01-login")
        page.fill("input[name=token]", ADMIN_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/ui/")
        cookie = next(c for c in browser.cookies() if c["name"] == "atlas_ui")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/ui/" and ADMIN_TOKEN not in cookie["value"]

        # 2. services with enabled/total; the mirror connected to ZooKeeper
        def services_page_ready() -> bool:
            page.goto(server.url + "/ui/")
            mirror = page.inner_text("#mirror")
            return "Connected\nyes" in mirror or "Connected\tyes" in mirror

        wait_until(services_page_ready, timeout=60, what="the mirror connected on the page")
        assert page.inner_text("tr[data-service=identity] td.counts") == "2/2"
        assert page.inner_text("tr[data-service=billing] td.counts") == "1/1"
        shot("02-services")

        # 3. a service: instances, masked config, audit
        page.click("tr[data-service=identity] a")
        page.wait_for_url(server.url + "/ui/services/identity")
        assert "(2/2 enabled)" in page.inner_text("#counts")
        assert "•••••• secret" in page.inner_text("tr[data-key=DB_PASSWORD]")
        assert "postgres://db/identity" in page.inner_text("tr[data-key=DATABASE_URL]")
        assert page.inner_text("#min-enabled") == "0"  # the service has no floor
        shot("03-service")

        # 4. disable an instance with a reason, and see it disabled with the reason
        row = 'tr[data-instance="10.0.0.2:8000"]'
        page.fill(f"{row} input[name=reason]", "deploying v42")
        page.click(f"{row} button[type=submit]")
        page.wait_for_selector(f"{row}.disabled")
        assert "disabled identity 10.0.0.2:8000 (deploying v42)" in page.inner_text(".flash.ok")
        assert page.inner_text(f"{row} td.state") == "no"
        assert page.inner_text(f"{row} td.reason") == "deploying v42"
        assert " ago)" in page.inner_text(f"{row} td.since")
        assert "(1/2 enabled)" in page.inner_text("#counts")
        assert "POST /ui/services/{name}/instances/{instance}/disable" in page.inner_text(
            "table.audit"
        )
        shot("04-service-disabled")
        got = api.get("/v1/services/identity/instances/10.0.0.2:8000").json()
        assert got["enabled"] is False and got["disabled_reason"] == "deploying v42"
        zk = KazooClient(hosts=zk_hosts)
        zk.start(timeout=15)
        try:
            node = "/atlas/uibrowser/services/identity/10.0.0.2:8000"
            wait_until(
                lambda: json.loads(zk.get(node)[0]).get("haproxy_server_options") == "disabled",
                what="the disable mirrored to ZooKeeper",
            )
        finally:
            zk.stop()
            zk.close()

        # 5. the host page: everything on 10.0.0.2, across services
        page.click(f"{row} td a")
        page.wait_for_url(server.url + "/ui/hosts/10.0.0.2")
        assert "(1/2 enabled)" in page.inner_text("#counts")
        assert page.inner_text('tr[data-instance="10.0.0.2:9000"] td.state') == "yes"
        assert page.inner_text(f"{row} td.reason") == "deploying v42"
        shot("05-host")

        # 6. a form posted from another origin changes nothing (SameSite + CSRF token)
        page.set_content(
            f'<form id="f" method="post" action="{server.url}/ui/services/identity/instances/'
            f'10.0.0.2:8000/enable"><input name="csrf" value="guess"></form>'
        )
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
        assert page.url.startswith(server.url + "/ui/")
        assert "403 Forbidden" in page.content()
        shot("06-cross-site-post-refused")
        got = api.get("/v1/services/identity/instances/10.0.0.2:8000").json()
        assert got["enabled"] is False
    finally:
        with capsys.disabled():
            print("\ndashboard screenshots:\n" + "\n".join(f"  {p}" for p in shots))
    for html in contents:
        assert "hunter2-never-shown" not in html  # the secret is never rendered
