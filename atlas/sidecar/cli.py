"""`atlas-sidecar`: run one sidecar (and its HAProxy) for one realm."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from atlas.sidecar.core import Settings, Sidecar, SidecarFatal
from atlas.sidecar.haproxy import DEFAULT_HAPROXY, HAProxy, HAProxyError
from atlas.sidecar.render import RenderOptions
from atlas.sidecar.status import StatusServer
from atlas.sidecar.watch import ZooKeeperSource

log = logging.getLogger("atlas.sidecar")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (every flag also reads an ATLAS_SIDECAR_* environment variable)."""
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="atlas-sidecar",
        description="Watch /atlas/<realm>/services in ZooKeeper and drive a local HAProxy.",
    )
    p.add_argument("--zk", default=env("ATLAS_ZK", "127.0.0.1:2181"), help="ZooKeeper hosts")
    p.add_argument("--realm", default=env("ATLAS_REALM", "local"))
    p.add_argument("--port", type=int, default=int(env("ATLAS_SIDECAR_PORT", "4000")))
    p.add_argument("--bind", default="127.0.0.1", help="address HAProxy listens on")
    p.add_argument("--header", default="Atlas-Service", help="request header naming the service")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where haproxy.cfg, sockets, logs and status.json live"
        " (default: $TMPDIR/atlas-sidecar-<realm>-<port>)",
    )
    p.add_argument("--haproxy", default=env("ATLAS_HAPROXY", DEFAULT_HAPROXY))
    p.add_argument("--status-port", type=int, default=None, help="serve GET /status on loopback")
    p.add_argument("--debounce-ms", type=float, default=50.0)
    p.add_argument("--debounce-max-ms", type=float, default=500.0)
    p.add_argument("--reload-min-interval", type=float, default=1.0, help="seconds")
    p.add_argument("--reload-jitter", type=float, default=0.5, help="seconds")
    p.add_argument(
        "--empty-grace",
        type=float,
        default=60.0,
        help="seconds to keep a backend's last instances when it suddenly has none",
    )
    p.add_argument("--initial-sync-timeout", type=float, default=10.0, help="seconds")
    p.add_argument("--zk-rebuild-after", type=float, default=15.0, help="seconds")
    p.add_argument("--log-level", default=env("ATLAS_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `atlas-sidecar` console script."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    state = (
        args.state_dir or Path(tempfile.gettempdir()) / f"atlas-sidecar-{args.realm}-{args.port}"
    )
    state.mkdir(parents=True, exist_ok=True)
    options = RenderOptions(
        port=args.port,
        bind_address=args.bind,
        header=args.header,
        admin_socket=str(state / "admin.sock"),
        realm=args.realm,
    )
    proxy = HAProxy(
        config_path=state / "haproxy.cfg",
        master_socket=state / "master.sock",
        admin_socket=state / "admin.sock",
        binary=args.haproxy,
        log_path=state / "haproxy.log",
    )
    settings = Settings(
        debounce_s=args.debounce_ms / 1000,
        debounce_max_s=args.debounce_max_ms / 1000,
        reload_min_interval_s=args.reload_min_interval,
        reload_jitter_s=args.reload_jitter,
        empty_grace_s=args.empty_grace,
        initial_sync_timeout_s=args.initial_sync_timeout,
        status_file=state / "status.json",
    )
    source = ZooKeeperSource(args.zk, args.realm, rebuild_after_s=args.zk_rebuild_after)
    sidecar = Sidecar(source, proxy, options, settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sidecar.request_stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    status_server = None
    try:
        sidecar.boot()
        if args.status_port is not None:
            status_server = StatusServer(sidecar.status_dict, args.status_port)
            status_server.start()
            log.info("status on http://127.0.0.1:%d/status", status_server.port)
        log.info(
            "routing %s:%d by header %s for realm %s (state in %s)",
            args.bind,
            args.port,
            args.header,
            args.realm,
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
        sidecar.shutdown()


if __name__ == "__main__":
    sys.exit(main())
