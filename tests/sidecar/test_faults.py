"""Faults of the control loop, each on a real HAProxy with traffic flowing: routing never goes
down, the loop backs off and retries, /status and /metrics say what is failing; a crashed or
upgraded sidecar leaves HAProxy serving and the next one adopts it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas.sidecar.haproxy import process_alive
from atlas.sidecar.status import render_metrics
from atlas.stack.procs import port_open
from tests.sidecar.conftest import HAPROXY, Load, server_states, wait_for


def two_instances(registry, backends, name: str = "a"):  # type: ignore[no-untyped-def]
    b1, b2 = backends(f"{name}1"), backends(f"{name}2")
    registry.service(name)
    registry.instance(name, b1.port)
    registry.instance(name, b2.port)
    return b1, b2


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MiB tmpfs (root only): fill it and every write fails with ENOSPC."""
    d = Path(tempfile.mkdtemp(prefix="asd-", dir="/tmp"))
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], capture_output=True, text=True
    )
    if res.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True, check=False)
    shutil.rmtree(d, ignore_errors=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_disk_full_keeps_routing_and_recovers(registry, backends, start_sidecar, small_disk):
    _, a2 = two_instances(registry, backends)
    sc = start_sidecar(state=small_disk / "s", spares=0)
    loads = [Load(sc.port, ["a"], keepalive=True), Load(sc.port, ["a"], keepalive=False)]
    try:
        filler = fill(small_disk)
        b = backends("b")
        registry.service("b")  # a new service: a new config must be written, and cannot be
        registry.instance("b", b.port)
        wait_for(lambda: "config_write" in sc.status["failing"], what="write failure seen")
        registry.instance("a", a2.port, enabled=False)  # runtime changes still go through
        wait_for(lambda: set(sc.bodies("a", 6)) == {"a1"}, what="disable applied")
        st = sc.status
        assert sc.request("b")[0] == 503
        assert st["failures"]["config_write"] >= 1
        assert "failing: config_write" in st["stale_reasons"]
        assert "No space left" in st["failing"]["config_write"]["message"]
        metrics = render_metrics(st)
        assert 'atlas_sidecar_failing{kind="config_write"} 1' in metrics
        before = min(x.ok for x in loads)
        wait_for(lambda: min(x.ok for x in loads) > before + 20, what="traffic while failing")

        filler.unlink()  # space again: the next retry goes through
        wait_for(lambda: sc.request("b") == (200, "b"), what="new service after recovery")
        wait_for(lambda: not sc.status["failing"], what="failure cleared")
    finally:
        for x in loads:
            x.stop()
    for x in loads:
        assert x.failures == [], x.failures[:5]
    assert "a2" not in sc.bodies("a", 6)


def test_hanging_check_never_blocks_the_loop(tmp_path: Path, registry, backends, start_sidecar):
    flag = tmp_path / "hang"
    wrapper = tmp_path / "haproxy-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then while [ -e {flag} ]; do sleep 0.05; done; fi\n'
        f'exec {HAPROXY} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    _, a2 = two_instances(registry, backends)
    sc = start_sidecar(spares=0, binary=str(wrapper), check_timeout_s=120)
    load = Load(sc.port, ["a"], keepalive=True)
    try:
        flag.touch()
        b = backends("b")
        registry.service("b")
        registry.instance("b", b.port)
        wait_for(lambda: sc.status["check"] is not None, what="a check hanging")
        registry.instance("a", a2.port, enabled=False)
        wait_for(lambda: set(sc.bodies("a", 6)) == {"a1"}, what="runtime change during the check")
        assert sc.status["check"] is not None  # still hanging: the loop did not wait for it
        flag.unlink()
        wait_for(lambda: sc.request("b") == (200, "b"), what="the check finished: reloaded")

        # Past its timeout the check is killed, counted, and retried.
        sc.sidecar.settings.check_timeout_s = 1.0
        flag.touch()
        c = backends("c")
        registry.service("c")
        registry.instance("c", c.port)
        wait_for(lambda: "check_timeout" in sc.status["failing"], what="check killed")
        assert sc.status["failures"]["check_timeout"] >= 1
        assert sc.request("c")[0] == 503
        flag.unlink()
        wait_for(lambda: sc.request("c") == (200, "c"), what="retried after the timeout")
        wait_for(lambda: "check_timeout" not in sc.status["failing"], what="cleared")
    finally:
        flag.unlink(missing_ok=True)
        load.stop()
    assert load.failures == [], load.failures[:5]


def test_an_exception_in_the_loop_is_counted_and_retried(registry, backends, start_sidecar):
    _, a2 = two_instances(registry, backends)
    sc = start_sidecar()
    load = Load(sc.port, ["a"], keepalive=False)
    drain = sc.source.drain
    failures = {"left": 2}

    def broken_drain():  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("dictionary changed size during iteration")
        return drain()

    try:
        sc.source.drain = broken_drain  # type: ignore[method-assign]
        registry.instance("a", a2.port, enabled=False)
        wait_for(lambda: set(sc.bodies("a", 6)) == {"a1"}, what="applied after the retries")
        wait_for(lambda: not sc.status["failing"], what="recovered")
        assert sc.status["failures"]["loop_view"] == 2
        assert sc.thread.is_alive()
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]


