"""The master's registration state machine, on a scripted Atlas and a hand-driven clock."""

from __future__ import annotations

from typing import Any

from atlas.contract import instance_id
from atlas.service.registration import Lifecycle, Registration


class Scripted(Registration):
    """A Registration whose calls are recorded; `up` says whether Atlas answers."""

    def __init__(self) -> None:
        super().__init__("http://atlas.invalid", "greeter", "127.0.0.1", 8123)
        self.calls: list[str] = []
        self.up = True

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append(method)
        if not self.up:
            self.errors += 1
            return None

        class Resp:
            status_code = {"PUT": 201, "PATCH": 200, "DELETE": 204, "POST": 201}[method]

        return Resp()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_attach_retries_until_atlas_answers_then_drains_on_term() -> None:
    reg, clock = Scripted(), Clock()
    life = Lifecycle(reg, drain_s=10, retry_s=5, clock=clock)
    reg.up = False
    assert life.tick() is False and life.state == "starting" and reg.errors == 1
    clock.t += 1
    life.tick()
    assert reg.calls == ["PUT"]  # not retried before retry_s
    reg.up = True
    clock.t += 5
    assert life.tick() is False and life.state == "attached"
    assert reg.calls == ["PUT", "PUT"]

    assert life.term() is False  # drain starts: keep serving
    assert life.state == "draining" and reg.calls[-1] == "PATCH"
    clock.t += 9.9
    assert life.tick() is False and reg.calls[-1] == "PATCH"
    clock.t += 0.2
    assert life.tick() is True and reg.calls[-1] == "DELETE" and life.state == "stopped"
    assert life.term() is True and reg.calls.count("DELETE") == 1  # stopped stays stopped


def test_second_term_cuts_the_drain_short() -> None:
    reg, clock = Scripted(), Clock()
    life = Lifecycle(reg, drain_s=30, clock=clock)
    life.tick()
    assert life.term() is False
    assert life.term() is True and reg.calls == ["PUT", "PATCH", "DELETE"]


def test_interrupt_detaches_without_a_drain_and_term_before_attach_stops_at_once() -> None:
    reg = Scripted()
    life = Lifecycle(reg, clock=Clock())
    life.tick()
    assert life.interrupt() is True and reg.calls == ["PUT", "DELETE"]

    never = Scripted()
    never.up = False
    life = Lifecycle(never, clock=Clock())
    life.tick()
    assert life.term() is True and never.calls == ["PUT", "DELETE"]  # best-effort detach


def test_without_registration_gunicorns_own_behaviour() -> None:
    life = Lifecycle(None)
    assert life.tick() is False and life.term() is True and life.interrupt() is True


def test_instance_ids() -> None:
    assert instance_id("10.0.0.1", 80) == "10.0.0.1:80"
    assert instance_id("::1", 80) == "[::1]:80"
    reg = Registration("http://a/", "greeter", "::1", 8080)
    assert reg.path == "/v1/services/greeter/instances/[::1]:8080"
