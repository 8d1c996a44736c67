"""The HTTP API: flask-restful resources behind a single problem+json error handler."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, request
from flask_restful import Api

from atlas.api import audit as changes
from atlas.api import config_resources as c
from atlas.api import fleet_resources as f
from atlas.api import resources as r
from atlas.api.auth import TOPOLOGY
from atlas.api.problems import problem_response
from atlas.contract import is_service_name

log = logging.getLogger(__name__)


class ProblemApi(Api):
    """flask-restful's Api with every error routed through the one problem+json handler."""

    def handle_error(self, e: Exception) -> Any:
        """Render any error raised inside a resource as problem+json."""
        return problem_response(e)

    def error_router(self, original_handler: Any, e: Exception) -> Any:
        """Send errors of our endpoints, and 404/405 anywhere, to the one handler."""
        return problem_response(e)


def init_api(app: Flask) -> ProblemApi:
    """Mount the v1 resources and the authentication hook on the app."""
    # `//` must not be "fixed" by a redirect: /v1/services//instances is not /v1/services/instances.
    app.url_map.merge_slashes = False
    api = ProblemApi(app, catch_all_404s=True)
    app.extensions["atlas_api"] = api
    api.add_resource(r.ServiceList, "/v1/services")
    api.add_resource(r.ServiceItem, "/v1/services/<string:name>")
    api.add_resource(r.InstanceList, "/v1/services/<string:name>/instances")
    api.add_resource(r.InstanceItem, "/v1/services/<string:name>/instances/<string:instance>")
    api.add_resource(r.HostItem, "/v1/hosts/<string:host>")
    api.add_resource(r.HostDisable, "/v1/hosts/<string:host>/disable")
    api.add_resource(r.HostEnable, "/v1/hosts/<string:host>/enable")
    api.add_resource(r.Info, "/v1/info")
    api.add_resource(c.ConfigDoc, "/v1/services/<string:name>/config")
    api.add_resource(c.ConfigItem, "/v1/services/<string:name>/config/<string:key>")
    api.add_resource(c.ConfigVersions, "/v1/services/<string:name>/config/<string:key>/versions")
    api.add_resource(c.TokenList, "/v1/services/<string:name>/tokens")
    api.add_resource(c.TokenItem, "/v1/services/<string:name>/tokens/<string:token_id>")
    api.add_resource(c.AuditList, "/v1/audit")
    api.add_resource(f.SidecarList, "/v1/sidecars")
    api.add_resource(f.Convergence, "/v1/services/<string:name>/convergence")

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        ext = app.extensions["atlas"]
        principal = ext.authenticator.authenticate(request.headers.get("Authorization"))
        g.principal = principal
        view = app.view_functions.get(request.endpoint or "")
        scope = getattr(getattr(view, "view_class", None), "scope", TOPOLOGY)
        service = (request.view_args or {}).get("name")
        ext.authenticator.authorize(principal, r.request_is_write(), scope, service)
        changes.capture_before(app)  # what a mutation's audit record compares against

    @app.after_request
    def audit(resp: Response) -> Response:
        # Every mutation by a known caller (refused ones too) and every response revealing
        # secrets. Names, ids and the fields a mutation changed (atlas.api.audit) are recorded:
        # never bodies, secret values or tokens.
        principal = g.get("principal")
        revealed = g.get("audit_secrets")
        if principal is None or not request.path.startswith("/v1/"):
            return resp
        if not (r.request_is_write() or revealed):
            return resp
        try:
            rule = request.url_rule.rule if request.url_rule else request.path
            args = request.view_args or {}
            name = args.get("name")
            if request.endpoint == "servicelist" and request.method == "POST":
                name = changes.created_service(resp)  # the name is in the body
            # The service is the audit table's partition key: only a valid name goes there (a
            # 2 KiB junk name would make the whole batch, other callers' records too, fail).
            service = name if isinstance(name, str) and is_service_name(name) else None
            target = args.get("key") or args.get("instance") or args.get("host")
            try:
                changed = changes.changes(resp)
            except Exception:
                app.extensions["atlas"].audit.count("unrecorded_changes")
                app.extensions["atlas"].metrics.swallowed_error("audit_changes")
                log.exception(
                    "audit: what %s %s changed is unknown", request.method, request.path[:200]
                )
                changed = None
            app.extensions["atlas"].audit.record(
                service=service,
                principal=principal.kind,
                token_id=principal.token_id,
                action=f"{request.method} {_template(rule)}",
                method=request.method,
                path=request.path,
                status=resp.status_code,
                target="secrets read: " + ", ".join(revealed)
                if revealed and resp.status_code < 300
                else (str(target)[:256] if target else None),
                remote_addr=request.remote_addr,
                changes=changed,
            )
        except Exception:
            log.exception("audit record failed for %s %s", request.method, request.path[:200])
            app.extensions["atlas"].metrics.swallowed_error("audit_record")
        return resp

    return api


def _template(rule: str) -> str:
    """/v1/services/<string:name> -> /v1/services/{name}"""
    out = []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            part = "{" + part[1:-1].split(":")[-1] + "}"
        out.append(part)
    return "/".join(out)
