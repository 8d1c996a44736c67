"""Smart Service: the Flask app every service of the cluster starts from, and `atlas new-service`.

    from atlas.service import SmartService
    from myservice import config

    app = SmartService("myservice", config=config)
    app.api.add_resource(Hello, "/hello")

Run it under gunicorn with self-registration and drain: `atlas-service 'myservice.app:app'`.
Ships without pynamodb/boto3 (nothing of `atlas.api` or `atlas.registry` is imported).
"""

from atlas.service.app import PerProcess, SmartService, current_service, secret
from atlas.service.problems import PROBLEM_JSON, problem_response

__all__ = [
    "PROBLEM_JSON",
    "PerProcess",
    "SmartService",
    "current_service",
    "problem_response",
    "secret",
]
