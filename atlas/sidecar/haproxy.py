"""The local HAProxy: a master-worker process, its sockets, `haproxy -c`, file writes.

The master runs in its own session, so it outlives the sidecar that started it: a sidecar that
crashes or is upgraded leaves HAProxy serving, and the next one adopts it through the master
socket (`HAProxy.adopt`). Only `HAProxy.stop` (an explicit stop) ends it.

Thread-safety: `socket_command`, `master_command`, `write_atomic`, `parse_*` are thread-safe.
An `HAProxy` object belongs to one thread (the sidecar loop), except `check`, which may run on
a worker thread, and `running`/`pid`, which any thread may read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger("atlas.sidecar.haproxy")

DEFAULT_HAPROXY = "/usr/sbin/haproxy"
# Commands per connection are sent in prompt mode, one per line; a batch stays small enough
# for the socket buffers to take it at once.
_BATCH_BYTES = 64000
_OK_ANSWERS = ("", "New server registered.", "Server deleted.")
_RELOAD_ATTEMPTS = 3
_RELOAD_COUNTED_S = 2.0  # a master that took `reload` counts it within milliseconds

# srv_admin_state bits (HAProxy's SRV_ADMF_*): forced/inherited/resolution maintenance, drain.
ADMIN_MAINT = 0x01 | 0x02 | 0x20
ADMIN_DRAIN = 0x08 | 0x10


class HAProxyError(RuntimeError):
    """HAProxy refused a command, a config, or did not come up."""


class CheckTimeout(HAProxyError):
    """`haproxy -c` did not finish in time (it was killed)."""


class AdminError(HAProxyError):
    """The runtime API could not be reached (the worker is gone or reloading)."""


def _command_once(path: str | Path, command: str, timeout: float) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        # The CLI answers only once it sees end of input.
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            # The command was read: a master that re-executes itself (`reload`) drops the
            # connection without answering. What arrived is the answer.
            pass
    return b"".join(chunks).decode("utf-8", "replace")


def socket_command(
    path: str | Path, command: str, timeout: float = 5.0, retry_s: float = 0.0
) -> str:
    """Send one command to an HAProxy CLI socket (master or stats) and return the answer.

    Around a reload the master re-executes itself: its socket is missing, refuses, or accepts
    and drops a connection before reading the command (`BrokenPipeError`, or a reset before the
    command was sent). Those are retried for up to `retry_s` seconds, then raised; a reset after
    the command went out ends the answer instead (the command was delivered).
    """
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return _command_once(path, command, timeout)
        except (ConnectionRefusedError, FileNotFoundError, BrokenPipeError, ConnectionResetError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def master_command(path: str | Path, command: str, timeout: float = 5.0) -> str:
    """A master CLI command, retried while the master re-executes itself (up to `timeout`)."""
    return socket_command(path, command, timeout=timeout, retry_s=timeout)


def split_answers(text: str, count: int) -> list[str]:
    """Split what the CLI in prompt mode answered to `prompt` + `count` commands + `quit`.

    Every answer is followed by the prompt (`\n> `); the first chunk answers `prompt` itself.
    (Without the prompt, answers cannot be told apart: `Server deleted.` ends with no blank
    line, unlike the others.)
    """
    chunks = text.split("\n> ")[:-1]  # what follows the last prompt is no answer yet
    answers = [c.strip("\n") for c in chunks[1 : 1 + count]]
    return answers + ["<no answer>"] * (count - len(answers))


def escape_cli(word: str) -> str:
    """A word for a CLI line: `;` separates commands, so it and `\\` are escaped."""
    return word.replace("\\", "\\\\").replace(";", "\\;")


def is_ok(answer: str) -> bool:
    """True when a runtime API answer means the command worked."""
    return answer.strip() in _OK_ANSWERS


def write_atomic(path: Path, text: str, fsync: bool = True) -> None:
    """Replace `path` with `text` atomically (temp file in the same directory, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if fsync:
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


def master_pid(text: str) -> int | None:
    """The master's pid from `show proc`."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1] == "master":
            return int(fields[0])
    return None


@dataclass(frozen=True)
class ServerState:
    """One line of `show servers state`: what a running server is right now."""

    backend: str
    server: str
    address: str
    port: int
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int
    weight: int  # srv_uweight: the weight set by config or `set weight`
    line: str

    @property
    def maint(self) -> bool:
        """In maintenance (disabled)."""
        return bool(self.admin_state & ADMIN_MAINT)

    @property
    def drain(self) -> bool:
        """Draining."""
        return bool(self.admin_state & ADMIN_DRAIN)


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse `show servers state` (format version 1)."""
    out: list[ServerState] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 19 or not fields[0].isdigit():
            continue
        try:
            out.append(
                ServerState(
                    backend=fields[1],
                    server=fields[3],
                    address=fields[4],
                    op_state=int(fields[5]),
                    admin_state=int(fields[6]),
                    weight=int(fields[7]),
                    port=int(fields[18]),
                    line=line,
                )
            )
        except ValueError:
            continue
    return out


def process_alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])


