"""gunicorn entry point: `gunicorn atlas.wsgi:app` (settings from ATLAS_* variables)."""

from atlas.app import create_app

app = create_app()
