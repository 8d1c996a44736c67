"""`atlas-sidecar`: run one sidecar (and its HAProxy) for one realm, or stop them.

The sidecar leaves HAProxy running when it exits (a signal, a crash, an upgrade); the next
sidecar started on the same state directory adopts it. `--stop` is the explicit stop: it ends
the sidecar and its HAProxy. `--stop-haproxy-on-exit` makes any exit an explicit stop (for a
development stack that must leave nothing behind).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click

from atlas.contract import is_sidecar_host_id
from atlas.logs import configure as configure_logging
from atlas.sidecar.core import LoopSettings, Sidecar, SidecarFatal
from atlas.sidecar.haproxy import DEFAULT_HAPROXY, HAProxy, HAProxyError
from atlas.sidecar.render import RenderOptions
from atlas.sidecar.status import StatusServer
from atlas.sidecar.watch import ZooKeeperSource

log = logging.getLogger("atlas.sidecar")

DEFAULT_ZK = "127.0.0.1:2181"


def _env(*names: str) -> list[str]:
    return list(names)


def _state_dir(state_dir: Path | None, realm: str, port: int) -> Path:
    return state_dir or Path(tempfile.gettempdir()) / f"atlas-sidecar-{realm}-{port}"


def _zk_hosts(value: str | None) -> str:
    """--zk, else ATLAS_ZK_HOSTS (the API's name, read by click), else the old ATLAS_ZK."""
    if value:
        return value
    old = os.environ.get("ATLAS_ZK")
    if old:
        log.warning("ATLAS_ZK is deprecated: set ATLAS_ZK_HOSTS (the name the API reads)")
        return old
    return DEFAULT_ZK


def _proxy(state: Path, binary: str, check_timeout: float) -> HAProxy:
    return HAProxy(
        config_path=state / "haproxy.cfg",
        master_socket=state / "master.sock",
        admin_socket=state / "admin.sock",
        binary=binary,
        log_path=state / "haproxy.log",
        pid_file=state / "haproxy.pid",
        check_timeout_s=check_timeout,
    )


def _lock(state: Path, timeout: float) -> IO[str] | None:
    """Hold the state directory's lock (one sidecar per directory); None if it stays taken."""
    f = open(state / "sidecar.lock", "a+")  # noqa: SIM115 - held for the process's lifetime
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                return None
            time.sleep(0.05)


def stop(state: Path, binary: str, timeout: float = 30.0) -> int:
    """The explicit stop: end the sidecar of `state` (if one runs), then its HAProxy."""
    lock = _lock(state, 0)
    if lock is None:  # a sidecar holds the directory: ask it to exit, and wait for it
        try:
            pid = int((state / "sidecar.pid").read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError) as exc:
            click.echo(f"atlas-sidecar: cannot signal the running sidecar: {exc}", err=True)
            return 1
        lock = _lock(state, timeout)
        if lock is None:
            click.echo(f"atlas-sidecar: the sidecar (pid {pid}) did not exit", err=True)
            return 1
    try:
        proxy = _proxy(state, binary, 30.0)
        if not proxy.adopt():
            leftover = proxy.leftover_pid()
            if leftover is None:
                click.echo("atlas-sidecar: no haproxy running for this state directory")
                return 0
            proxy.adopted_pid = leftover
        master = proxy.pid
        proxy.stop(timeout=timeout)
        click.echo(f"atlas-sidecar: stopped haproxy (master {master})")
        return 0
    finally:
        lock.close()


OPTIONS: dict[str, Any] = {"show_default": True}


@click.command(
    name="atlas-sidecar",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--zk",
    envvar="ATLAS_ZK_HOSTS",
    default=None,
    help=f"ZooKeeper connect string [env ATLAS_ZK_HOSTS; ATLAS_ZK is a deprecated alias;"
    f" default: {DEFAULT_ZK}].",
)
@click.option(
    "--realm", envvar=_env("ATLAS_SIDECAR_REALM", "ATLAS_REALM"), default="local",
    help="Realm to route: watches /atlas/<realm>/services.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--port", envvar="ATLAS_SIDECAR_PORT", type=click.IntRange(1, 65535), default=4000,
    help="Port HAProxy listens on.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--bind", envvar="ATLAS_SIDECAR_BIND", default="127.0.0.1",
    help="Address HAProxy listens on.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--header", envvar="ATLAS_SIDECAR_HEADER", default="Atlas-Service",
    help="Request header naming the service.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--state-dir", envvar="ATLAS_SIDECAR_STATE_DIR", type=click.Path(path_type=Path),
    default=None,
    help="Where haproxy.cfg, the maps, sockets, logs and status.json live"
    " [default: $TMPDIR/atlas-sidecar-<realm>-<port>].",
)  # fmt: skip
@click.option(
    "--haproxy", envvar=_env("ATLAS_SIDECAR_HAPROXY", "ATLAS_HAPROXY"), default=DEFAULT_HAPROXY,
    help="HAProxy binary (2.6+), also used for `haproxy -c`.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--status-port", envvar="ATLAS_SIDECAR_STATUS_PORT", type=click.IntRange(0, 65535),
    default=None, help="Serve GET /status and /metrics on 127.0.0.1:<port> (0: any free port).",
)  # fmt: skip
@click.option(
    "--host-id", envvar="ATLAS_SIDECAR_HOST_ID", default=None,
    help="Name of this sidecar's report node, /atlas/<realm>/sidecars/<host-id>"
    " [default: <hostname>:<port>].",
)  # fmt: skip
@click.option(
    "--spares", envvar="ATLAS_SIDECAR_SPARES", type=click.IntRange(0, 10000), default=16,
    help="Spare backends kept for new services (routed without a reload); 0: a new service"
    " needs a reload.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--debounce-ms", envvar="ATLAS_SIDECAR_DEBOUNCE_MS", type=float, default=50.0,
    help="Coalesce changes arriving within this many ms of each other.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--debounce-max-ms", envvar="ATLAS_SIDECAR_DEBOUNCE_MAX_MS", type=float, default=500.0,
    help="Take a never-ending stream of changes at least this often (ms).", **OPTIONS,
)  # fmt: skip
@click.option(
    "--reload-min-interval", envvar="ATLAS_SIDECAR_RELOAD_MIN_INTERVAL", type=float,
    default=1.0, help="Seconds between two HAProxy reloads at least.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--reload-jitter", envvar="ATLAS_SIDECAR_RELOAD_JITTER", type=float, default=0.5,
    help="Random seconds added to the reload interval (spreads a fleet's reloads).", **OPTIONS,
)  # fmt: skip
@click.option(
    "--empty-grace", envvar="ATLAS_SIDECAR_EMPTY_GRACE", type=float, default=60.0,
    help="Seconds to keep a backend's last instances when it suddenly has none (a wiped or"
    " half-read tree); a service emptied or deleted on purpose is applied at once.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--initial-sync-timeout", envvar="ATLAS_SIDECAR_INITIAL_SYNC_TIMEOUT", type=float,
    default=10.0, help="Seconds to wait for a first view before starting HAProxy.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--zk-rebuild-after", envvar="ATLAS_SIDECAR_ZK_REBUILD_AFTER", type=float, default=15.0,
    help="Recreate the ZooKeeper client after this many seconds disconnected.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--zk-session-timeout", envvar="ATLAS_SIDECAR_ZK_SESSION_TIMEOUT", type=float,
    default=10.0, help="ZooKeeper session timeout (s): how long the report node outlives a"
    " crashed sidecar.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--check-timeout", envvar="ATLAS_SIDECAR_CHECK_TIMEOUT", type=float, default=30.0,
    help="Seconds before a hanging `haproxy -c` is killed (it runs off the loop).", **OPTIONS,
)  # fmt: skip
@click.option(
    "--file-sync-delay", envvar="ATLAS_SIDECAR_FILE_SYNC_DELAY", type=float, default=1.0,
    help="Seconds after runtime changes before haproxy.cfg is rewritten to match them.",
    **OPTIONS,
)  # fmt: skip
@click.option(
    "--publish-interval", envvar="ATLAS_SIDECAR_PUBLISH_INTERVAL", type=float, default=1.0,
    help="At most one write of the report node per this many seconds.", **OPTIONS,
)  # fmt: skip
@click.option(
    "--lock-timeout", envvar="ATLAS_SIDECAR_LOCK_TIMEOUT", type=float, default=30.0,
    help="Seconds to wait for a previous sidecar on the same state directory to exit.",
    **OPTIONS,
)  # fmt: skip
@click.option(
    "--stop-haproxy-on-exit", envvar="ATLAS_SIDECAR_STOP_HAPROXY_ON_EXIT", is_flag=True,
    help="Stop HAProxy when the sidecar exits (development stacks). Without it HAProxy keeps"
    " serving and the next sidecar adopts it.",
)  # fmt: skip
@click.option(
    "--stop", "stop_now", is_flag=True,
    help="The explicit stop: end the sidecar of this state directory and its HAProxy, then"
    " exit.",
)  # fmt: skip
@click.option(
    "--log-level", envvar=_env("ATLAS_SIDECAR_LOG_LEVEL", "ATLAS_LOG_LEVEL"), default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    help="Log level.", **OPTIONS,
)  # fmt: skip
def main(**args: Any) -> None:
    """Watch /atlas/<realm>/services in ZooKeeper and drive a local HAProxy that routes by
    the service request header."""
    configure_logging(args["log_level"])
    state = _state_dir(args["state_dir"], args["realm"], args["port"])
    state.mkdir(parents=True, exist_ok=True)
    if args["stop_now"]:
        sys.exit(stop(state, args["haproxy"]))
    sys.exit(run(state, args))


def run(state: Path, args: dict[str, Any]) -> int:
    """Run the sidecar until a signal; return the exit code."""
    host_id = args["host_id"] or f"{socket.gethostname()}:{args['port']}"
    if not is_sidecar_host_id(host_id):
        log.critical("invalid --host-id %r", host_id)
        return 2
    try:
        options = RenderOptions(
            port=args["port"],
            bind_address=args["bind"],
            header=args["header"],
            admin_socket=str(state / "admin.sock"),
            realm=args["realm"],
            map_file=str(state / "services.map"),
            check_map_file=str(state / "checks.map"),
            server_state_file=str(state / "server-state"),
            spares=args["spares"],
        )
    except ValueError as exc:
        log.critical("%s", exc)
        return 2
    lock = _lock(state, args["lock_timeout"])
    if lock is None:
        log.critical("another sidecar holds %s", state / "sidecar.lock")
        return 1
    (state / "sidecar.pid").write_text(f"{os.getpid()}\n")
    proxy = _proxy(state, args["haproxy"], args["check_timeout"])
    settings = LoopSettings(
        debounce_s=args["debounce_ms"] / 1000,
        debounce_max_s=args["debounce_max_ms"] / 1000,
        reload_min_interval_s=args["reload_min_interval"],
        reload_jitter_s=args["reload_jitter"],
        empty_grace_s=args["empty_grace"],
        initial_sync_timeout_s=args["initial_sync_timeout"],
        status_file=state / "status.json",
        applied_file=state / "applied.json",
        file_sync_delay_s=args["file_sync_delay"],
        check_timeout_s=args["check_timeout"],
        publish_interval_s=args["publish_interval"],
    )
    source = ZooKeeperSource(
        _zk_hosts(args["zk"]),
        args["realm"],
        rebuild_after_s=args["zk_rebuild_after"],
        host_id=host_id,
        session_timeout_s=args["zk_session_timeout"],
    )
    sidecar = Sidecar(source, proxy, options, settings, host_id=host_id)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sidecar.request_stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    status_server = None
    try:
        sidecar.boot()
        if args["status_port"] is not None:
            status_server = StatusServer(sidecar.status_dict, args["status_port"])
            status_server.start()
            log.info("status on http://127.0.0.1:%d/status", status_server.port)
        log.info(
            "routing %s:%d by header %s for realm %s as %s (state in %s)",
            args["bind"],
            args["port"],
            args["header"],
            args["realm"],
            host_id,
            state,
        )
        sidecar.run()
        return 0
    except (SidecarFatal, HAProxyError) as exc:
        log.critical("%s", exc)
        return 1
    finally:
        if status_server is not None:
            status_server.stop()
        sidecar.shutdown(stop_haproxy=args["stop_haproxy_on_exit"])
        with contextlib.suppress(OSError):
            (state / "sidecar.pid").unlink()
        lock.close()


if __name__ == "__main__":
    main()
