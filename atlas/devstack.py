"""`make run`: the whole local stack on 127.0.0.1, in the foreground, like `consul agent -dev`.

What it promises:

- **Nothing outlives it.** Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop every piece in
  order. Each child gets SIGTERM from the kernel if `atlas dev` dies any other way, SIGKILL
  included (`prctl(PR_SET_PDEATHSIG)`), and a reaper process of its own session sweeps every
  process that carries the stack's marker (grandchildren such as HAProxy too): see
  `atlas.stack.reaper`.
- **It refuses to start on a busy port**, naming the port, its flag and the process that
  holds it (from /proc), before it starts anything; a piece is reported up only once the
  process listening on its port is one of the stack's own.
- **A warm restart starts from a consistent state**: ZooKeeper keeps its data in the data
  directory and so does moto (`--state-file`, see `atlas.stack.motoserver`), so services,
  instances, config and secrets survive a restart and the sidecar routes them at once.
  `--fresh` wipes both (and the sidecar's state) first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click

from atlas.stack.procs import (
    LOOPBACK,
    STACK_MARKER,
    ManagedProcess,
    PortHolder,
    command_of,
    port_free,
    port_holders,
    wait_for_port,
)

REALM = "local"
DEFAULT_EXAMPLE_PORTS = (9001, 9002)
STACK_FILE = "stack.json"
MOTO_STATE = "moto/state.pickle"
EXIT_BUSY = 1
EXIT_STATE = 3


class StackError(Exception):
    """The stack cannot start (busy port, data directory in use, unreadable state)."""


class Stopped(BaseException):
    """A stop signal arrived (SIGINT, SIGTERM, SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass(frozen=True)
class Ports:
    """Every port the stack listens on."""

    api: int = 8080
    dynamodb: int = 8000
    zookeeper: int = 2181
    sidecar: int = 4000
    status: int = 4001
    examples: tuple[int, ...] = DEFAULT_EXAMPLE_PORTS

    def named(self, seed: bool = True, sidecar: bool = True) -> list[tuple[str, int, str]]:
        """(piece, port, flag) of every port the stack will bind."""
        out = [
            ("Atlas API", self.api, "--api-port"),
            ("DynamoDB/KMS (moto)", self.dynamodb, "--dynamodb-port"),
            ("ZooKeeper", self.zookeeper, "--zk-port"),
        ]
        if sidecar:
            out += [
                ("sidecar HAProxy", self.sidecar, "--sidecar-port"),
                ("sidecar status", self.status, "--status-port"),
            ]
        if seed:
            out += [(f"example backend {i}", p, "--example-ports") for i, p in enumerate(
                self.examples, start=1)]  # fmt: skip
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON form (stack.json)."""
        return {
            "api": self.api,
            "dynamodb": self.dynamodb,
            "zookeeper": self.zookeeper,
            "sidecar": self.sidecar,
            "status": self.status,
            "examples": list(self.examples),
        }


def busy_ports(named: Sequence[tuple[str, int, str]]) -> list[str]:
    """One line per port that cannot be used: taken twice by the flags, or in use (and by whom)."""
    problems = []
    seen: dict[int, str] = {}
    for piece, port, flag in named:
        if port in seen:
            problems.append(f"port {port} is given to both {seen[port]} and {piece} ({flag})")
            continue
        seen[port] = piece
        if port_free(port):
            continue
        holders = sorted(port_holders(port), key=lambda h: h.pid)
        who = _describe(holders[0]) if holders else "another process"
        if len(holders) > 1:
            who += f" (and {len(holders) - 1} more: {', '.join(str(h.pid) for h in holders[1:])})"
        problems.append(
            f"port {port} ({piece}) is in use by {who}: stop it, or choose another with {flag}"
        )
    return problems


def _describe(holder: PortHolder) -> str:
    text = str(holder)
    if _has_marker(holder.pid):
        text += ", started by an `atlas dev`"
    return text


def _has_marker(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(item.startswith(f"{STACK_MARKER}=".encode()) for item in environ)


def _ours(port: int, marker: str) -> bool:
    """True when every process listening on `port` carries this stack's marker."""
    needle = f"{STACK_MARKER}={marker}".encode()
    holders = port_holders(port)
    if not holders:
        return False
    for h in holders:
        try:
            if needle not in Path(f"/proc/{h.pid}/environ").read_bytes().split(b"\0"):
                return False
        except OSError:
            return False
    return True


def _sidecar_flags() -> list[str]:
    """Flags of the installed sidecar that a development stack wants (if it has them)."""
    from atlas.sidecar import cli as sidecar_cli

    params = getattr(sidecar_cli.main, "params", ())
    names = {getattr(p, "name", "") for p in params}
    return ["--stop-haproxy-on-exit"] if "stop_haproxy_on_exit" in names else []


@dataclass
class DevStack:
    """The local realm: moto (DynamoDB+KMS), ZooKeeper, Atlas under gunicorn, example backends,
    a sidecar with HAProxy. `run()` owns every process it starts."""

    data_dir: Path
    ports: Ports = field(default_factory=Ports)
    seed: bool = True
    fresh: bool = False
    workers: int = 2
    grace_s: float = 15.0
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def logs(self) -> Path:
        """Where every piece logs."""
        return self.data_dir / "logs"

    @property
    def moto_state(self) -> Path:
        """moto's persisted state."""
        return self.data_dir / MOTO_STATE

    def env(self) -> dict[str, str]:
        """Environment of every child (the Atlas variables, the stack's marker)."""
        env = dict(os.environ)
        env.update(
            {
                "ATLAS_REALM": REALM,
                "ATLAS_AUTH_DISABLED": "true",
                "ATLAS_DYNAMODB_ENDPOINT": f"http://{LOOPBACK}:{self.ports.dynamodb}",
                "ATLAS_ZK_HOSTS": f"{LOOPBACK}:{self.ports.zookeeper}",
                "AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID", "local"),
                "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY", "local"),
                "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"),
                STACK_MARKER: self.marker,
            }
        )
        return env

    def _say(self, msg: str) -> None:
        # After SIGHUP the terminal is gone: writing to it fails, and stopping must go on.
        with contextlib.suppress(OSError, ValueError):
            print(f"[atlas dev] {msg}", flush=True)

    def _api(
        self,
        method: str,
        path: str,
        body: dict[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{self.ports.api}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    # ------------------------------------------------------------------ checks

    @contextlib.contextmanager
    def _data_dir_lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.data_dir / "stack.lock"
        with lock_path.open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StackError(
                    f"{self.data_dir} is in use by another `atlas dev` "
                    f"({self._running_pid() or 'pid unknown'}): stop it, or use --data-dir"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _running_pid(self) -> str | None:
        try:
            pid = int(json.loads((self.data_dir / STACK_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return f"pid {pid} ({command_of(pid)})"

    def _wipe(self) -> None:
        for path in (self.data_dir / "zookeeper", self.data_dir / "sidecar"):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.moto_state.unlink()
        self._say("--fresh: ZooKeeper's data, moto's state and the sidecar's state wiped")

    # --------------------------------------------------------------------- run

    def run(self) -> int:
        """Start everything, wait for a stop signal, stop everything; the exit status."""
        from atlas.stack.servers import zookeeper_available

        with_zk = zookeeper_available()
        with_sidecar = with_zk and shutil.which("haproxy") is not None
        try:
            with self._data_dir_lock():
                problems = busy_ports(self.ports.named(self.seed, with_sidecar))
                if problems:
                    for line in problems:
                        self._say(line)
                    self._say("nothing was started")
                    return EXIT_BUSY
                if self.fresh:
                    self._wipe()
                return self._run(with_zk, with_sidecar)
        except StackError as exc:
            self._say(str(exc))
            return EXIT_BUSY

    def _run(self, with_zk: bool, with_sidecar: bool) -> int:
        procs: list[ManagedProcess] = []
        reaper = self._start_reaper()

        def _raise(signum: int, frame: FrameType | None) -> None:
            raise Stopped(signum)

        def _noted(signum: int, frame: FrameType | None) -> None:
            self._say(f"{signal.Signals(signum).name}: already stopping")

        stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, _raise) for sig in stop_signals}
        status = 0
        try:
            status = self._start_and_watch(procs, with_zk, with_sidecar)
        except Stopped as stopped:
            self._say(f"{signal.Signals(stopped.signum).name}: stopping every piece")
        except StackError as exc:
            self._say(str(exc))
            status = EXIT_STATE
        finally:
            for sig in stop_signals:
                signal.signal(sig, _noted)
            for p in reversed(procs):
                p.stop(timeout=self.grace_s)
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / STACK_FILE).unlink()
            self._stop_reaper(reaper)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._say("stopped")
        return status

    def _start_reaper(self) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != STACK_MARKER}
        with (self.logs / "reaper.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "atlas.stack.reaper", "--marker", self.marker,
                 "--grace", str(self.grace_s)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip

    def _stop_reaper(self, reaper: subprocess.Popen[bytes]) -> None:
        stdin: IO[bytes] | None = reaper.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
        try:
            reaper.wait(timeout=self.grace_s + 10)
        except subprocess.TimeoutExpired:
            self._say(f"the reaper (pid {reaper.pid}) is still sweeping")

    def _child(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        return ManagedProcess(name, argv, self.logs / f"{name}.log", env=env, die_with_parent=True)

    def _up(self, proc: ManagedProcess, port: int, what: str, timeout: float = 60.0) -> None:
        """Wait until `proc` listens on `port` (and the listener is the stack's own)."""
        try:
            wait_for_port(port, timeout=timeout, proc=proc.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise StackError(f"{what} did not start: {exc}\n{proc.log_tail(20)}") from None
        deadline = time.monotonic() + 10
        while not _ours(port, self.marker):
            if time.monotonic() > deadline:
                holders = ", ".join(map(str, port_holders(port))) or "an unknown process"
                raise StackError(f"port {port} ({what}) is held by {holders}, not by the stack")
            time.sleep(0.05)

    def _start_and_watch(
        self, procs: list[ManagedProcess], with_zk: bool, with_sidecar: bool
    ) -> int:
        from atlas.config import Settings
        from atlas.migrate import Migrator
        from atlas.stack.servers import AtlasServer, MotoServer, ZooKeeperServer

        env = self.env()
        ports = self.ports
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        restored = self.moto_state.exists()
        moto = MotoServer(
            self.data_dir / "moto", port=ports.dynamodb, state_file=self.moto_state, env=env,
            die_with_parent=True,
        )  # fmt: skip
        procs.append(moto.process)
        moto.process.start()
        try:
            self._up(moto.process, ports.dynamodb, "moto")
        except StackError:
            if moto.process.proc is not None and moto.process.proc.poll() == EXIT_STATE:
                raise StackError(
                    f"moto cannot read its saved state {self.moto_state} (see "
                    f"{moto.process.log_path}): start with --fresh to begin empty"
                ) from None
            raise
        state = "restored from" if restored else "kept in"
        self._say(f"DynamoDB/KMS (moto server) on {moto.url}, state {state} {self.moto_state}")

        if with_zk:
            zk = ZooKeeperServer(
                self.data_dir / "zookeeper", port=ports.zookeeper, env=env, die_with_parent=True
            )
            procs.append(zk.process)
            zk.write_config()
            zk.process.start()
            self._up(zk.process, ports.zookeeper, "ZooKeeper")
            self._say(f"ZooKeeper on {zk.address} (data in {zk.data_dir})")
        else:
            self._say("ZooKeeper not installed (apt-get install zookeeper): mirror off")
            env.pop("ATLAS_ZK_HOSTS")

        ran = Migrator(Settings.from_env(env)).run()
        self._say(f"migrations applied: {', '.join(ran) or 'none pending'}")

        api = AtlasServer(
            self.logs, env, port=ports.api, workers=self.workers, die_with_parent=True
        )
        procs.append(api.process)
        api.process.start()
        self._up(api.process, ports.api, "the Atlas API")
        self._say(f"Atlas API on {api.url} (realm {REALM})")
        self._say("AUTH IS DISABLED (ATLAS_AUTH_DISABLED=true, allowed only in realm 'local')")

        if self.seed:
            self._seed(procs, env)

        if with_sidecar:
            sidecar = self._child(
                "sidecar",
                [sys.executable, "-m", "atlas.sidecar.cli", "--zk", env["ATLAS_ZK_HOSTS"],
                 "--realm", REALM, "--port", str(ports.sidecar),
                 "--state-dir", str(self.data_dir / "sidecar"),
                 "--status-port", str(ports.status), *_sidecar_flags()],
                env,
            )  # fmt: skip
            procs.append(sidecar)
            sidecar.start()
            self._up(sidecar, ports.sidecar, "the sidecar's HAProxy")
            self._up(sidecar, ports.status, "the sidecar's status page")
            self._say(
                f"sidecar + HAProxy on http://{LOOPBACK}:{ports.sidecar} "
                f"(status on :{ports.status}/status); try:\n"
                f"    curl -H 'Atlas-Service: example' http://{LOOPBACK}:{ports.sidecar}/"
            )
        else:
            self._say("HAProxy or ZooKeeper missing (make deps): no sidecar")

        (self.data_dir / STACK_FILE).write_text(
            json.dumps({"pid": os.getpid(), "realm": REALM, "ports": ports.as_dict(),
                        "sidecar": with_sidecar}) + "\n"
        )  # fmt: skip
        self._say(f"logs in {self.logs}; Ctrl-C stops everything")
        while True:
            for p in procs:
                if not p.running():
                    self._say(f"{p.name} exited; stopping the stack. Last log lines:")
                    with contextlib.suppress(OSError, ValueError):
                        print(p.log_tail(20), flush=True)
                    return 1
            time.sleep(0.5)

    def _seed(self, procs: list[ManagedProcess], env: dict[str, str]) -> None:
        ports = self.ports.examples
        for i, port in enumerate(ports, start=1):
            backend = self._child(
                f"example-{i}",
                [sys.executable, "-m", "atlas.stack.echo", "--port", str(port),
                 "--name", f"example-{i}"],
                env,
            )  # fmt: skip
            procs.append(backend)
            backend.start()
            self._up(backend, port, f"example backend {i}")
        created = self._api(
            "POST", "/v1/services",
            {"name": "example", "port": ports[0],
             "health_check": {"path": "/", "interval_s": 2, "timeout_s": 1}},
        ) == 201  # fmt: skip
        # Create only: an instance kept from the last run keeps its state (disabled, ...).
        create_only = {"If-None-Match": "*"}
        attached = [
            port
            for port in ports
            if self._api(
                "PUT", f"/v1/services/example/instances/{LOOPBACK}:{port}", {}, headers=create_only
            )
            == 201
        ]
        if created:
            self._say(f"seeded service 'example' with backends on {', '.join(map(str, ports))}")
        else:
            added = f"; attached {attached}" if attached else ""
            self._say(f"service 'example' kept from the last run{added}")


# ---------------------------------------------------------------- atlas dev wait


def _change_of(zk: Any, path: str) -> tuple[int, int]:
    """(index, mtime in ms) of a service's latest change: its node and its instance nodes."""
    _, stat = zk.get(path)
    index = max(stat.mzxid, stat.pzxid)
    mtime = stat.mtime
    for child in zk.get_children(path):
        _, cstat = zk.get(f"{path}/{child}")
        index = max(index, cstat.mzxid, cstat.pzxid)
        mtime = max(mtime, cstat.mtime)
    return index, mtime


def has_applied(status: Mapping[str, Any], service: str, index: int, mtime_ms: int) -> bool:
    """Whether a sidecar's /status shows the service's change (at `index`, made at `mtime_ms`)
    applied to HAProxy.

    A sidecar that reports `applied_index` is compared by index (exact). One that does not
    (the sidecar before the fleet work) is taken to have applied it when it runs what it
    wants (`in_sync`, no change pending) and last applied something after the change was made.
    """
    if "applied_index" in status:
        lag = (status.get("lagging") or {}).get(service)
        applied = lag.get("applied_index", 0) if isinstance(lag, Mapping) else None
        if applied is None:
            applied = status["applied_index"]
        return isinstance(applied, int) and applied >= index
    pending = any("pending" in str(r) for r in status.get("stale_reasons") or ())
    last = status.get("last_apply")
    return (
        bool(status.get("in_sync"))
        and not pending
        and isinstance(last, int | float)
        and last * 1000 >= mtime_ms
    )


def wait_applied(data_dir: Path, service: str, timeout: float) -> str:
    """Block until the dev stack's sidecar has applied the service's latest change."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoNodeError

    from atlas.contract import Layout

    try:
        info = json.loads((data_dir / STACK_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"no running `atlas dev` in {data_dir} ({exc})") from None
    if not info.get("sidecar"):
        raise click.ClickException("this `atlas dev` runs no sidecar")
    ports = info["ports"]
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    zk = KazooClient(hosts=f"{LOOPBACK}:{ports['zookeeper']}")
    zk.start(timeout=15)
    started = time.monotonic()
    deadline = started + timeout
    try:
        path = Layout(info.get("realm", REALM)).service(service)
        while True:
            try:
                index, mtime = _change_of(zk, path)
            except NoNodeError:
                raise click.ClickException(f"service {service!r} is not in ZooKeeper") from None
            try:
                with urllib.request.urlopen(
                    f"http://{LOOPBACK}:{ports['status']}/status", timeout=5
                ) as resp:
                    status = json.loads(resp.read())
            except (OSError, ValueError):
                status = {}
            if has_applied(status, service, index, mtime):
                took = time.monotonic() - started
                return f"{service}: applied by the sidecar (index {index}, waited {took:.2f}s)"
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"{service}: the sidecar has not applied index {index} within {timeout:g}s"
                )
            time.sleep(0.05)
    finally:
        zk.stop()
        zk.close()


# ----------------------------------------------------------------------- the CLI


def _ports(value: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(p) for p in value.split(",") if p.strip())
    except ValueError:
        raise click.BadParameter(f"expected ports separated by commas, got {value!r}") from None
    if not ports or any(not 1 <= p <= 65535 for p in ports):
        raise click.BadParameter(f"expected ports 1-65535 separated by commas, got {value!r}")
    return ports


class PortType(click.ParamType):
    """A TCP port, 1-65535."""

    name = "port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """The port as an int, or a usage error naming the flag."""
        try:
            port = int(value)
        except (TypeError, ValueError):
            self.fail(f"expected a port (1-65535), got {value!r}", param, ctx)
        if not 1 <= port <= 65535:
            self.fail(f"expected a port (1-65535), got {value!r}", param, ctx)
        return port


PORT = PortType()
DATA_DIR = click.option(
    "--data-dir",
    envvar="ATLAS_DEV_DATA",
    default=".atlas-data",
    show_default=True,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Logs, ZooKeeper's data, moto's state, the sidecar's state.",
)


@click.group(invoke_without_command=True)
@DATA_DIR
@click.option("--api-port", type=PORT, default=8080, show_default=True,
              help="Atlas API (gunicorn).")  # fmt: skip
@click.option("--dynamodb-port", type=PORT, default=8000, show_default=True,
              help="moto server: DynamoDB and KMS.")  # fmt: skip
@click.option("--zk-port", type=PORT, default=2181, show_default=True,
              help="ZooKeeper's client port.")  # fmt: skip
@click.option("--sidecar-port", type=PORT, default=4000, show_default=True,
              help="The sidecar's HAProxy (routes by the Atlas-Service header).")  # fmt: skip
@click.option("--status-port", type=PORT, default=None,
              help="The sidecar's GET /status.  [default: --sidecar-port + 1]")  # fmt: skip
@click.option("--example-ports", default="9001,9002", show_default=True,
              help="The example service's backends, comma-separated.")  # fmt: skip
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="gunicorn worker processes of the API.")  # fmt: skip
@click.option("--no-seed", is_flag=True, help="Do not create the example service and backends.")
@click.option("--fresh", is_flag=True,
              help="Wipe ZooKeeper's data, moto's state and the sidecar's state first.")  # fmt: skip
@click.pass_context
def dev(
    ctx: click.Context,
    data_dir: Path,
    api_port: int,
    dynamodb_port: int,
    zk_port: int,
    sidecar_port: int,
    status_port: int | None,
    example_ports: str,
    workers: int,
    no_seed: bool,
    fresh: bool,
) -> None:
    """Run the local stack on 127.0.0.1 (moto, ZooKeeper, Atlas, sidecar) until Ctrl-C.

    Data persists in the data directory between runs (--fresh to start empty). Ctrl-C,
    SIGTERM or a closed terminal stop every piece; nothing outlives `atlas dev`, even killed.
    """
    if ctx.invoked_subcommand is not None:
        return
    stack = DevStack(
        data_dir=data_dir.resolve(),
        ports=Ports(
            api=api_port,
            dynamodb=dynamodb_port,
            zookeeper=zk_port,
            sidecar=sidecar_port,
            status=status_port if status_port is not None else sidecar_port + 1,
            examples=_ports(example_ports),
        ),
        seed=not no_seed,
        fresh=fresh,
        workers=workers,
    )
    sys.exit(stack.run())


@dev.command("wait")
@click.argument("service")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds.")
@click.pass_context
def wait_command(ctx: click.Context, service: str, timeout: float) -> None:
    """Wait until the running stack's sidecar has applied SERVICE's latest change.

    The stack is the one of `atlas dev --data-dir` (ATLAS_DEV_DATA) given before `wait`.
    """
    data_dir: Path = ctx.parent.params["data_dir"] if ctx.parent else Path(".atlas-data")
    click.echo(wait_applied(data_dir.resolve(), service, timeout))
