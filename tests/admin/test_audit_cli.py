"""`atlas audit` shows what each mutation changed."""

from __future__ import annotations

import json

from tests.admin.conftest import Cli
from tests.helpers import wait_until


def test_audit_shows_changes(cli: Cli, name: str) -> None:
    assert cli("services", "create", name, "--port", "8000").exit_code == 0
    assert cli("attach", name, "10.1.0.9:80", "--zone", "a").exit_code == 0
    assert cli("disable", name, "10.1.0.9:80", "--reason", "deploying v42").exit_code == 0
    action = "PATCH /v1/services/{name}/instances/{instance}"
    r = wait_until(
        lambda: (r := cli("audit", "--service", name)).exit_code == 0 and action in r.stdout and r,
        what="the disable in the audit trail",
    )
    assert "CHANGES" in r.stdout
    assert "enabled: true → false; disabled_reason: ∅ → deploying v42" in r.stdout
    r = cli("audit", "--service", name, "--json")
    records = json.loads(r.stdout)
    created = [x for x in records if x["action"] == "POST /v1/services"]
    assert created and created[0]["service"] == name
    assert {"field": "port", "before": None, "after": 8000} in created[0]["changes"]
