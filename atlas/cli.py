"""The `atlas` command (click): migrate, serve, dev, reconcile, settings, new-service.

Another module adds a command with one line: `cli.add_command(my_command)`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from atlas import __version__
from atlas.admin.cli import COMMANDS as ADMIN_COMMANDS
from atlas.config import SETTINGS_CLASSES, ConfigError, ServeSettings, Settings
from atlas.devstack import dev
from atlas.envvars import COMPONENTS, LOG_LEVEL, click_documented
from atlas.logs import configure
from atlas.service.scaffold import new_service


class AtlasGroup(click.Group):
    """A click group whose commands stop with `atlas: configuration error: ...` (exit 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a bad setting becomes a one-line message and exit status 2."""
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"atlas: configuration error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=AtlasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atlas")
def cli() -> None:
    """Atlas, the cluster registry. Settings are ATLAS_* variables: see `atlas settings`."""
    configure(LOG_LEVEL.read())


@cli.command()
@click.option("--dry-run", is_flag=True, help="List the pending migrations; apply nothing.")
def migrate(dry_run: bool) -> None:
    """Apply pending DynamoDB migrations (idempotent; safe when two run at once)."""
    from atlas.migrate import Migrator

    migrator = Migrator(Settings.from_env())
    if dry_run:
        for m in migrator.pending():
            click.echo(f"pending {m.id}")
        return
    ran = migrator.run()
    click.echo(f"applied {len(ran)} migration(s){': ' + ', '.join(ran) if ran else ''}")


@cli.command()
@click.option("--bind", help="host:port (or unix:PATH) to listen on.  [default: ATLAS_BIND]")
@click.option("--workers", type=int, help="gunicorn worker processes.  [default: ATLAS_WORKERS]")
@click.option("--threads", type=int, help="threads per worker.  [default: ATLAS_THREADS]")
@click.option("--preload", is_flag=True, help="Import the app once in gunicorn's master.")
def serve(bind: str | None, workers: int | None, threads: int | None, preload: bool) -> None:
    """Run the API under gunicorn (atlas.gunicorn_conf), replacing this process."""
    Settings.from_env()  # fail fast with a clear message before gunicorn forks
    given = {"bind": bind, "workers": workers, "threads": threads}
    listen = ServeSettings.from_env(**{k: v for k, v in given.items() if v is not None})
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:atlas.gunicorn_conf",
            "--bind", listen.bind, "--workers", str(listen.workers),
            "--threads", str(listen.threads)]  # fmt: skip
    if preload:
        argv.append("--preload")
    os.execv(sys.executable, [*argv, "atlas.wsgi:app"])


@cli.command()
@click.option(
    "--timeout", default=15.0, show_default=True, help="Seconds to wait for a ZooKeeper session."
)
def reconcile(timeout: float) -> None:
    """Compare DynamoDB with ZooKeeper once, fix every difference, print what was done."""
    from atlas.mirror import ZkMirror
    from atlas.registry import Registry, ScanPolicy, build_models_for

    settings = Settings.from_env()
    if not settings.zk_hosts:
        raise click.UsageError("ATLAS_ZK_HOSTS is not set: there is no mirror to reconcile")
    mirror = ZkMirror(settings.zk_hosts, settings.realm, timeout=settings.zk_timeout_s)
    mirror.bind(Registry(build_models_for(settings), mirror=mirror, scan=ScanPolicy.of(settings)))
    try:
        mirror.connect(timeout=timeout)
        click.echo(json.dumps(mirror.reconcile(), indent=2))
    finally:
        mirror.stop()


Rows = list[tuple[str, str, str]]


def settings_sections() -> list[tuple[str, Rows]]:
    """(component, [(variable, default, meaning)]) of every part of Atlas, each from its own
    declaration: the server's settings classes, `atlas dev`'s and the sidecar's click options,
    the client side's `atlas.envvars` components."""
    sections: list[tuple[str, Rows]] = [(cls.title, cls.documented()) for cls in SETTINGS_CLASSES]
    sections.append(
        ("Local stack (atlas dev; every flag: atlas dev --help)", click_documented(dev))
    )
    from atlas.sidecar import cli as sidecar_cli

    sidecar_main = getattr(sidecar_cli, "main", None)
    if isinstance(sidecar_main, click.Command):
        sections.append(("Sidecar (atlas-sidecar)", click_documented(sidecar_main)))
    else:
        sections.append(
            ("Sidecar (atlas-sidecar; its flags and variables: atlas-sidecar --help)", [])
        )
    sections += [(c.title, c.documented()) for c in COMPONENTS]
    return sections


@cli.command("settings")
def show_settings() -> None:
    """Print every variable of every component with its default and meaning (a variable that
    several components read is listed once, where it first appears)."""
    listed: set[str] = set()
    for title, rows in settings_sections():
        click.echo(f"# {title}")
        new = [row for row in rows if row[0] not in listed]
        if new:
            width = max(len(name) for name, _, _ in new)
            dwidth = max(len(default) for _, default, _ in new)
            for name, default, meaning in new:
                click.echo(f"{name:<{width}}  {default:<{dwidth}}  {meaning}".rstrip())
        shared = [name for name, _, _ in rows if name in listed]
        if shared:
            click.echo(f"(also reads {', '.join(shared)}: listed above)")
        listed.update(name for name, _, _ in rows)
        click.echo()


for _admin_command in ADMIN_COMMANDS:
    cli.add_command(_admin_command)
cli.add_command(new_service)
cli.add_command(dev)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `atlas` console script: run one command and exit with its status."""
    cli.main(args=None if argv is None else list(argv), prog_name="atlas")


if __name__ == "__main__":
    main()
