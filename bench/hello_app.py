"""The baseline for bench/api_read.py: a hello-world flask-restful endpoint."""

from flask import Flask
from flask_restful import Api, Resource

app = Flask(__name__)


class Hello(Resource):
    """GET / answers a tiny JSON object."""

    def get(self) -> dict[str, str]:
        """Hello."""
        return {"hello": "world"}


Api(app).add_resource(Hello, "/")
