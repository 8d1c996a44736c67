"""Flask hook: bind each incoming request's id so client calls made while handling it pass it on.

Flask is imported only when ``init_app`` runs; ``atlas.client`` itself never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atlas.client.request_id import (
    DEFAULT_HEADER,
    bind_request_id,
    clean_request_id,
    new_request_id,
    unbind_request_id,
)

if TYPE_CHECKING:
    from flask import Flask
    from flask.wrappers import Response


def init_app(app: Flask, header: str | None = None) -> None:
    """Bind the incoming request id (or a new one) for each request and echo it on the response."""
    import flask

    name = header or app.config.get("ATLAS_REQUEST_ID_HEADER") or DEFAULT_HEADER

    def bind() -> None:
        rid = clean_request_id(flask.request.headers.get(name)) or new_request_id()
        flask.g.atlas_request_id = rid
        flask.g.atlas_request_id_token = bind_request_id(rid)

    def echo(response: Response) -> Response:
        rid = flask.g.get("atlas_request_id")
        if rid and name not in response.headers:
            response.headers[name] = rid
        return response

    def unbind(_exc: BaseException | None) -> None:
        token = flask.g.pop("atlas_request_id_token", None)
        if token is not None:
            unbind_request_id(token)

    # First, so that other before_request hooks that call services see the id too.
    app.before_request_funcs.setdefault(None, []).insert(0, bind)
    app.after_request(echo)
    app.teardown_request(unbind)
