"""Timeouts: a default for every call, and a caller's timeout bounding a service:// call."""

from __future__ import annotations

import pytest
import requests
from urllib3.exceptions import ReadTimeoutError

from atlas.client import AtlasRetry, Session

from .conftest import MakeBackend, MakeSidecar
from .test_unit import FakeTime

pytestmark = pytest.mark.integration


def test_plain_http_calls_get_the_session_default_timeout(make_backend: MakeBackend) -> None:
    slow = make_backend("slow", delay=1.0)
    with Session(timeout=(1.0, 0.2)) as session:
        with pytest.raises(requests.ReadTimeout):
            session.get(slow.url + "/")
        with pytest.raises(requests.ReadTimeout):
            session.get(slow.url + "/", timeout=None)  # None is "no timeout given"
        # An explicit timeout wins; (None, None) waits as long as it takes.
        assert session.get(slow.url + "/", timeout=5).status_code == 200
        assert session.get(slow.url + "/", timeout=(None, None)).status_code == 200


def test_a_read_timeout_is_not_retried(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    slow = make_backend("slow", delay=1.0)
    proxy = make_sidecar({"slow": [slow]})
    with Session(sidecar_url=proxy.url) as session, pytest.raises(requests.ReadTimeout):
        session.get("service://slow/", timeout=0.3)
    assert len(slow.hits) == 1


def test_read_timeouts_retried_when_asked_onto_a_healthy_instance(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    slow, fast = make_backend("slow", delay=1.0), make_backend("fast")
    proxy = make_sidecar({"mixed": [slow, fast]})
    retry = AtlasRetry(retry_read_timeouts=True)
    with Session(sidecar_url=proxy.url, retries=retry) as session:
        responses = [session.get(f"service://mixed/{i}", timeout=(2, 0.3)) for i in range(4)]
    assert all(r.json()["instance"] == "fast" for r in responses)
    assert slow.hits, "round robin never reached the slow instance"
    errors = [h.error for r in responses for h in r.raw.retries.history]
    assert errors and all(isinstance(e, ReadTimeoutError) for e in errors)


def test_the_callers_timeout_cuts_the_retry_budget(
    make_backend: MakeBackend, make_sidecar: MakeSidecar
) -> None:
    down = make_backend("down", "status", status=503)
    proxy = make_sidecar({"down": [down]})
    fake = FakeTime()

    def retry() -> AtlasRetry:
        return AtlasRetry(
            total=50,
            budget=10.0,
            backoff_factor=0.5,
            backoff_jitter=0.0,
            clock=fake.clock,
            sleeper=fake.sleep,
        )

    with Session(sidecar_url=proxy.url, retries=retry()) as session:
        assert session.get("service://down/", timeout=(0.5, 1.0)).status_code == 503
    # Budget 1.5 s (connect + read): waits 0, then 1.0; the next backoff (2 s) would
    # use up what is left, so the third 503 is the answer.
    assert fake.sleeps == pytest.approx([1.0])
    assert len(down.hits) == 3
    fake.sleeps.clear()
    with Session(sidecar_url=proxy.url, retries=retry()) as session:
        assert session.get("service://down/").status_code == 503
    # No timeout given: the whole 10 s budget (backoff 0, 1, then 2 at most, 1 left at the end).
    assert fake.sleeps == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 1.0])
