"""`atlas dev` as a newcomer meets it: closing the terminal, `kill`, `kill -9` leave nothing
behind; a busy port is refused before anything starts; a warm restart keeps everything."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import requests

from atlas.devstack import STACK_FILE, busy_ports, has_applied
from tests.devstack.conftest import (
    DevProcess,
    read_stack_file,
    stack_ports,
    wait_all_free,
)
from tests.helpers import wait_until


def test_busy_port_is_refused_before_anything_starts(
    dev_stack: type[DevProcess], tmp_path: Path
) -> None:
    ports = stack_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.zookeeper))
        squatter.listen()
        stack = dev_stack(tmp_path / "data", ports).start(wait=False)
        assert stack.wait_exit() == 1
        out = stack.output()
        assert f"port {ports.zookeeper} (ZooKeeper) is in use by pid " in out
        assert "--zk-port" in out
        assert "nothing was started" in out
        assert " on http://" not in out  # no piece was reported up
        # Nothing was started: every other port is still free, no stack file.
        others = [p for _, p, _ in ports.named() if p != ports.zookeeper]
        assert not busy_ports([("x", p, "--x") for p in others])
        assert not (tmp_path / "data" / STACK_FILE).exists()


def test_ports_given_twice_are_refused(dev_stack: type[DevProcess], tmp_path: Path) -> None:
    ports = stack_ports()
    stack = dev_stack(tmp_path / "data", ports)
    stack.argv[stack.argv.index("--status-port") + 1] = str(ports.api)
    stack.start(wait=False)
    assert stack.wait_exit() == 1
    assert f"port {ports.api} is given to both Atlas API and sidecar status" in stack.output()


def test_signals_stop_everything_and_a_warm_restart_keeps_everything(
    dev_stack: type[DevProcess], tmp_path: Path
) -> None:
    ports = stack_ports()
    data = tmp_path / "data"
    port1 = ports.examples[0]

    # 1. First run: write services, instances, config and a secret; stop with SIGTERM.
    first = dev_stack(data, ports, "--workers", "1").start()
    api = first.api
    s = requests.Session()
    assert s.post(f"{api}/v1/services", json={"name": "greet"}, timeout=30).status_code == 201
    assert s.put(f"{api}/v1/services/greet/instances/127.0.0.1:{ports.examples[1]}",
                 json={"zone": "z", "weight": 7}, timeout=30).status_code == 201  # fmt: skip
    assert s.put(f"{api}/v1/services/greet/config/GREETING", json={"value": "hello"},
                 timeout=30).status_code == 201  # fmt: skip
    assert s.put(f"{api}/v1/services/greet/config/DB_PASSWORD",
                 json={"value": "hunter2", "secret": True}, timeout=30).status_code == 201  # fmt: skip
    assert s.patch(f"{api}/v1/services/example/instances/127.0.0.1:{port1}",
                   json={"enabled": False, "disabled_reason": "kept"},
                   timeout=30).status_code == 200  # fmt: skip
    holders = first.holders()
    assert len(holders) >= len(ports.named())  # gunicorn and HAProxy hold theirs with children
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    wait_all_free(ports, holders)
    assert "SIGTERM: stopping every piece" in first.output()

    # 2. Warm restart: everything is there, and the sidecar routes `greet` at once.
    second = dev_stack(data, ports, "--workers", "1").start()
    out = second.output()
    assert "state restored from" in out and "service 'example' kept from the last run" in out
    first_try = s.get(second.sidecar + "/", headers={"Atlas-Service": "greet"}, timeout=30)
    assert first_try.status_code == 200 and first_try.json()["backend"] == "example-2"
    svc = s.get(f"{api}/v1/services/greet", timeout=30).json()
    assert svc["name"] == "greet"
    inst = s.get(f"{api}/v1/services/greet/instances/127.0.0.1:{ports.examples[1]}",
                 timeout=30).json()  # fmt: skip
    assert (inst["zone"], inst["weight"], inst["enabled"]) == ("z", 7, True)
    kept = s.get(f"{api}/v1/services/example/instances/127.0.0.1:{port1}", timeout=30).json()
    assert (kept["enabled"], kept["disabled_reason"]) == (False, "kept")
    config = s.get(f"{api}/v1/services/greet/config", timeout=30).json()
    assert config["values"] == {"GREETING": "hello", "DB_PASSWORD": "hunter2"}
    # Only example-2 answers `example` (the disable was kept and applied from the start).
    for _ in range(4):
        r = s.get(second.sidecar + "/", headers={"Atlas-Service": "example"}, timeout=30)
        assert r.json()["backend"] == "example-2"
    # The mirror agrees with the store: the reconciler's first run after the restart found
    # no drift.
    last = wait_until(
        lambda: s.get(f"{api}/v1/info", timeout=30).json()["reconciler"]["last_reconcile"],
        timeout=120, what="a reconcile after the restart",
    )  # fmt: skip
    assert sum(last["drift_found"].values()) == 0, last

    # 3. kill -9 of `atlas dev` itself: its children follow it, nothing is left.
    holders = second.holders()
    second.signal(signal.SIGKILL)
    second.wait_exit()
    wait_all_free(ports, holders)

    # 4. A closed terminal (SIGHUP to the foreground process group) stops it too.
    third = dev_stack(data, ports, "--workers", "1").start()
    assert s.get(f"{api}/v1/services/greet", timeout=30).status_code == 200
    holders = third.holders()
    third.signal(signal.SIGHUP, group=True)
    assert third.wait_exit() == 0
    wait_all_free(ports, holders)
    assert "SIGHUP: stopping every piece" in third.output()

    # 5. --fresh starts empty, ZooKeeper and moto alike.
    fresh = dev_stack(data, ports, "--workers", "1", "--fresh").start()
    assert s.get(f"{api}/v1/services/greet", timeout=30).status_code == 404
    assert "seeded service 'example'" in fresh.output()
    assert read_stack_file(data)["ports"]["api"] == ports.api  # type: ignore[index]


def test_has_applied_reads_both_status_shapes() -> None:
    # A sidecar that reports an index: exact, per service when it lags in it.
    fleet = {"applied_index": 40, "lagging": {"slow": {"applied_index": 10}}}
    assert has_applied(fleet, "fast", 40, 0)
    assert not has_applied(fleet, "fast", 41, 0)
    assert not has_applied(fleet, "slow", 11, 0)
    assert has_applied(fleet, "slow", 10, 0)
    # One without an index: in sync, nothing pending, last apply after the change.
    old = {"in_sync": True, "stale_reasons": [], "last_apply": 100.5}
    assert has_applied(old, "x", 1, 100_400)
    assert not has_applied(old, "x", 1, 100_600)
    assert not has_applied({**old, "in_sync": False}, "x", 1, 100_400)
    assert not has_applied({**old, "stale_reasons": ["changes pending"]}, "x", 1, 100_400)
    assert not has_applied({}, "x", 1, 0)
