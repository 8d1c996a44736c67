"""Instance fields drain / slow_start_s / disabled_until and the service's min_enabled, in-process
(moto mock_aws): validation, enable/disable interplay, the min_enabled refusals, the expiry's
conditional write, the leader task loop. The same rules on real servers: tests/integration/
test_guard_rails.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask

from atlas.app import create_app
from atlas.config import Settings
from atlas.mirror import instance_payload
from atlas.registry import Instance, Registry, build_models_for
from atlas.registry.expiry import EXPIRY_PRINCIPAL, ExpirySweep
from atlas.registry.store import timestamp
from tests.unit.conftest import Client


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def at(self, **delta: float) -> str:
        """The RFC 3339 form of now + delta."""
        return timestamp(self.now + timedelta(**delta))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(settings: Settings, clock: Clock) -> Registry:
    return Registry(build_models_for(settings), clock=clock)


@pytest.fixture
def app(settings: Settings, registry: Registry) -> Iterator[Flask]:
    """The Atlas app on a registry whose clock the test moves."""
    app = create_app(settings=settings, registry=registry)
    yield app
    app.extensions["atlas"].close()


def url(service: str, iid: str) -> str:
    return f"/v1/services/{service}/instances/{iid}"


def setup(client: Client, name: str = "api", n: int = 3, min_enabled: int = 0) -> list[str]:
    body: dict[str, Any] = {"name": name}
    if min_enabled:
        body["min_enabled"] = min_enabled
    assert client.post("/v1/services", json=body).status_code == 201
    ids = [f"10.0.0.{i}:80" for i in range(1, n + 1)]
    for iid in ids:
        assert client.put(url(name, iid), json={}).status_code == 201
    return ids


# ------------------------------------------------------------------ drain and slow start


def test_drain_and_slow_start_are_stored_returned_and_patchable(client: Client) -> None:
    (a, *_) = setup(client, n=1)
    got = client.get(url("api", a)).json
    assert (got["drain"], got["slow_start_s"], got["disabled_until"]) == (False, 0, None)
    put = client.put(url("api", a), json={"drain": True, "slow_start_s": 30})
    assert put.status_code == 200 and put.json["drain"] is True and put.json["slow_start_s"] == 30
    patched = client.patch(url("api", a), json={"slow_start_s": 0, "drain": False})
    assert (patched.json["drain"], patched.json["slow_start_s"]) == (False, 0)
    patched = client.patch(url("api", a), json={"drain": True})
    assert patched.json["drain"] is True and patched.json["enabled"] is True
    assert client.get(url("api", a)).json["drain"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"drain": "yes"}, "drain"),
        ({"drain": 1}, "drain"),
        ({"slow_start_s": -1}, "slow_start_s"),
        ({"slow_start_s": 3601}, "slow_start_s"),
        ({"slow_start_s": "30"}, "slow_start_s"),
        ({"slow_start_s": 1.5}, "slow_start_s"),
    ],
)
def test_bad_drain_and_slow_start_are_422_naming_the_field(
    client: Client, body: dict[str, Any], field: str
) -> None:
    (a, *_) = setup(client, n=1)
    for method in (client.patch, client.put):
        resp = method(url("api", a), json=body)
        assert resp.status_code == 422, resp.json
        assert field in resp.json["errors"]
    assert client.get(url("api", a)).json["version"] == 1  # nothing written


def test_enabling_clears_drain_reason_and_end_unless_the_same_patch_drains(
    client: Client, clock: Clock
) -> None:
    (a, *_) = setup(client, n=1)
    client.patch(url("api", a), json={"drain": True})
    off = client.patch(
        url("api", a),
        json={"enabled": False, "disabled_reason": "deploy", "disabled_until": clock.at(hours=1)},
    )
    assert off.json["drain"] is True  # a disable leaves drain as it was
    on = client.patch(url("api", a), json={"enabled": True}).json
    assert (on["enabled"], on["drain"], on["disabled_reason"], on["disabled_until"]) == (
        True, False, None, None,
    )  # fmt: skip
    client.patch(url("api", a), json={"enabled": False})
    on = client.patch(url("api", a), json={"enabled": True, "drain": True}).json
    assert (on["enabled"], on["drain"]) == (True, True)


def test_payload_carries_drain_and_slow_start_only_when_set(registry: Registry) -> None:
    base: dict[str, Any] = dict(
        service="api", host="10.0.0.1", port=80, enabled=True, weight=100, zone=None, labels={},
        disabled_reason=None, version=1, created_at="2026-01-01T00:00:01.500Z",
        updated_at="2026-01-01T00:00:02.000Z",
    )  # fmt: skip
    plain = json.loads(instance_payload(Instance(**base)))
    assert "drain" not in plain and "slow_start_s" not in plain and "disabled_until" not in plain
    both = json.loads(instance_payload(Instance(**base, drain=True, slow_start_s=20)))
    assert (both["drain"], both["slow_start_s"]) == (True, 20)
    # Curator's and Synapse's fields are the same either way.
    assert {k: v for k, v in both.items() if k not in ("drain", "slow_start_s")} == plain


# ------------------------------------------------------------------ disabled_until


def test_timed_disable_is_stored_in_utc_and_a_plain_disable_is_open_ended(
    client: Client, clock: Clock
) -> None:
    (a, *_) = setup(client, n=1)
    local = (clock.now + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=2)))
    off = client.patch(
        url("api", a), json={"enabled": False, "disabled_until": local.isoformat()}
    ).json
    assert off["disabled_until"] == clock.at(minutes=30)  # normalized: UTC, ms, Z
    assert off["enabled"] is False
    again = client.patch(url("api", a), json={"enabled": False, "disabled_reason": "longer"}).json
    assert again["disabled_until"] is None  # a disable without an end replaces the old end
    timed = client.patch(
        url("api", a), json={"enabled": False, "disabled_until": clock.at(hours=2)}
    )
    assert timed.json["disabled_until"] == clock.at(hours=2)
    reason = client.patch(url("api", a), json={"disabled_reason": "kernel"}).json
    assert reason["disabled_until"] == clock.at(hours=2)  # other changes keep the end
    forever = client.patch(url("api", a), json={"enabled": False, "disabled_until": None}).json
    assert forever["disabled_until"] is None and forever["enabled"] is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"disabled_until": "+1h"}, "Only on a disable"),
        ({"enabled": True, "disabled_until": "+1h"}, "Only on a disable"),
        ({"enabled": False, "disabled_until": "-1s"}, "Must be in the future."),
        ({"enabled": False, "disabled_until": "+0s"}, "Must be in the future."),
        ({"enabled": False, "disabled_until": "+31d"}, "at most 30 days"),
        ({"enabled": False, "disabled_until": "2026-05-01T12:00:00"}, "RFC 3339"),
        ({"enabled": False, "disabled_until": "2026-05-01 12:00:00Z"}, "RFC 3339"),
        ({"enabled": False, "disabled_until": "2026-05-01T25:00:00Z"}, "RFC 3339"),
        ({"enabled": False, "disabled_until": "tomorrow"}, "RFC 3339"),
        ({"enabled": False, "disabled_until": 1777629600}, "RFC 3339"),
    ],
)
def test_bad_disabled_until_is_422_naming_it_and_writes_nothing(
    client: Client, clock: Clock, body: dict[str, Any], message: str
) -> None:
    (a, *_) = setup(client, n=1)
    value = body["disabled_until"]
    if isinstance(value, str) and value[0] in "+-":
        unit = {"s": "seconds", "h": "hours", "d": "days"}[value[-1]]
        amount = float(value[1:-1]) * (1 if value[0] == "+" else -1)
        body = {**body, "disabled_until": clock.at(**{unit: amount})}
    resp = client.patch(url("api", a), json=body)
    assert resp.status_code == 422, resp.json
    assert any(message in m for m in resp.json["errors"]["disabled_until"]), resp.json
    put = client.put(url("api", a), json=body)
    assert put.status_code == 422 and "disabled_until" in put.json["errors"]
    assert client.get(url("api", a)).json["version"] == 1


def test_disabled_until_at_the_bound_and_with_lower_case_and_nanoseconds(
    client: Client, clock: Clock
) -> None:
    (a, *_) = setup(client, n=1)
    bound = clock.at(days=30)
    assert (
        client.patch(url("api", a), json={"enabled": False, "disabled_until": bound}).json[
            "disabled_until"
        ]
        == bound
    )
    odd = "2026-05-01t11:00:00.123456789z"
    got = client.patch(url("api", a), json={"enabled": False, "disabled_until": odd})
    assert got.status_code == 200 and got.json["disabled_until"] == "2026-05-01T11:00:00.123Z"


def test_host_disable_takes_an_end_and_host_enable_refuses_one(
    client: Client, clock: Clock
) -> None:
    setup(client, n=1)
    resp = client.post(
        "/v1/hosts/10.0.0.1/disable", json={"reason": "reboot", "disabled_until": clock.at(hours=1)}
    )
    assert resp.status_code == 200
    assert [i["disabled_until"] for i in resp.json["items"]] == [clock.at(hours=1)]
    bad = client.post("/v1/hosts/10.0.0.1/enable", json={"disabled_until": clock.at(hours=1)})
    assert bad.status_code == 422 and "disabled_until" in bad.json["errors"]
    past = client.post("/v1/hosts/10.0.0.1/disable", json={"disabled_until": clock.at(hours=-1)})
    assert past.status_code == 422 and "disabled_until" in past.json["errors"]


# ------------------------------------------------------------------ expiry


class Audit:
    """An audit sink that keeps what it was given."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, **fields: Any) -> None:
        self.records.append(fields)


