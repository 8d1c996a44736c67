"""Dashboard tier: the app in-process (moto's mock_aws) and a real Atlas driven by Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from atlas.envvars import TESTS
from tests.helpers import ADMIN_TOKEN
from tests.integration.conftest import start_atlas  # noqa: F401 (fixture)
from tests.unit.conftest import app, aws, settings  # noqa: F401 (fixtures)

ARTIFACTS = Path(TESTS.get("ATLAS_ARTIFACT_DIR") or Path(__file__).parent.parent / ".artifacts")
SCREENSHOTS = Path(TESTS.get("ATLAS_SCREENSHOT_DIR") or ARTIFACTS / "screenshots")
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(resp: TestResponse) -> str:
    """The CSRF token in a page's forms."""
    m = CSRF_RE.search(resp.get_data(as_text=True))
    assert m, "no CSRF field in the page"
    return m.group(1)


class Ui:
    """A browser-like client of the dashboard: keeps the cookie, posts forms with their token."""

    def __init__(self, flask_app: Flask) -> None:
        self.app = flask_app
        self.client: FlaskClient = flask_app.test_client()
        self.csrf = ""

    def get(self, path: str, **kw: Any) -> TestResponse:
        """GET a page and remember its CSRF token."""
        resp = self.client.get(path, **kw)
        m = CSRF_RE.search(resp.get_data(as_text=True))
        if m:
            self.csrf = m.group(1)
        return resp

    def post(self, path: str, data: dict[str, str] | None = None, **kw: Any) -> TestResponse:
        """POST a form with the last page's CSRF token (unless data sets its own)."""
        form = {"csrf": self.csrf, **(data or {})}
        return self.client.post(path, data=form, **kw)

    def login(self, token: str = ADMIN_TOKEN) -> TestResponse:
        """Log in with a token, as the login form does."""
        self.get("/ui/login")
        return self.post("/ui/login", {"token": token, "next": "/ui/"})

    def page(self, path: str) -> str:
        """The text of a page that must answer 200."""
        resp = self.get(path)
        assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
        return resp.get_data(as_text=True)


@pytest.fixture
def ui(app: Flask) -> Ui:  # noqa: F811
    """A dashboard client, not logged in."""
    return Ui(app)
