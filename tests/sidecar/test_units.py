"""Pure parts and the loop with a fake clock, fake source and fake HAProxy: no waiting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from atlas.sidecar.core import InlineExecutor, LoopSettings, Sidecar
from atlas.sidecar.haproxy import parse_show_proc
from atlas.sidecar.model import HealthCheck, Instance, Service, Snapshot, build_snapshot
from atlas.sidecar.plan import guard, plan_changes
from atlas.sidecar.render import RenderOptions, render
from atlas.sidecar.timing import Debouncer, ReloadPacer
from atlas.sidecar.watch import ViewChanges
from tests.sidecar.conftest import Registry

GOLDEN = Path(__file__).parent / "golden"


def snap(*services: Service) -> Snapshot:
    return Snapshot(services)


def svc(name: str, *ports: int, hc: HealthCheck | None = None, **kw: object) -> Service:
    return Service(name, hc).with_instances(tuple(Instance("10.0.0.1", p, **kw) for p in ports))  # type: ignore[arg-type]


# -- timing ---------------------------------------------------------------------------------


def test_debouncer_is_immediate_when_quiet_and_coalesces_bursts():
    d = Debouncer(quiet_s=0.05, max_s=0.2)
    assert not d.take(0.0)
    d.poke(1.0)
    assert d.take(1.0)  # leading edge: nothing happened for a while
    d.poke(1.01)
    d.poke(1.04)
    assert not d.take(1.08)
    assert d.take(1.09)  # trailing edge of the burst
    assert not d.take(5.0)  # consumed
    d.poke(2.0)
    assert d.take(2.0)
    for i in range(1, 100):  # a never-ending stream is still taken after max_s
        d.poke(2.0 + i * 0.01)
        if d.take(2.0 + i * 0.01):
            break
    assert 2.0 + i * 0.01 == pytest.approx(2.21)


def test_pacer_spaces_reloads_with_jitter():
    p = ReloadPacer(min_interval_s=2.0, jitter_s=1.0, rng=lambda: 0.5)
    assert p.ready(0.0)
    p.record(10.0)
    assert not p.ready(12.4)
    assert p.ready(12.5)
    assert p.next_allowed() == 12.5


# -- model ----------------------------------------------------------------------------------


def test_parses_design_payloads_and_ignores_garbage():
    disabled = Registry.instance_data("api", 8080, enabled=False, weight=7, host="10.1.2.3")
    synapse_only = json.dumps(
        {"host": "10.1.2.4", "port": 8081, "haproxy_server_options": "disabled"}
    ).encode()
    raw = {
        "api": (
            json.dumps({"name": "api", "health_check": {"path": "/hc", "interval_s": 2}}).encode(),
            {
                "10.1.2.3:8080": disabled,
                "10.1.2.4:8081": synapse_only,
                "garbage": b"{}",
                "10.1.2.5:99999": b"{}",
                "10.1.2.6:80": b"\xff",
                "10.1.2.7:81": json.dumps({"port": 82}).encode(),
            },
        ),
        "Bad Name": (b"{}", {}),
        "evil": (json.dumps({"health_check": {"path": "/x\nbackend y"}}).encode(), {}),
    }
    s, warnings = build_snapshot(raw)
    api = s.get("api")
    assert api is not None and api.health_check == HealthCheck("/hc", 2000, 2000)
    assert [(i.key, i.enabled, i.weight) for i in api.instances] == [
        ("10.1.2.3:8080", False, 7),
        ("10.1.2.4:8081", False, 100),
    ]
    assert s.get("evil") is not None and s.get("evil").health_check is None  # type: ignore[union-attr]
    assert s.names() == {"api", "evil"}
    assert len(warnings) == 6


# -- render ---------------------------------------------------------------------------------


def golden_snapshot() -> Snapshot:
    return snap(
        Service("users", HealthCheck("/healthz", 1000, 500)).with_instances(
            (
                Instance("10.0.0.2", 8080, weight=50),
                Instance("10.0.0.1", 8080),
                Instance("host-b.internal", 9000, enabled=False, address="10.0.0.9"),
            )
        ),
        Service("billing-api").with_instances((Instance("10.0.0.3", 7000, weight=0),)),
        Service("empty"),
    )


@pytest.mark.parametrize("name", ["three_services", "no_services"])
def test_render_matches_golden_files(name: str):
    snapshot = golden_snapshot() if name == "three_services" else Snapshot()
    options = RenderOptions(port=4000, admin_socket="/run/atlas/admin.sock", realm="local")
    text = render(snapshot, options)
    path = GOLDEN / f"{name}.cfg"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_render_is_deterministic_and_order_free():
    a = golden_snapshot()
    b = Snapshot(tuple(reversed(a.services)))
    o = RenderOptions()
    assert render(a, o) == render(b, o)
    assert "Atlas-Tenant" in render(a, RenderOptions(header="Atlas-Tenant"))
    with pytest.raises(ValueError):
        RenderOptions(header="bad header\n")


def test_golden_config_is_valid_haproxy(tmp_path: Path):
    from atlas.sidecar.haproxy import HAProxy

    cfg = tmp_path / "h.cfg"
    cfg.write_text(render(golden_snapshot(), RenderOptions(admin_socket=str(tmp_path / "a.sock"))))
    ok, out = HAProxy(cfg, tmp_path / "m.sock", tmp_path / "a.sock").check(cfg)
    assert ok, out


# -- plan and guard -------------------------------------------------------------------------


def test_plan_uses_runtime_for_server_changes_and_reload_for_structure():
    old = snap(svc("a", 1, 2))
    new = snap(
        Service("a").with_instances(
            (Instance("10.0.0.1", 1, enabled=False), Instance("10.0.0.1", 3, weight=5))
        )
    )
    p = plan_changes(old, new)
    assert not p.needs_reload
    assert sorted(op.kind for op in p.ops) == ["add", "delete", "state"]
    assert p.after_runtime == new
    add = next(op for op in p.ops if op.kind == "add")
    assert add.commands[0].startswith("add server a/10.0.0.1:3 10.0.0.1:3 id ")
    assert add.commands[-1] == "enable server a/10.0.0.1:3"

    assert plan_changes(old, snap(svc("a", 1, 2), svc("b", 1))).needs_reload  # new service
    assert plan_changes(
        old, snap(svc("a", 1, 2, hc=HealthCheck("/h")))
    ).needs_reload  # health check
    assert plan_changes(old, snap()).needs_reload  # deleted service
    assert plan_changes(None, old).needs_reload  # unknown running state
    assert plan_changes(old, old) == plan_changes(old, old) and not plan_changes(old, old).ops


def test_guard_holds_suddenly_empty_backends_until_grace():
    prev = snap(svc("a", 1, 2), svc("b", 1), Service("c"))
    wiped = Snapshot()
    g = guard(prev, wiped, now=100.0, held_since={}, grace_s=30)
    assert g.held == ("a", "b")
    assert g.snapshot == snap(svc("a", 1, 2), svc("b", 1))  # c had no instance: dropped
    g2 = guard(g.snapshot, snap(Service("a"), svc("b", 7)), 120.0, g.held_since, 30)
    assert g2.held == ("a",)
    assert g2.snapshot.get("a") == svc("a", 1, 2)
    assert g2.snapshot.get("b") == svc("b", 7)
    g3 = guard(g2.snapshot, snap(Service("a"), svc("b", 7)), 131.0, g2.held_since, 30)
    assert g3.held == () and g3.snapshot.get("a") == Service("a")  # a real removal, in the end
    assert guard(prev, snap(svc("a", 2), svc("b", 1)), 0, {}, 30).held == ()  # shrinking is fine


def test_parse_show_proc():
    text = (
        "#<PID>          <type>          <reloads>       <uptime>        <version>\n"
        "4094            master          3 [failed: 1]   0d00h00m03s     2.6.12\n"
        "# workers\n"
        "4144            worker          0               0d00h00m00s     2.6.12\n"
        "# old workers\n"
        "4097            worker          1               0d00h00m05s     2.6.12\n"
        "# programs\n"
    )
    assert parse_show_proc(text) == (3, 1, [4144])


# -- the loop with fakes ----------------------------------------------------------------------


class FakeSource:
    """Whole snapshots in, per-service changes out (as ZooKeeperSource.drain hands them)."""

    connected = True
    initialized = True

    def __init__(self) -> None:
        self.view = Snapshot()
        self.drained = Snapshot()
        self.listener = lambda: None
        self.deliberate: set[str] = set()
        self.index = 0
        self.reports: list[bytes] = []

    def set_listener(self, listener):  # type: ignore[no-untyped-def]
        self.listener = listener

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def maintain(self) -> None: ...

    def resync(self) -> None:
        self.drained = Snapshot()

    def drain(self) -> ViewChanges:
        old = {s.name: s for s in self.drained.services}
        new = {s.name: s for s in self.view.services}
        changes = ViewChanges(index=self.index)
        for name in old.keys() | new.keys():
            if old.get(name) != new.get(name):
                changes.services[name] = new.get(name)
        changes.deliberate = self.deliberate & set(changes.services)
        self.drained = self.view
        return changes

    def publish_report(self, data: bytes) -> None:
        self.reports.append(data)

    def report_counters(self):  # type: ignore[no-untyped-def]
        return {"writes": len(self.reports)}

    def publish(self, view: Snapshot) -> None:
        self.view = view
        self.index += 1
        self.listener()


class FakeProxy:
    pid = 4242

    def __init__(self, path: Path, valid: bool = True) -> None:
        self.config_path = path
        self.valid = valid
        self.reloads = 0
        self.commands: list[str] = []
        self.checks = 0

    def start(self, timeout: float = 15.0, takeover: int | None = None) -> None: ...

    def adopt(self) -> bool:
        return False

    def leftover_pid(self) -> int | None:
        return None

    def running(self) -> bool:
        return True

    def stop(self, timeout: float = 10.0) -> None: ...

    def forget(self) -> None: ...

    def admin(self, command: str) -> str:
        self.commands.append(command)
        return "New server registered." if command.startswith("add ") else ""

    def admin_many(self, commands: list[str]) -> list[str]:
        return [self.admin(c) for c in commands]

    def check(self, path: Path, timeout: float | None = None) -> tuple[bool, str]:
        self.checks += 1
        return self.valid, "" if self.valid else "[ALERT] broken"

    def show_proc(self, timeout: float = 5.0):  # type: ignore[no-untyped-def]
        return self.reloads, 0, [1000 + self.reloads]

    def servers_state(self, backend: str | None = None) -> list:  # type: ignore[type-arg]
        return []

    def show_map(self, path: str) -> dict[str, str]:
        return {}

    def version(self) -> str:
        return "2.6-fake"

    def reload(self, timeout: float = 15.0) -> int:
        self.reloads += 1
        return 1000 + self.reloads


def refuse_deletes(proxy: FakeProxy, *servers: str) -> set[str]:
    """Make `del server` fail for these servers, as HAProxy does while connections are attached.

    Returns the set; empty it to let the deletes through.
    """
    busy = set(servers)
    answer = proxy.admin

    def admin(command: str) -> str:
        if command.startswith("del server ") and command.split()[-1] in busy:
            proxy.commands.append(command)
            return "Server still has connections attached to it, cannot remove it."
        return answer(command)

    proxy.admin = admin  # type: ignore[method-assign]
    return busy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def loop(tmp_path: Path):  # type: ignore[no-untyped-def]
    clock, source, proxy = Clock(), FakeSource(), FakeProxy(tmp_path / "haproxy.cfg")
    settings = LoopSettings(
        debounce_s=0.05,
        debounce_max_s=0.5,
        reload_min_interval_s=2.0,
        reload_jitter_s=1.0,
        file_sync_delay_s=0.0,  # the file follows runtime changes in the same step
        drain_shutdown_s=0.0,  # a busy removed server has its sessions cut at once
    )
    sc = Sidecar(
        source,
        proxy,
        RenderOptions(),
        settings,
        clock=clock,
        rng=lambda: 0.5,
        executor=InlineExecutor(),
    )
    sc.boot()
    return sc, clock, source, proxy


def test_loop_debounces_bursts_into_one_reload(loop):  # type: ignore[no-untyped-def]
    sc, clock, source, proxy = loop
    source.publish(snap(svc("s0", 1)))
    sc.step()
    assert proxy.reloads == 1  # after a quiet period: at once
    clock.t += 5
    for n in range(1, 5):  # then four more services within 40 ms: one reload for them
        source.publish(snap(*(svc(f"s{i}", 1) for i in range(n + 1))))
        sc.step()
        clock.t += 0.01
    assert proxy.reloads == 2  # s0+s1 at once (leading edge)
    clock.t += 0.05
    sc.step()
    assert proxy.reloads == 2  # s2..s4 coalesced, then held by the reload pacing
    clock.t += 2.5
    sc.step()
    assert proxy.reloads == 3
    assert sc.running is not None and len(sc.running.services) == 5
    assert "backend s4" in proxy.config_path.read_text()


def test_loop_paces_reloads_but_not_runtime_updates(loop):  # type: ignore[no-untyped-def]
    sc, clock, source, proxy = loop
    source.publish(snap(svc("a", 1)))
    clock.t += 1
    sc.step()
    assert proxy.reloads == 1
    source.publish(snap(svc("a", 1), svc("b", 1)))
    clock.t += 1
    wait = sc.step()
    assert proxy.reloads == 1  # paced: 2 s + 0.5 s jitter after the first
    assert 0 < wait <= 1.5
    source.publish(snap(svc("a", 1, enabled=False), svc("b", 1)))
    clock.t += 0.1
    sc.step()
    assert proxy.commands == ["set server a/10.0.0.1:1 state maint"]  # not held back
    assert proxy.reloads == 1
    assert " disabled" in proxy.config_path.read_text()
    clock.t += 1.35  # 2.45 s after the first reload
    sc.step()
    assert proxy.reloads == 1
    clock.t += 0.05
    sc.step()
    assert proxy.reloads == 2
    assert sc.status.reloads == 2 and sc.status.runtime_updates == 1
    assert sc.status_dict()["in_sync"] is True


def test_loop_never_replaces_config_with_a_failing_one(loop):  # type: ignore[no-untyped-def]
    sc, clock, source, proxy = loop
    before = proxy.config_path.read_text()
    proxy.valid = False
    source.publish(snap(svc("a", 1)))
    clock.t += 1
    sc.step()
    assert proxy.reloads == 0
    assert proxy.config_path.read_text() == before
    assert sc.status.check_failures == 1 and "broken" in (sc.status.last_error or "")
    sc.step()
    assert sc.status.check_failures == 1  # backing off, not hammering
    proxy.valid = True
    clock.t += 1
    sc.step()
    assert proxy.reloads == 1 and sc.status.last_error is None


def test_loop_freezes_while_disconnected(loop):  # type: ignore[no-untyped-def]
    sc, clock, source, _proxy = loop
    source.publish(snap(svc("a", 1)))
    clock.t += 1
    sc.step()
    source.connected = False
    source.publish(Snapshot())
    clock.t += 1
    sc.step()
    assert sc.status.stale and sc.running == snap(svc("a", 1))
    source.connected = True
    source.publish(snap(svc("a", 1), svc("b", 2)))
    clock.t += 5
    sc.step()
    assert not sc.status.stale and sc.running is not None and sc.running.get("b") is not None


def test_busy_server_is_drained_not_reloaded(loop):  # type: ignore[no-untyped-def]
    """`del server` refused (keep-alive connections attached): no reload, delete retried later."""
    sc, clock, source, proxy = loop
    source.publish(snap(svc("a", 1, 2)))
    clock.t += 1
    sc.step()
    assert proxy.reloads == 1
    busy = refuse_deletes(proxy, "a/10.0.0.1:2")
    source.publish(snap(svc("a", 1)))
    clock.t += 0.1
    sc.step()
    assert proxy.reloads == 1  # no reload for a busy server
    assert "disable server a/10.0.0.1:2" in proxy.commands
    assert "shutdown sessions server a/10.0.0.1:2" in proxy.commands
    assert sc.running == snap(svc("a", 1))
    assert "10.0.0.1:2" not in proxy.config_path.read_text()
    busy.clear()  # its connections are gone: the next step deletes it
    clock.t += 0.1
    sc.step()
    assert proxy.commands[-1] == "del server a/10.0.0.1:2"
    assert not sc._draining and proxy.reloads == 1


def test_instances_are_added_before_old_ones_are_deleted() -> None:
    """Replacing every instance of a backend never passes through an empty backend."""
    p = plan_changes(snap(svc("a", 1)), snap(svc("a", 2)))
    assert [op.kind for op in p.ops] == ["add", "delete"]


def test_sidecar_ships_without_flask_or_pynamodb() -> None:
    """`atlas.sidecar` (and what it imports) never pulls in the API's dependencies."""
    import subprocess
    import sys

    code = (
        "import sys, atlas.sidecar.cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('flask', 'pynamodb', 'werkzeug',"
        " 'flask_restful', 'marshmallow', 'boto3')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_guard_applies_a_service_emptied_on_purpose_at_once() -> None:
    """Atlas's `instances: 0` on the service node says the empty view is not a blip."""
    from dataclasses import replace

    from atlas.sidecar.plan import guard

    before = snap(svc("a", 1, 2))
    blip = snap(svc("a"))  # no count: could be a half-read view, so hold
    held = guard(before, blip, 10.0, {}, 60.0)
    assert held.held == ("a",) and held.snapshot == before
    emptied = snap(replace(svc("a"), declared=0))
    applied = guard(before, emptied, 10.0, {}, 60.0)
    assert applied.held == () and applied.snapshot.get("a").instances == ()  # type: ignore[union-attr]
    rebuilding = snap(replace(svc("a"), declared=2))  # Atlas says 2, none visible yet: hold
    assert guard(before, rebuilding, 10.0, {}, 60.0).held == ("a",)


def test_a_draining_server_that_is_wanted_again_is_never_deleted(loop):  # type: ignore[no-untyped-def]
    sc, clock, source, proxy = loop
    source.publish(snap(svc("a", 1, 2)))
    clock.t += 1
    sc.step()
    busy = refuse_deletes(proxy, "a/10.0.0.1:2")
    source.publish(snap(svc("a", 1)))  # removed while busy: drained
    clock.t += 0.1
    sc.step()
    assert ("a", "10.0.0.1:2") in sc._draining
    source.publish(snap(svc("a", 1, 2)))  # registered again before the delete went through
    clock.t += 0.1
    sc.step()
    busy.clear()  # its old connections finish
    n = len(proxy.commands)
    for _ in range(3):
        clock.t += 0.1
        sc.step()
    assert "del server a/10.0.0.1:2" not in proxy.commands[n:]
    clock.t += 5  # past the reload pacing: the wanted server is back in the running config
    sc.step()
    assert sc.running == snap(svc("a", 1, 2)) and not sc._draining