def test_the_sweep_enables_what_is_due_only_and_records_it(
    client: Client, registry: Registry, clock: Clock
) -> None:
    a, b, c = setup(client)
    client.patch(url("api", a), json={"drain": True})
    client.patch(url("api", a), json={"enabled": False, "disabled_until": clock.at(seconds=2)})
    client.patch(url("api", b), json={"enabled": False, "disabled_until": clock.at(minutes=5)})
    client.patch(url("api", c), json={"enabled": False, "disabled_reason": "broken"})
    audit = Audit()
    sweep = ExpirySweep(registry, audit)
    assert sweep.run_once() == []
    clock.now += timedelta(seconds=3)
    enabled = sweep.run_once()
    assert [i.id for i in enabled] == [a]
    got = client.get(url("api", a)).json
    assert (got["enabled"], got["disabled_until"], got["drain"], got["version"]) == (
        True, None, False, 4,
    )  # fmt: skip
    assert client.get(url("api", b)).json["enabled"] is False
    assert client.get(url("api", c)).json["enabled"] is False
    assert audit.records == [
        {
            "service": "api", "principal": EXPIRY_PRINCIPAL, "token_id": None,
            "action": "expire disabled_until", "method": "PATCH",
            "path": f"/v1/services/api/instances/{a}", "status": 200, "target": a,
        }
    ]  # fmt: skip
    assert sweep.run_once() == [] and sweep.counters["enabled"] == 1