class FlakySocket:
    """A UNIX socket in front of HAProxy's master that drops the first `drops` connections
    (reset before reading), then forwards."""

    def __init__(self, path: Path, target: Path, drops: int) -> None:
        self.path, self.target, self.drops = path, target, drops
        self.dropped = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.dropped < self.drops:
                self.dropped += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                conn.close()
                continue
            threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    def _forward(self, conn: socket.socket) -> None:
        with conn, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
            try:
                up.connect(str(self.target))
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                up.sendall(data)
                up.shutdown(socket.SHUT_WR)
                while chunk := up.recv(65536):
                    conn.sendall(chunk)
            except OSError:  # the master refused or dropped us (re-executing): pass it on
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")

    def close(self) -> None:
        self.sock.close()


def test_a_master_socket_that_drops_connections(registry, backends, start_sidecar):
    two_instances(registry, backends)
    sc = start_sidecar(spares=0)
    real = sc.proxy.master_socket
    flaky = FlakySocket(sc.state / "flaky.sock", real, drops=6)
    load = Load(sc.port, ["a"], keepalive=True)
    try:
        sc.proxy.master_socket = flaky.path  # every master command of the sidecar goes through it
        b = backends("b")
        registry.service("b")
        registry.instance("b", b.port)
        wait_for(lambda: sc.request("b") == (200, "b"), what="reloaded through a dropping socket")
        wait_for(lambda: sc.status["reloads"] == 1, what="the reload counted")
        assert flaky.dropped == 6
    finally:
        sc.proxy.master_socket = real
        flaky.close()
        load.stop()
    assert load.failures == [], load.failures[:5]


def test_a_crashed_sidecar_leaves_haproxy_serving_and_the_next_adopts_it(
    registry, backends, sidecar_process
):
    _, a2 = two_instances(registry, backends)
    first = sidecar_process().start()
    wait_for(lambda: first.status()["in_sync"], what="first sidecar in sync")
    master = first.status()["haproxy"]["pid"]
    load = Load(first.port, ["a"], keepalive=True)
    try:
        first.crash()  # kill -9: no cleanup at all
        assert process_alive(master)
        ok = load.ok
        wait_for(lambda: load.ok > ok + 50, what="traffic with no sidecar")

        second = sidecar_process(state=first.state, port=first.port).start()
        wait_for(lambda: second.status()["in_sync"], what="second sidecar in sync")
        st = second.status()
        assert st["haproxy"]["adopted"] and st["haproxy"]["pid"] == master
        assert st["reloads"] == 0  # adopted as it runs: no reload
        registry.instance("a", a2.port, enabled=False)
        admin = first.state / "admin.sock"
        wait_for(
            lambda: server_states(admin, "a")[f"a/127.0.0.1:{a2.port}"].maint,
            what="the adopted haproxy follows changes",
        )
        assert second.status()["reloads"] == 0
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert "Traceback" not in second.log_text()


def test_upgrade_drops_no_request_and_only_an_explicit_stop_stops_haproxy(
    registry, backends, sidecar_process
):
    _, a2 = two_instances(registry, backends)
    old = sidecar_process().start()
    wait_for(lambda: old.status()["in_sync"], what="in sync")
    master = old.status()["haproxy"]["pid"]
    loads = [Load(old.port, ["a"], keepalive=True), Load(old.port, ["a"], keepalive=False)]
    try:
        old.terminate()  # SIGTERM: the old version exits, HAProxy stays
        assert process_alive(master)
        new = sidecar_process(state=old.state, port=old.port).start()
        wait_for(lambda: new.status()["in_sync"], what="new version in sync")
        assert new.status()["haproxy"]["pid"] == master
        registry.instance("a", a2.port, enabled=False)
        wait_for(
            lambda: server_states(old.state / "admin.sock", "a")[f"a/127.0.0.1:{a2.port}"].maint,
            what="changes flow after the upgrade",
        )
        before = min(x.ok for x in loads)
        wait_for(lambda: min(x.ok for x in loads) > before + 50, what="traffic")
    finally:
        for x in loads:
            x.stop()
    for x in loads:
        assert x.failures == [], x.failures[:5]
    assert new.status()["reloads"] == 0

    out = new.explicit_stop()
    assert "stopped haproxy" in out
    wait_for(lambda: not process_alive(master), what="haproxy stopped")
    assert not port_open(old.port)
    assert new.proc.proc is not None and new.proc.proc.wait(timeout=20) == 0


def test_haproxy_killed_is_restarted_with_backoff(registry, backends, start_sidecar):
    two_instances(registry, backends)
    sc = start_sidecar()
    pid = sc.proxy.pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: sc.status["haproxy_restarts"] >= 1, what="restarted")
    wait_for(lambda: set(sc.bodies("a", 6)) == {"a1", "a2"}, what="serving again")
    wait_for(lambda: sc.status["in_sync"], what="in sync again")
    assert sc.status["failures"]["haproxy_exit"] >= 1
    assert not sc.status["failing"]
