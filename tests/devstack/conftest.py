"""`atlas dev` run as a user runs it: a process of its own, on free ports, in a temporary data
directory; stopped by a signal like a terminal would stop it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas.devstack import STACK_FILE, Ports
from atlas.stack.procs import port_free, port_holders
from atlas.stack.servers import zookeeper_available

READY = "Ctrl-C stops everything"
START_TIMEOUT_S = 180.0


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class DevProcess:
    """One `atlas dev` process."""

    def __init__(self, data_dir: Path, ports: Ports, *extra: str) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.out = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.out"
        self.argv = [
            sys.executable, "-m", "atlas.cli", "dev", "--data-dir", str(data_dir),
            "--api-port", str(ports.api), "--dynamodb-port", str(ports.dynamodb),
            "--zk-port", str(ports.zookeeper), "--sidecar-port", str(ports.sidecar),
            "--status-port", str(ports.status),
            "--example-ports", ",".join(map(str, ports.examples)), *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def sidecar(self) -> str:
        """The sidecar's HAProxy."""
        return f"http://127.0.0.1:{self.ports.sidecar}"

    def output(self) -> str:
        """Everything `atlas dev` printed so far."""
        try:
            return self.out.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, wait: bool = True) -> DevProcess:
        """Start it in a process group of its own (a terminal's foreground job)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until it says every piece is up (or fail with what it printed)."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while READY not in self.output():
            if self.proc.poll() is not None:
                pytest.fail(f"atlas dev exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"atlas dev not ready within {START_TIMEOUT_S}s:\n{self.output()}")
            time.sleep(0.2)

    def signal(self, sig: int, group: bool = False) -> None:
        """Send a signal to `atlas dev` (or to its whole process group, as a terminal does)."""
        assert self.proc is not None
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float = 120.0) -> int:
        """Wait for `atlas dev` to exit; its status."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def holders(self) -> set[int]:
        """Pids listening on any of the stack's ports now."""
        pids: set[int] = set()
        for _, port, _ in self.ports.named():
            pids.update(h.pid for h in port_holders(port))
        return pids

    def kill(self) -> None:
        """Teardown: stop it however it is, and whatever it left."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)


def wait_all_free(ports: Ports, pids: set[int], timeout: float = 90.0) -> None:
    """Until every port is free and every process that held one is gone."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [p for _, p, _ in ports.named() if not port_free(p)]
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        if not busy and not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: ports {busy}, processes {alive}")
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def stack_ports() -> Ports:
    """Ports for one stack, all free now."""
    p = free_ports(7)
    return Ports(api=p[0], dynamodb=p[1], zookeeper=p[2], sidecar=p[3], status=p[4],
                 examples=(p[5], p[6]))  # fmt: skip


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[type[DevProcess]]:
    """Start `atlas dev` processes (DevProcess(...).start()); all are stopped at teardown."""
    if not zookeeper_available() or shutil.which("haproxy") is None:
        pytest.fail("the dev stack tests need Debian's zookeeper and haproxy")
    started: list[DevProcess] = []

    class Tracked(DevProcess):
        def start(self, wait: bool = True) -> DevProcess:
            started.append(self)
            return super().start(wait)

    yield Tracked
    for stack in started:
        stack.kill()


def read_stack_file(data_dir: Path) -> dict[str, object]:
    """The running stack's stack.json."""
    data: dict[str, object] = json.loads((data_dir / STACK_FILE).read_text())
    return data
