"""The HTTP API: flask-restful resources behind a single problem+json error handler."""

from __future__ import annotations

from typing import Any

from flask import Flask, g, request
from flask_restful import Api

from atlas.api import resources as r
from atlas.api.problems import problem_response


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
    api.add_resource(r.ServiceList, "/v1/services")
    api.add_resource(r.ServiceItem, "/v1/services/<string:name>")
    api.add_resource(r.InstanceList, "/v1/services/<string:name>/instances")
    api.add_resource(r.InstanceItem, "/v1/services/<string:name>/instances/<string:instance>")
    api.add_resource(r.HostItem, "/v1/hosts/<string:host>")
    api.add_resource(r.HostDisable, "/v1/hosts/<string:host>/disable")
    api.add_resource(r.HostEnable, "/v1/hosts/<string:host>/enable")
    api.add_resource(r.Info, "/v1/info")

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        ext = app.extensions["atlas"]
        principal = ext.authenticator.authenticate(request.headers.get("Authorization"))
        ext.authenticator.authorize(principal, write=r.request_is_write())
        g.principal = principal

    return api
