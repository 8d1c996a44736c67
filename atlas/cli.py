"""The `atlas` command: migrate, serve, dev (the local stack), settings."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from atlas.config import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"atlas: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending DynamoDB migrations."""
    from atlas.migrate import Migrator

    migrator = Migrator(_settings())
    if args.dry_run:
        for m in migrator.pending():
            print(f"pending {m.id}")
        return 0
    ran = migrator.run()
    print(f"applied {len(ran)} migration(s){': ' + ', '.join(ran) if ran else ''}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API under gunicorn (exec)."""
    _settings()  # fail fast with a clear message before gunicorn forks
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        args.bind,
        "--workers",
        str(args.workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(args.threads),
        "--access-logfile",
        "-",
        "atlas.wsgi:app",
    ]
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def cmd_dev(args: argparse.Namespace) -> int:
    """Run the local stack in the foreground until Ctrl-C."""
    from atlas.devstack import DevStack

    return DevStack.from_args(args).run()


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare DynamoDB with ZooKeeper once and fix every difference."""
    import json

    from atlas.mirror import ZkMirror
    from atlas.registry import Registry, build_models_for

    settings = _settings()
    if not settings.zk_hosts:
        print("atlas: ATLAS_ZK_HOSTS is not set", file=sys.stderr)
        return 2
    mirror = ZkMirror(settings.zk_hosts, settings.realm, timeout=settings.zk_timeout_s)
    mirror.bind(Registry(build_models_for(settings), mirror=mirror))
    try:
        mirror.connect(timeout=args.timeout)
        print(json.dumps(mirror.reconcile(), indent=2))
    finally:
        mirror.stop()
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Print every ATLAS_* setting and its default."""
    for name, default in Settings.documented():
        print(f"{name}={default}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `atlas`."""
    p = argparse.ArgumentParser(prog="atlas", description="Atlas cluster registry")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", help="apply pending DynamoDB migrations")
    m.add_argument("--dry-run", action="store_true", help="list pending migrations only")
    m.set_defaults(func=cmd_migrate)

    s = sub.add_parser("serve", help="run the API under gunicorn")
    s.add_argument("--bind", default=os.environ.get("ATLAS_BIND", "127.0.0.1:8080"))
    s.add_argument("--workers", type=int, default=int(os.environ.get("ATLAS_WORKERS", "2")))
    s.add_argument("--threads", type=int, default=int(os.environ.get("ATLAS_THREADS", "4")))
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("dev", help="run the local stack (moto, ZooKeeper, Atlas, sidecar)")
    d.add_argument("--data-dir", default=os.environ.get("ATLAS_DEV_DATA", ".atlas-data"))
    d.add_argument("--api-port", type=int, default=8080)
    d.add_argument("--dynamodb-port", type=int, default=8000)
    d.add_argument("--zk-port", type=int, default=2181)
    d.add_argument("--sidecar-port", type=int, default=4000)
    d.add_argument("--no-seed", action="store_true", help="do not seed the example service")
    d.set_defaults(func=cmd_dev)

    r = sub.add_parser("reconcile", help="rebuild the ZooKeeper mirror from DynamoDB")
    r.add_argument("--once", action="store_true", help="run one pass and exit (the only mode)")
    r.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for ZooKeeper")
    r.set_defaults(func=cmd_reconcile)

    c = sub.add_parser("settings", help="print every ATLAS_* setting and its default")
    c.set_defaults(func=cmd_settings)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `atlas` console script."""
    # Hook for the operators' click commands (atlas.admin) until this module is one click group.
    from atlas.admin.cli import COMMAND_NAMES
    from atlas.admin.cli import main as admin_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if (argv and argv[0] in COMMAND_NAMES) or "_ATLAS_COMPLETE" in os.environ:
        return admin_main(argv)
    logging.basicConfig(
        level=os.environ.get("ATLAS_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