def test_a_stale_sweep_never_undoes_a_later_manual_change(
    client: Client, registry: Registry, clock: Clock
) -> None:
    a, b, _ = setup(client)
    for iid in (a, b):
        client.patch(
            url("api", iid), json={"enabled": False, "disabled_until": clock.at(seconds=1)}
        )
    clock.now += timedelta(seconds=2)
    first, second = ExpirySweep(registry, Audit()), ExpirySweep(registry, Audit())
    seen = registry.due_expiries()  # what a sweep read, before the operator acted
    assert sorted(d.instance_id for d in seen) == [a, b]
    # The operator extends a's disable after the end passed; another sweep enables b.
    client.patch(url("api", a), json={"enabled": False, "disabled_until": clock.at(hours=1)})
    assert [i.id for i in second.run_once()] == [b]
    # The stale reader writes now: nothing, because neither is at the version it read.
    assert [registry.expire_disable(d) for d in seen] == [None, None]
    assert first.run_once() == []
    got = client.get(url("api", a)).json
    assert (got["enabled"], got["disabled_until"]) == (False, clock.at(hours=1))
    assert client.get(url("api", b)).json["enabled"] is True
    assert registry.get_instance("api", "10.0.0.2", 80).version == 3  # enabled once


def test_an_instance_enabled_by_hand_leaves_nothing_due(
    client: Client, registry: Registry, clock: Clock
) -> None:
    (a, *_) = setup(client, n=1)
    client.patch(url("api", a), json={"enabled": False, "disabled_until": clock.at(seconds=1)})
    client.patch(url("api", a), json={"enabled": True})
    clock.now += timedelta(seconds=5)
    assert registry.due_expiries() == []
    client.patch(url("api", a), json={"enabled": False, "disabled_until": clock.at(seconds=1)})
    client.post("/v1/hosts/10.0.0.1/enable")
    clock.now += timedelta(seconds=5)
    assert registry.due_expiries() == []


# ------------------------------------------------------------------ min_enabled


def test_min_enabled_is_stored_returned_and_patchable(client: Client) -> None:
    assert client.post("/v1/services", json={"name": "api"}).json["min_enabled"] == 0
    assert client.patch("/v1/services/api", json={"min_enabled": 2}).json["min_enabled"] == 2
    assert client.get("/v1/services/api").json["min_enabled"] == 2
    assert client.patch("/v1/services/api", json={"min_enabled": 0}).json["min_enabled"] == 0
    for bad in (-1, 10001, "2", True, None):
        resp = client.patch("/v1/services/api", json={"min_enabled": bad})
        assert resp.status_code == 422 and "min_enabled" in resp.json["errors"]


