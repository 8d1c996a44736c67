"""The dashboard at /ui/: server-rendered pages of the cluster map, enable/disable forms.

Register with `app.register_blueprint(ui_blueprint)` after the Atlas extension
is set up (it reads the settings and the registry from `app.extensions["atlas"]`).
Same auth as the API: a bearer token entered once at /ui/login, kept sealed in
an HttpOnly, SameSite=Strict session cookie; with auth off (local realm) there
is no login. Every form carries the session's CSRF token.
"""

from atlas.ui.views import ui_blueprint

__all__ = ["ui_blueprint"]
