"""WSGI entry point: `gunicorn -c python:atlas.gunicorn_conf atlas.wsgi:app` (ATLAS_* settings).

Importing it only configures (safe before gunicorn forks, `--preload` included): the
ZooKeeper session and the background threads start in each worker after the fork, from
`atlas.gunicorn_conf`, or on the first request under any other WSGI server.
"""

from atlas.app import create_app

app = create_app()