class HAProxy:
    """Runs `haproxy -W -db -S master.sock -p pidfile -f cfg` and talks to its sockets."""

    def __init__(
        self,
        config_path: Path,
        master_socket: Path,
        admin_socket: Path,
        binary: str = DEFAULT_HAPROXY,
        log_path: Path | None = None,
        pid_file: Path | None = None,
        check_timeout_s: float = 30.0,
    ) -> None:
        self.config_path = Path(config_path)
        self.master_socket = Path(master_socket)
        self.admin_socket = Path(admin_socket)
        self.binary = binary
        self.log_path = log_path
        self.pid_file = pid_file
        self.check_timeout_s = check_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.adopted_pid: int | None = None
        self._log: IO[bytes] | None = None
        self._version: str | None = None
        self._session: socket.socket | None = None  # kept runtime API connection (loop thread)

    # -- process ---------------------------------------------------------------------------

    def start(self, timeout: float = 15.0, takeover: int | None = None) -> None:
        """Start a new master-worker process and wait until its worker answers.

        With `takeover` (the pid of a master that cannot be adopted), the new process first
        takes the listening sockets over from the old one (`-x`), then the old one is told to
        finish its requests and exit (SIGUSR1): a hitless replacement.
        """
        argv = [self.binary, "-W", "-db", "-S", f"{self.master_socket},mode,600"]
        if self.pid_file is not None:
            argv += ["-p", str(self.pid_file)]
        if takeover is not None and self.admin_socket.exists():
            argv += ["-x", str(self.admin_socket)]
        argv += ["-f", str(self.config_path)]
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            if self._log is None:
                self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
            out = self._log
        # Its own session: the sidecar's death, its terminal and its process group are not
        # HAProxy's.
        self._close_session()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
        self.adopted_pid = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HAProxyError(f"haproxy exited with {self.proc.returncode} at start")
            try:
                _, _, workers = self.show_proc(timeout=1.0)
                if workers and self.worker_pid() in workers:
                    log.info("haproxy started, master pid %s", self.proc.pid)
                    if takeover is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(takeover, signal.SIGUSR1)
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise HAProxyError("haproxy did not come up")

    def adopt(self) -> bool:
        """Take over a master already serving on `master_socket` (left by an earlier sidecar).

        True when its master and a worker answer; the process is then driven as if started
        here (and stopped only by `stop`).
        """
        try:
            text = master_command(self.master_socket, "show proc", timeout=2.0)
            pid = master_pid(text)
            _, _, workers = parse_show_proc(text)
            if pid is None or not workers or not process_alive(pid):
                return False
            if self.worker_pid() not in workers:
                return False
        except OSError:
            return False
        self._close_session()
        self.proc = None
        self.adopted_pid = pid
        log.info("adopted the running haproxy, master pid %s", pid)
        return True

    def leftover_pid(self) -> int | None:
        """The pid in the pid file when it is a live process (a master that was not adopted)."""
        if self.pid_file is None:
            return None
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if process_alive(pid) else None

    def running(self) -> bool:
        """True while the master process lives (thread-safe)."""
        if self.proc is not None:
            return self.proc.poll() is None
        return self.adopted_pid is not None and process_alive(self.adopted_pid)

    @property
    def pid(self) -> int | None:
        """The master's pid (thread-safe)."""
        if self.proc is not None:
            return self.proc.pid
        return self.adopted_pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop master and workers: finish open requests (SIGUSR1), then SIGTERM, SIGKILL."""
        pid = self.pid
        if pid is not None and self.running():
            for sig, wait in ((signal.SIGUSR1, timeout), (signal.SIGTERM, timeout)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig) if self.proc is not None else os.kill(pid, sig)
                if self._wait_exit(wait):
                    break
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL) if self.proc is not None else os.kill(
                        pid, signal.SIGKILL
                    )
                self._wait_exit(timeout)
        self.proc = None
        self.adopted_pid = None
        self._close_session()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=0.05)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not self.running():
                return True
            time.sleep(0.05)
        return not self.running()

    def forget(self) -> None:
        """Let go of the process without stopping it (the sidecar exits, HAProxy stays)."""
        self._close_session()
        self.proc = None
        self.adopted_pid = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- sockets ---------------------------------------------------------------------------

    def master(self, command: str, timeout: float = 5.0) -> str:
        """A master CLI command (retried while the master re-executes itself)."""
        return master_command(self.master_socket, command, timeout)

    def admin(self, command: str) -> str:
        """A runtime API command to the current worker."""
        return socket_command(self.admin_socket, command, retry_s=0.5)

    def admin_many(self, commands: Sequence[str]) -> list[str]:
        """Run runtime API commands in order, in as few connections as fit (prompt mode).

        Returns one answer per command. Raises AdminError when the socket cannot be used
        (then none, some or all of the commands ran: the caller must read the state back).
        """
        answers: list[str] = []
        batch: list[str] = []
        size = 0

        def flush() -> None:
            nonlocal size
            if not batch:
                return
            try:
                answers.extend(self._session_run(batch))
            except OSError as exc:
                self._close_session()
                raise AdminError(f"runtime API: {exc!r}") from exc
            batch.clear()
            size = 0

        for cmd in commands:
            if size + len(cmd) + 2 > _BATCH_BYTES:
                flush()
            batch.append(cmd)
            size += len(cmd) + 2
        flush()
        return answers

    def _session_run(self, commands: list[str]) -> list[str]:
        """Commands over the kept prompt-mode connection (opened again when the worker closed
        it: idle timeout, a new worker)."""
        sock = self._session
        if sock is not None and select.select([sock], [], [], 0)[0]:
            self._close_session()  # readable while idle: closed by the other end
            sock = None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5.0)
            try:
                sock.connect(str(self.admin_socket))
                sock.sendall(b"prompt\n")
                self._read_prompts(sock, 1)
            except OSError:
                sock.close()
                raise
            self._session = sock
        sock.sendall(("\n".join(commands) + "\n").encode())
        text = self._read_prompts(sock, len(commands))
        return split_answers("\n> " + text, len(commands))

    @staticmethod
    def _read_prompts(sock: socket.socket, count: int) -> str:
        data = b""
        while data.count(b"\n> ") + data.startswith(b"> ") < count:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("runtime API closed the connection")
            data += chunk
        return data.decode("utf-8", "replace")

    def _close_session(self) -> None:
        if self._session is not None:
            with contextlib.suppress(OSError):
                self._session.close()
            self._session = None

    def show_proc(self, timeout: float = 5.0) -> tuple[int | None, int, list[int]]:
        """(master reload count, failed reloads, current worker pids)."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = parse_show_proc(self.master("show proc", timeout=timeout))
            # A master about to re-execute may accept and close without a word: ask again.
            if parsed[0] is not None or time.monotonic() >= deadline:
                return parsed
            time.sleep(0.01)

    def worker_pid(self) -> int | None:
        """The pid of the worker answering the stats socket."""
        for line in self.admin("show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        """Every server's current state (or one backend's)."""
        cmd = "show servers state" + (f" {backend}" if backend else "")
        return parse_servers_state(self.admin(cmd))

    def show_map(self, path: str) -> dict[str, str]:
        """The live entries of a map file (key → value)."""
        out: dict[str, str] = {}
        for line in self.admin(f"show map {path}").splitlines():
            fields = line.split(None, 2)
            if len(fields) == 3 and fields[0].startswith("0x"):
                out[fields[1]] = fields[2]
        return out

    def version(self) -> str | None:
        """HAProxy's version string (cached)."""
        if self._version is None:
            try:
                for line in self.admin("show info").splitlines():
                    if line.startswith("Version:"):
                        self._version = line.split(":", 1)[1].strip()
            except OSError:
                return None
        return self._version

    def check(self, path: Path, timeout: float | None = None) -> tuple[bool, str]:
        """Run `haproxy -c -f path`; return (valid, output). Raises CheckTimeout when it hangs.

        Thread-safe: it only runs a child process (in its own process group, killed whole
        on timeout, so a wrapper's children cannot keep it hanging).
        """
        limit = self.check_timeout_s if timeout is None else timeout
        proc = subprocess.Popen(
            [self.binary, "-c", "-f", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise CheckTimeout(f"haproxy -c did not finish within {limit:g}s") from None
        return proc.returncode == 0, out.decode("utf-8", "replace").strip()

    def reload(self, timeout: float = 15.0) -> int:
        """Hitless reload through the master socket; wait for the new worker; return its pid.

        A master that drops the connection before reading `reload` (it may be re-executing
        itself) is asked again once its reload count has not moved for a while.
        """
        self._close_session()  # it talks to the old worker
        before, failed_before, old_workers = self.show_proc()
        deadline = time.monotonic() + timeout
        for attempt in range(_RELOAD_ATTEMPTS):
            self.master("reload")
            counted = False
            ask_again = time.monotonic() + _RELOAD_COUNTED_S
            while time.monotonic() < deadline:
                time.sleep(0.005)
                try:
                    reloads, failed, workers = self.show_proc(timeout=1.0)
                except OSError:
                    continue  # the master re-executes itself and reopens its socket
                if failed > failed_before:
                    raise HAProxyError("haproxy refused the reload (see its log)")
                counted = reloads is not None and before is not None and reloads > before
                new = [w for w in workers if w not in old_workers]
                if counted and new:
                    try:
                        if self.worker_pid() == new[0]:
                            return new[0]
                    except OSError:
                        continue
                if not counted and attempt + 1 < _RELOAD_ATTEMPTS and time.monotonic() > ask_again:
                    log.warning("haproxy's master did not count the reload: asking again")
                    break
            else:
                break
        raise HAProxyError("no new haproxy worker after reload")


def filter_state_lines(dump: str, keep: Iterable[tuple[str, str]]) -> str:
    """Keep the header and the `show servers state` lines of the (backend, server) in `keep`."""
    wanted = set(keep)
    out = []
    for line in dump.splitlines():
        fields = line.split()
        if not fields or not fields[0].isdigit() or len(fields) < 4:
            if line.strip():
                out.append(line)  # the version line and the column header
            continue
        if (fields[1], fields[3]) in wanted:
            out.append(line)
    return "\n".join(out) + "\n"