def test_disable_below_min_enabled_is_409_naming_service_and_count(client: Client) -> None:
    a, b, c = setup(client, min_enabled=2)
    assert client.patch(url("api", a), json={"enabled": False}).status_code == 200
    refused = client.patch(url("api", b), json={"enabled": False, "disabled_reason": "x"})
    assert refused.status_code == 409
    problem = refused.json
    assert problem["type"].endswith("/min-enabled")
    assert "'api'" in problem["detail"] and "2" in problem["detail"] and "1" in problem["detail"]
    assert problem["refused"] == [{"service": "api", "min_enabled": 2, "enabled_after": 1}]
    assert client.get(url("api", b)).json["enabled"] is True  # nothing written
    # draining, detaching and replacing with a disabled instance are refused the same way
    assert client.patch(url("api", b), json={"drain": True}).status_code == 409
    assert client.delete(url("api", b)).status_code == 409
    assert client.put(url("api", b), json={"enabled": False}).status_code == 409
    assert client.put(url("api", b), json={"drain": True}).status_code == 409
    # what does not take b out of service goes through
    assert client.patch(url("api", b), json={"weight": 5}).status_code == 200
    assert client.put(url("api", b), json={"zone": "z"}).status_code == 200
    assert client.delete(url("api", a)).status_code == 204  # a was disabled already
    # force does it anyway
    assert client.patch(url("api", b) + "?force=true", json={"enabled": False}).status_code == 200
    assert client.patch(url("api", c) + "?force=true", json={"drain": True}).json["drain"] is True
    # and enabling is never refused, even below the floor
    assert client.patch(url("api", b), json={"enabled": True}).status_code == 200


def test_a_draining_instance_does_not_count_as_enabled(client: Client) -> None:
    a, b, _ = setup(client, min_enabled=2)
    assert client.patch(url("api", a), json={"drain": True}).status_code == 200
    assert client.patch(url("api", b), json={"enabled": False}).status_code == 409
    assert client.delete(url("api", a)).status_code == 204  # draining: not counted, not refused


def test_force_must_be_a_boolean(client: Client) -> None:
    a, *_ = setup(client, n=1)
    resp = client.patch(url("api", a) + "?force=maybe", json={"enabled": False})
    assert resp.status_code == 422 and "force" in resp.json["errors"]
    assert client.get(url("api", a)).json["enabled"] is True


def test_host_disable_is_one_decision_and_writes_nothing_when_refused(client: Client) -> None:
    # Host 10.0.0.1 runs one of api's 3 instances (min 2: fine), solo's only one (min 1:
    # refused) and free's (no floor).
    setup(client, "api", n=3, min_enabled=2)
    assert client.post("/v1/services", json={"name": "solo", "min_enabled": 1}).status_code == 201
    client.put(url("solo", "10.0.0.1:9000"), json={})
    assert client.post("/v1/services", json={"name": "free"}).status_code == 201
    client.put(url("free", "10.0.0.1:7000"), json={})
    refused = client.post("/v1/hosts/10.0.0.1/disable", json={"reason": "disk"})
    assert refused.status_code == 409
    assert refused.json["refused"] == [{"service": "solo", "min_enabled": 1, "enabled_after": 0}]
    assert "'solo'" in refused.json["detail"]
    host = client.get("/v1/hosts/10.0.0.1").json["items"]
    assert [(i["service"], i["enabled"], i["version"]) for i in host] == [
        ("api", True, 1), ("free", True, 1), ("solo", True, 1),
    ]  # fmt: skip
    # two services refused at once are both named
    client.patch("/v1/services/api", json={"min_enabled": 3})
    both = client.post("/v1/hosts/10.0.0.1/disable").json
    assert [r["service"] for r in both["refused"]] == ["api", "solo"]
    forced = client.post("/v1/hosts/10.0.0.1/disable?force=true", json={"reason": "disk"})
    assert forced.status_code == 200
    assert {(i["service"], i["enabled"], i["disabled_reason"]) for i in forced.json["items"]} == {
        ("api", False, "disk"), ("free", False, "disk"), ("solo", False, "disk"),
    }  # fmt: skip


def test_host_disable_leaves_already_disabled_instances_alone(client: Client, clock: Clock) -> None:
    setup(client, n=1)
    client.patch(
        url("api", "10.0.0.1:80"),
        json={"enabled": False, "disabled_reason": "own", "disabled_until": clock.at(hours=3)},
    )
    body = client.post("/v1/hosts/10.0.0.1/disable", json={"disabled_until": clock.at(hours=1)})
    (inst,) = body.json["items"]
    assert (inst["disabled_reason"], inst["disabled_until"], inst["version"]) == (
        "own", clock.at(hours=3), 2,
    )  # fmt: skip


def test_host_enable_undrains(client: Client) -> None:
    setup(client, n=1)
    client.patch(url("api", "10.0.0.1:80"), json={"drain": True})
    (inst,) = client.post("/v1/hosts/10.0.0.1/enable").json["items"]
    assert (inst["enabled"], inst["drain"]) == (True, False)
