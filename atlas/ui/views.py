"""Routes of the dashboard: login, services, a service, a host; enable/disable posts."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.blueprints import BlueprintSetupState

from atlas import __version__
from atlas.admin.output import ago, describe_changes
from atlas.api.auth import Principal
from atlas.contract import HOST_RULE, normalize_host, parse_instance_id
from atlas.errors import AtlasError, Unauthorized, ValidationFailed
from atlas.ui import data
from atlas.ui.session import TOKEN_KEY, Keys, configure, csrf_ok, csrf_token

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
ui_blueprint = Blueprint(
    "ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static"
)
PUBLIC_ENDPOINTS = {"ui.login", "ui.static"}
REASON_MAX = 512

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: with it, browsers send `Origin: null` on form posts and the check fails
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@ui_blueprint.record_once
def _setup(state: BlueprintSetupState) -> None:
    app = cast(Flask, state.app)
    ext = app.extensions["atlas"]
    app.extensions["atlas_ui"] = configure(app, ext.settings)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.filters["changes"] = describe_changes


def _ext() -> Any:
    return current_app.extensions["atlas"]


def _keys() -> Keys:
    keys: Keys = current_app.extensions["atlas_ui"]
    return keys


def _principal() -> Principal:
    principal: Principal = g.ui_principal
    return principal


def _safe_next(target: str | None) -> str:
    """Only a path of the dashboard itself (no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("ui.index")


def _page(status: int, title: str, detail: str) -> tuple[str, int]:
    return render_template("error.html", status=status, title=title, detail=detail), status


def page(f: F) -> F:
    """Render Atlas errors (and surprises) as an HTML page, not problem+json."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except AtlasError as exc:
            return _page(exc.status, exc.title, exc.detail)
        except Exception:
            log.exception("dashboard error on %s %s", request.method, request.path[:200])
            current_app.extensions["atlas"].metrics.swallowed_error("dashboard_page")
            return _page(500, "Internal error", "An unexpected error occurred; it has been logged.")

    return wrapper  # type: ignore[return-value]


@ui_blueprint.before_request
def _authenticate() -> Any:
    ext = _ext()
    if request.method == "POST" and not csrf_ok():
        return _page(403, "Forbidden", "The form is stale or came from another site; reload it.")
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if ext.settings.auth_disabled:
        g.ui_principal = ext.authenticator.authenticate(None)
        return None
    token = _keys().unseal(session.get(TOKEN_KEY))
    if token is not None:
        try:
            g.ui_principal = ext.authenticator.authenticate(f"Bearer {token}")
            return None
        except Unauthorized:
            session.pop(TOKEN_KEY, None)
            flash("Your token is no longer valid; enter a current one.", "error")
    return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))


@ui_blueprint.after_request
def _headers(resp: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    return resp


@ui_blueprint.context_processor
def _context() -> dict[str, Any]:
    ext = _ext()
    return {
        "realm": ext.settings.realm,
        "version": __version__,
        "auth_disabled": ext.settings.auth_disabled,
        "principal": g.get("ui_principal"),
    }


# ------------------------------------------------------------------ login


@ui_blueprint.route("/login", methods=["GET", "POST"])
@page
def login() -> Any:
    """Enter a token once; it is kept sealed in the session cookie."""
    ext = _ext()
    target = _safe_next(request.values.get("next"))
    if ext.settings.auth_disabled:
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target, error=None)
    token = request.form.get("token", "").strip()
    try:
        ext.authenticator.authenticate(f"Bearer {token}")
    except Unauthorized as exc:
        return render_template("login.html", next=target, error=exc.detail), 401
    session.clear()  # a new session (and CSRF token) for the new identity
    session.permanent = True
    session[TOKEN_KEY] = _keys().seal(token)
    csrf_token()
    return redirect(target)


@ui_blueprint.post("/logout")
@page
def logout() -> Any:
    """Forget the token."""
    session.clear()
    return redirect(url_for("ui.login"))


# ------------------------------------------------------------------ pages


@ui_blueprint.get("/")
@page
def index() -> Any:
    """Every service with enabled/total instances, the mirror's and the view's state, and the
    live sidecars."""
    ext = _ext()
    return render_template(
        "index.html",
        services=data.services_overview(ext),
        mirror=data.mirror_state(ext),
        view=data.view_state(ext),
        fleet=data.fleet_overview(ext),
    )


@ui_blueprint.get("/services/<string:name>")
@page
def service(name: str) -> Any:
    """A service: its instances (with enable/disable), config keys, recent audit."""
    detail = data.service_detail(_ext(), name, _principal())
    return render_template("service.html", name=name, **detail)


def _host(host: str) -> str:
    normalized = normalize_host(host)
    if normalized is None:
        raise ValidationFailed(f"invalid host {host[:80]!r}", {"host": [HOST_RULE]})
    return normalized


@ui_blueprint.get("/hosts/<string:host>")
@page
def host(host: str) -> Any:
    """Every instance on a host, across services."""
    return render_template("host.html", **data.host_detail(_ext(), _host(host)))


# ------------------------------------------------------------------ writes


def _audit(service: str | None, action: str, target: str, status: int) -> None:
    principal = _principal()
    _ext().audit.record(
        service=service,
        principal=principal.kind,
        token_id=principal.token_id,
        action=action,
        method="POST",
        path=request.path,
        status=status,
        target=target,
        remote_addr=request.remote_addr,
    )


def _write(service: str | None, action: str, target: str, change: Callable[[], str]) -> None:
    """Authorize, make the change, record it in the audit trail, flash what happened."""
    status = 200
    try:
        _ext().authenticator.authorize(_principal(), True)
        flash(change(), "ok")
    except AtlasError as exc:
        status = exc.status
        flash(f"{exc.title}: {exc.detail}", "error")
    except Exception:
        status = 500
        log.exception("dashboard write failed: %s %s", action, target)
        current_app.extensions["atlas"].metrics.swallowed_error("dashboard_write")
        flash("Internal error: the change may not have been made; it has been logged.", "error")
    _audit(service, action, target, status)


def _reason() -> str | None:
    reason = " ".join(request.form.get("reason", "").split())
    if len(reason) > REASON_MAX:
        raise ValidationFailed(
            "reason too long", {"reason": [f"Must be at most {REASON_MAX} characters."]}
        )
    return reason or None


def _version() -> int | None:
    raw = request.form.get("version", "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 16 else None


def _back(name: str) -> Any:
    host = request.form.get("back_host")
    if host and normalize_host(host) is not None:
        return redirect(url_for("ui.host", host=normalize_host(host)))
    return redirect(url_for("ui.service", name=name))


@ui_blueprint.post("/services/<string:name>/instances/<string:instance>/<any(enable,disable):act>")
@page
def instance_action(name: str, instance: str, act: str) -> Any:
    """Enable or disable one instance (at the version the page showed)."""
    h, p = parse_instance_id(instance)
    enabled = act == "enable"

    def change() -> str:
        changes: dict[str, Any] = {"enabled": enabled}
        reason = None if enabled else _reason()
        if reason is not None:
            changes["disabled_reason"] = reason
        inst = _ext().registry.update_instance(name, h, p, changes, if_match=_version())
        why = f" ({inst.disabled_reason})" if inst.disabled_reason else ""
        return f"{act}d {name} {inst.id}{why}"

    template = f"/ui/services/{{name}}/instances/{{instance}}/{act}"
    _write(name, f"POST {template}", instance, change)
    return _back(name)


@ui_blueprint.post("/hosts/<string:host>/<any(enable,disable):act>")
@page
def host_action(host: str, act: str) -> Any:
    """Enable or disable every instance on a host."""
    h = _host(host)
    enabled = act == "enable"

    def change() -> str:
        change = _ext().registry.change_host(h, enabled, None if enabled else _reason())
        return f"{act}d {len(change.changed)} instance(s) on {h}"

    _write(None, f"POST /ui/hosts/{{host}}/{act}", h, change)
    return redirect(url_for("ui.host", host=h))
