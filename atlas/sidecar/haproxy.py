"""The local HAProxy: a supervised master-worker process, its sockets, `haproxy -c`, file writes."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from atlas.stack.procs import stop_group

log = logging.getLogger("atlas.sidecar.haproxy")

DEFAULT_HAPROXY = "/usr/sbin/haproxy"


class HAProxyError(RuntimeError):
    """HAProxy refused a command, a config, or did not come up."""


def socket_command(path: str | Path, command: str, timeout: float = 5.0) -> str:
    """Send one command to an HAProxy UNIX socket (master or stats) and return the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        # The CLI answers only once it sees end of input.
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (temp file in the same directory, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def parse_show_proc(text: str) -> tuple[int | None, int, list[int]]:
    """Parse master `show proc` into (master reloads, failed reloads, current worker pids)."""
    reloads: int | None = None
    failed = 0
    workers: list[int] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("#"):
            section = line.strip("# ").split()[0] if line.strip("# ") else ""
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        if fields[1] == "master":
            reloads = int(fields[2])
            if "[failed:" in line:
                failed = int(line.split("[failed:")[1].split("]")[0])
        elif fields[1] == "worker" and section == "workers":
            workers.append(int(fields[0]))
    return reloads, failed, workers


class HAProxy:
    """Runs `haproxy -W -db -S master.sock -f cfg` and talks to its master and stats sockets."""

    def __init__(
        self,
        config_path: Path,
        master_socket: Path,
        admin_socket: Path,
        binary: str = DEFAULT_HAPROXY,
        log_path: Path | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.master_socket = Path(master_socket)
        self.admin_socket = Path(admin_socket)
        self.binary = binary
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- process ---------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Start the master-worker process and wait until its worker answers."""
        argv = [
            self.binary,
            "-W",
            "-db",
            "-S",
            f"{self.master_socket},mode,600",
            "-f",
            str(self.config_path),
        ]
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
            out = self._log
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HAProxyError(f"haproxy exited with {self.proc.returncode} at start")
            try:
                if self.worker_pid() is not None and self.show_proc()[2]:
                    log.info("haproxy started, master pid %s", self.proc.pid)
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise HAProxyError("haproxy did not come up")

    def running(self) -> bool:
        """True while the master process lives."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The master's pid."""
        return self.proc.pid if self.proc is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop master and workers (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            stop_group(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- sockets ---------------------------------------------------------------------------

    def master(self, command: str, timeout: float = 5.0) -> str:
        """A master CLI command (retried while the master re-executes itself)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return socket_command(self.master_socket, command)
            except (ConnectionRefusedError, FileNotFoundError):
                # The 2.6 master re-execs into wait mode after starting workers or reloading.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def admin(self, command: str) -> str:
        """A runtime API command to the current worker."""
        return socket_command(self.admin_socket, command)

    def show_proc(self) -> tuple[int | None, int, list[int]]:
        """(master reload count, failed reloads, current worker pids)."""
        return parse_show_proc(self.master("show proc"))

    def worker_pid(self) -> int | None:
        """The pid of the worker answering the stats socket."""
        for line in self.admin("show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    def check(self, path: Path) -> tuple[bool, str]:
        """Run `haproxy -c -f path`; return (valid, output)."""
        res = subprocess.run(
            [self.binary, "-c", "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return res.returncode == 0, (res.stdout + res.stderr).strip()

    def reload(self, timeout: float = 15.0) -> int:
        """Hitless reload through the master socket; wait for the new worker; return its pid."""
        before, failed_before, old_workers = self.show_proc()
        self.master("reload")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.005)
            try:
                reloads, failed, workers = self.show_proc()
            except OSError:
                continue  # the master re-executes itself and reopens its socket
            if failed > failed_before:
                raise HAProxyError("haproxy refused the reload (see its log)")
            new = [w for w in workers if w not in old_workers]
            if reloads is not None and before is not None and reloads > before and new:
                try:
                    if self.worker_pid() == new[0]:
                        return new[0]
                except OSError:
                    continue
        raise HAProxyError("no new haproxy worker after reload")
