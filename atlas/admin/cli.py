"""The operators' commands of `atlas` (services, instances, hosts, config, tokens, audit) over HTTP.

Every command talks to the Atlas HTTP API (`--url` / `ATLAS_URL`, `--token` /
`ATLAS_TOKEN`), prints tables for people or JSON for scripts (`--json`), and
exits 0 when it worked, 1 when Atlas refused or could not be reached (the
problem's title, detail and field errors on stderr), 2 on a usage error.
`COMMANDS` lists the top-level click commands so any click group can mount
them; `admin` is a group holding all of them (the `atlas` entry point hands
these names to it until `atlas/cli.py` is one click group).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, TypeVar

import click
from click.shell_completion import CompletionItem

from atlas.admin.api import DEFAULT_TIMEOUT_S, DEFAULT_URL, AdminApi, ApiError, Unreachable
from atlas.admin.api import segment as seg
from atlas.admin.output import (
    ago,
    block,
    describe_changes,
    emit_json,
    parse_duration,
    rfc3339,
    table,
)
from atlas.contract import instance_id, parse_instance_id
from atlas.envvars import ADMIN_CLI, ConfigError
from atlas.errors import ValidationFailed

F = TypeVar("F", bound=Callable[..., Any])

#: Fields the API added with the guard rails; shown when the server returns them.
NEWER_INSTANCE_FIELDS = ("disabled_until", "drain", "slow_start_s")
#: The longest --for Atlas accepts (disabled_until at most 30 days ahead).
MAX_FOR = timedelta(days=30)


# ------------------------------------------------------------------ errors and context


class ApiFailure(click.ClickException):
    """Atlas refused the request or did not answer: exit 1 with the problem on stderr."""

    exit_code = 1

    def __init__(self, message: str, problem: dict[str, Any] | None, as_json: bool) -> None:
        super().__init__(message)
        self.problem = problem
        self.as_json = as_json

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the problem: JSON with --json, else `atlas: <status> <title>: <detail>` lines."""
        if self.as_json and self.problem is not None:
            click.echo(json.dumps(self.problem, sort_keys=True), err=True)
        else:
            click.echo(self.message, err=True)


def describe(exc: ApiError) -> str:
    """The lines an operator reads for a refused request: title, detail, each field's errors."""
    lines = [f"atlas: {exc.status} {exc.title}: {exc.detail}".rstrip(": ")]
    for name in sorted(exc.errors):
        for message in exc.errors[name]:
            lines.append(f"  {name}: {message}")
    if exc.status in (400, 422) and "Unknown field." in exc.errors.get("disabled_until", ()):
        lines.append(
            "hint: this Atlas server does not accept disabled_until (timed disables) yet; "
            "disable without --for, and enable again by hand"
        )
    if exc.status == 409 and isinstance(exc.body, Mapping) and exc.body.get("refused"):
        lines.append("hint: the service's min_enabled refuses it; --force does it anyway")
    if exc.status == 412:
        lines.append("hint: the resource changed since that version; read it again")
    if exc.status == 401:
        lines.append("hint: pass --token or set ATLAS_TOKEN")
    return "\n".join(lines)


@dataclass
class Op:
    """What a command works with: the API client and the output mode."""

    api: AdminApi
    as_json: bool

    def show(self, data: Any, human: Callable[[], str]) -> None:
        """Print data as JSON for scripts, or human() for people."""
        if self.as_json:
            emit_json(data)
        else:
            text = human()
            if text:
                click.echo(text)


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"expected an http(s) URL, got {value!r}")
    return value


def api_command(f: F) -> F:
    """Give a command --url, --token, --json, --timeout and turn API errors into exit 1."""

    @click.option(
        "--url",
        envvar="ATLAS_URL",
        default=DEFAULT_URL,
        show_default=True,
        show_envvar=True,
        callback=_check_url,
        help="Base URL of the Atlas API.",
    )
    @click.option(
        "--token",
        envvar="ATLAS_TOKEN",
        default=None,
        show_envvar=True,
        help="Bearer token (prefer the environment variable: argv is visible to others).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @click.option(
        "--timeout",
        type=click.FloatRange(0.1, 600),
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        help="Seconds to wait for each HTTP answer.",
    )
    @functools.wraps(f)
    def wrapper(url: str, token: str | None, as_json: bool, timeout: float, **kwargs: Any) -> Any:
        op = Op(AdminApi(url, token or None, timeout), as_json)
        try:
            return f(op, **kwargs)
        except ApiError as exc:
            problem = exc.body or {"status": exc.status, "title": exc.title, "detail": exc.detail}
            raise ApiFailure(describe(exc), problem, as_json) from None
        except Unreachable as exc:
            problem = {"status": None, "title": "Unreachable", "detail": str(exc)}
            raise ApiFailure(f"atlas: {exc}", problem, as_json) from None
        finally:
            op.api.close()

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------ parameter types


def _completion_api(ctx: click.Context) -> AdminApi:
    try:
        url = ctx.params.get("url") or ADMIN_CLI.get("ATLAS_URL")
        token = ctx.params.get("token") or ADMIN_CLI.get("ATLAS_TOKEN")
    except ConfigError:
        url, token = DEFAULT_URL, None  # a completion must never print an error
    return AdminApi(str(url), str(token) if token else None, timeout=2.0)


def _complete(ctx: click.Context, path: str, incomplete: str, key: str) -> list[CompletionItem]:
    """Names from the API for shell completion; nothing when Atlas does not answer."""
    api = _completion_api(ctx)
    try:
        names = [str(item.get(key)) for item in api.pages(path, limit=2000)]
    except (ApiError, Unreachable):
        return []  # a completion must never print an error into the user's shell line
    finally:
        api.close()
    return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]


class ServiceName(click.ParamType):
    """A service name (checked by Atlas); completes from the API."""

    name = "SERVICE"

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        """Service names that start with what was typed."""
        return _complete(ctx, "/v1/services", incomplete, "name")


class InstanceId(click.ParamType):
    """`HOST:PORT` (`[v6]:PORT` for IPv6), normalized; completes from the service's instances."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """Parse and normalize, or fail as a usage error naming the rule."""
        try:
            host, port = parse_instance_id(str(value))
        except ValidationFailed as exc:
            why = "; ".join(f"{k}: {' '.join(v)}" for k, v in (exc.errors or {}).items())
            self.fail(f"{value!r} is not HOST:PORT ({why or exc.detail})", param, ctx)
        return instance_id(host, port)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        """Instance ids of the service named earlier on the line."""
        service = ctx.params.get("service")
        if not service:
            return []
        return _complete(ctx, f"/v1/services/{seg(str(service))}/instances", incomplete, "id")


SERVICE = ServiceName()
INSTANCE = InstanceId()


def if_version_option(f: F) -> F:
    """--if-version N: send If-Match, so the write happens only at that version (412 otherwise)."""
    return click.option(
        "--if-version",
        type=click.IntRange(1),
        default=None,
        help="Write only if the resource is still at this version (If-Match).",
    )(f)


def force_option(f: F) -> F:
    """--force: do it even below a service's min_enabled (sends ?force=true)."""
    return click.option(
        "--force",
        is_flag=True,
        help="Do it even if a service is left with fewer enabled instances than its min_enabled.",
    )(f)


def for_option(f: F) -> F:
    """--for DURATION: a timed disable (sends disabled_until = now + DURATION)."""
    return click.option(
        "--for",
        "for_",
        metavar="DURATION",
        default=None,
        help="Enable again by itself after this long (30m, 1h30m, 2d; at most 30d): "
        "sends disabled_until.",
    )(f)


def until_of(for_: str | None) -> str | None:
    """The disabled_until of a --for DURATION (None without one); a usage error if bad."""
    if for_ is None:
        return None
    try:
        delta = parse_duration(for_)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--for'") from None
    if delta <= timedelta(0) or delta > MAX_FOR:
        raise click.BadParameter("must be more than 0 and at most 30d", param_hint="'--for'")
    return rfc3339(datetime.now(UTC) + delta)


def _force(force: bool) -> dict[str, str] | None:
    return {"force": "true"} if force else None


# ------------------------------------------------------------------ rendering


def _health(hc: Any) -> str:
    if not isinstance(hc, Mapping):
        return "-"
    return f"{hc.get('path')} every {hc.get('interval_s')}s, timeout {hc.get('timeout_s')}s"


def render_service(svc: Mapping[str, Any]) -> str:
    """A service as a key/value block (fields the server does not send are left out)."""
    pairs: list[tuple[str, Any]] = [
        ("name", svc.get("name")),
        ("description", svc.get("description")),
        ("owner", svc.get("owner")),
        ("port", svc.get("port")),
        ("health check", _health(svc.get("health_check"))),
        ("tags", svc.get("tags")),
    ]
    if "min_enabled" in svc:
        pairs.append(("min enabled", svc.get("min_enabled")))
    pairs += [
        ("version", svc.get("version")),
        ("created", svc.get("created_at")),
        ("updated", ago(svc.get("updated_at"))),
    ]
    return block(pairs)


def instance_rows(
    items: list[dict[str, Any]], with_service: bool = False
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of an instance table; UNTIL only when the server sends disabled_until."""
    until = any("disabled_until" in i for i in items)
    drain = any(i.get("drain") for i in items)
    slow = any(i.get("slow_start_s") for i in items)
    headers = ["id", "enabled", "weight", "zone", "disabled reason", "since"]
    if until:
        headers.append("until")
    if drain:
        headers.append("drain")
    if slow:
        headers.append("slow start")
    headers += ["labels", "version"]
    if with_service:
        headers.insert(0, "service")
    rows = []
    for i in items:
        disabled = not i.get("enabled", True)
        row: list[Any] = [
            i.get("id"),
            i.get("enabled"),
            i.get("weight"),
            i.get("zone"),
            i.get("disabled_reason") if disabled else None,
            ago(i.get("updated_at")) if disabled else None,
        ]
        if until:
            row.append(ago(i.get("disabled_until")) if disabled else None)
        if drain:
            row.append(bool(i.get("drain")))
        if slow:
            row.append(f"{i['slow_start_s']}s" if i.get("slow_start_s") else None)
        row += [i.get("labels"), i.get("version")]
        if with_service:
            row.insert(0, i.get("service"))
        rows.append(row)
    return headers, rows


def render_instances(items: list[dict[str, Any]], with_service: bool = False) -> str:
    """An instance table, or a line saying there is none."""
    if not items:
        return "(no instances)"
    return table(*instance_rows(items, with_service))


def render_instance_change(verb: str, inst: Mapping[str, Any]) -> str:
    """One line after a write: `disabled identity 10.0.0.2:8000 (version 3): deploying`."""
    line = f"{verb} {inst.get('service')} {inst.get('id')} (version {inst.get('version')})"
    if not inst.get("enabled", True):
        line += f": disabled, reason {inst.get('disabled_reason') or '-'}"
        if inst.get("disabled_until"):
            line += f", until {inst.get('disabled_until')}"
    elif inst.get("drain"):
        line += ": draining (no new requests)"
    if inst.get("slow_start_s"):
        line += f", slow start {inst.get('slow_start_s')}s"
    return line


def counts(items: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{"enabled": n, "total": m} of some instances."""
    listed = list(items)
    return {"enabled": sum(1 for i in listed if i.get("enabled")), "total": len(listed)}


# ------------------------------------------------------------------ services


@click.group()
def services() -> None:
    """List, show, create and delete services."""


@services.command("ls")
@click.option("--counts", "with_counts", is_flag=True, help="Also count enabled/total instances.")
@api_command
def services_ls(op: Op, with_counts: bool) -> None:
    """List every service."""
    items = list(op.api.pages("/v1/services"))
    if with_counts:
        for svc in items:
            path = f"/v1/services/{seg(svc['name'])}/instances"
            svc["instances"] = counts(op.api.pages(path))

    def human() -> str:
        if not items:
            return "(no services)"
        headers = ["name", "port", "owner", "health check", "tags", "version", "updated"]
        if with_counts:
            headers.insert(1, "instances")
        rows = []
        for s in items:
            hc = s.get("health_check")
            row = [
                s.get("name"),
                s.get("port"),
                s.get("owner"),
                hc.get("path") if isinstance(hc, Mapping) else None,
                s.get("tags"),
                s.get("version"),
                s.get("updated_at"),
            ]
            if with_counts:
                c = s["instances"]
                row.insert(1, f"{c['enabled']}/{c['total']} enabled")
            rows.append(row)
        return table(headers, rows, wide=("changes",))

    op.show(items, human)


@services.command("show")
@click.argument("service", type=SERVICE)
@api_command
def services_show(op: Op, service: str) -> None:
    """Show a service and its instances."""
    svc = op.api.call("GET", f"/v1/services/{seg(service)}")
    items = list(op.api.pages(f"/v1/services/{seg(service)}/instances"))
    c = counts(items)

    def human() -> str:
        head = render_service(svc)
        return f"{head}\n\ninstances ({c['enabled']}/{c['total']} enabled):\n" + render_instances(
            items
        )

    op.show({**svc, "instances": items}, human)


@services.command("create")
@click.argument("service", type=SERVICE)
@click.option("--port", type=click.IntRange(1, 65535), help="Default port of its instances.")
@click.option("--description", default=None, help="What the service does.")
@click.option("--owner", default=None, help="The team that owns it.")
@click.option("--health-check", "hc_path", metavar="PATH", help="HTTP health check path.")
@click.option("--interval", type=click.IntRange(1, 3600), help="Health check interval (s).")
@click.option("--check-timeout", type=click.IntRange(1, 600), help="Health check timeout (s).")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option(
    "--min-enabled",
    type=click.IntRange(0, 10000),
    default=None,
    help="Refuse disables that would leave fewer enabled instances (0: no floor).",
)
@api_command
def services_create(
    op: Op,
    service: str,
    port: int | None,
    description: str | None,
    owner: str | None,
    hc_path: str | None,
    interval: int | None,
    check_timeout: int | None,
    tags: tuple[str, ...],
    min_enabled: int | None,
) -> None:
    """Register a service."""
    body: dict[str, Any] = {"name": service}
    for key, value in (
        ("port", port),
        ("description", description),
        ("owner", owner),
        ("min_enabled", min_enabled),
    ):
        if value is not None:
            body[key] = value
    if tags:
        body["tags"] = list(tags)
    if hc_path is None and (interval is not None or check_timeout is not None):
        raise click.UsageError("--interval and --check-timeout need --health-check PATH")
    if hc_path is not None:
        hc: dict[str, Any] = {"path": hc_path}
        if interval is not None:
            hc["interval_s"] = interval
        if check_timeout is not None:
            hc["timeout_s"] = check_timeout
        body["health_check"] = hc
    svc = op.api.call("POST", "/v1/services", body=body)
    op.show(svc, lambda: render_service(svc))


@services.command("update")
@click.argument("service", type=SERVICE)
@click.option("--port", type=click.IntRange(1, 65535), help="Default port of its instances.")
@click.option("--description", default=None, help="What the service does.")
@click.option("--owner", default=None, help="The team that owns it.")
@click.option(
    "--min-enabled",
    type=click.IntRange(0, 10000),
    default=None,
    help="Refuse disables that would leave fewer enabled instances (0: no floor).",
)
@if_version_option
@api_command
def services_update(
    op: Op,
    service: str,
    port: int | None,
    description: str | None,
    owner: str | None,
    min_enabled: int | None,
    if_version: int | None,
) -> None:
    """Change some fields of a service (the ones given)."""
    body: dict[str, Any] = {
        key: value
        for key, value in (
            ("port", port),
            ("description", description),
            ("owner", owner),
            ("min_enabled", min_enabled),
        )
        if value is not None
    }
    if not body:
        raise click.UsageError("nothing to change: give at least one option")
    svc = op.api.call("PATCH", f"/v1/services/{seg(service)}", body=body, if_version=if_version)
    op.show(svc, lambda: render_service(svc))


@services.command("delete")
@click.argument("service", type=SERVICE)
@click.option("--cascade", is_flag=True, help="Also detach its instances and drop its config.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@if_version_option
@api_command
def services_delete(op: Op, service: str, cascade: bool, yes: bool, if_version: int | None) -> None:
    """Delete a service (refused while it has instances or config, unless --cascade)."""
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("refusing to delete without --yes when not at a terminal")
        what = " with its instances and config" if cascade else ""
        click.confirm(f"Delete service {service}{what}?", abort=True, err=True)
    params = {"cascade": "true"} if cascade else None
    op.api.call("DELETE", f"/v1/services/{seg(service)}", params=params, if_version=if_version)
    op.show({"deleted": service}, lambda: f"deleted {service}")


# ------------------------------------------------------------------ instances


@click.group()
def instances() -> None:
    """List the instances of a service."""


@instances.command("ls")
@click.argument("service", type=SERVICE)
@api_command
def instances_ls(op: Op, service: str) -> None:
    """List a service's instances: enabled, weight, zone, why and since when disabled."""
    items = list(op.api.pages(f"/v1/services/{seg(service)}/instances"))
    op.show(items, lambda: render_instances(items))


def _instance_path(service: str, iid: str) -> str:
    return f"/v1/services/{seg(service)}/instances/{seg(iid)}"


def _label(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {v!r}")
        out[key] = value
    return out


@click.command()
@click.argument("service", type=SERVICE)
@click.argument("instance", type=INSTANCE, metavar="HOST:PORT")
@click.option("--weight", type=click.IntRange(0, 256), help="Routing weight (default 100).")
@click.option("--zone", default=None, help="Availability zone of the instance.")
@click.option("--label", "labels", multiple=True, callback=_label, help="KEY=VALUE (repeatable).")
@click.option("--disabled", is_flag=True, help="Attach it disabled.")
@click.option("--reason", default=None, help="Why it is attached disabled.")
@click.option("--new", "create_only", is_flag=True, help="Only create: fail if it is attached.")
@click.option("--drain", is_flag=True, help="Attach it draining (no new requests).")
@click.option(
    "--slow-start",
    type=click.IntRange(0, 3600),
    default=None,
    metavar="SECONDS",
    help="After an enable, ramp its weight up over this many seconds.",
)
@force_option
@if_version_option
@api_command
def attach(
    op: Op,
    service: str,
    instance: str,
    weight: int | None,
    zone: str | None,
    labels: dict[str, str],
    disabled: bool,
    reason: str | None,
    create_only: bool,
    drain: bool,
    slow_start: int | None,
    force: bool,
    if_version: int | None,
) -> None:
    """Attach HOST:PORT to a service (or replace it: every field not given takes its default)."""
    if reason is not None and not disabled:
        raise click.UsageError("--reason goes with --disabled")
    if create_only and if_version is not None:
        raise click.UsageError("--new and --if-version exclude each other")
    body: dict[str, Any] = {"enabled": not disabled}
    if weight is not None:
        body["weight"] = weight
    if zone is not None:
        body["zone"] = zone
    if labels:
        body["labels"] = labels
    if reason is not None:
        body["disabled_reason"] = reason
    if drain:
        body["drain"] = True
    if slow_start is not None:
        body["slow_start_s"] = slow_start
    headers = {"If-None-Match": "*"} if create_only else None
    resp = op.api.request(
        "PUT",
        _instance_path(service, instance),
        body=body,
        params=_force(force),
        if_version=if_version,
        headers=headers,
    )
    inst = resp.json()
    verb = "attached" if resp.status_code == 201 else "replaced"
    op.show(inst, lambda: render_instance_change(verb, inst))


@click.command()
@click.argument("service", type=SERVICE)
@click.argument("instance", type=INSTANCE, metavar="HOST:PORT")
@force_option
@if_version_option
@api_command
def detach(op: Op, service: str, instance: str, force: bool, if_version: int | None) -> None:
    """Detach HOST:PORT from a service (refused below its min_enabled unless --force)."""
    op.api.call(
        "DELETE", _instance_path(service, instance), params=_force(force), if_version=if_version
    )
    op.show({"detached": instance, "service": service}, lambda: f"detached {service} {instance}")


@click.command()
@click.argument("service", type=SERVICE)
@click.argument("instance", type=INSTANCE, metavar="HOST:PORT")
@if_version_option
@api_command
def enable(op: Op, service: str, instance: str, if_version: int | None) -> None:
    """Enable HOST:PORT of a service again (its disabled reason is cleared)."""
    inst = op.api.call(
        "PATCH", _instance_path(service, instance), body={"enabled": True}, if_version=if_version
    )
    op.show(inst, lambda: render_instance_change("enabled", inst))


@click.command()
@click.argument("service", type=SERVICE)
@click.argument("instance", type=INSTANCE, metavar="HOST:PORT")
@click.option("--reason", default=None, help="Why (shown to every operator).")
@for_option
@force_option
@if_version_option
@api_command
def disable(
    op: Op,
    service: str,
    instance: str,
    reason: str | None,
    for_: str | None,
    force: bool,
    if_version: int | None,
) -> None:
    """Disable HOST:PORT of a service without detaching it (no new requests go to it).

    Refused when the service would be left with fewer enabled instances than its min_enabled,
    unless --force. With --for it ends by itself: Atlas enables it again then.
    """
    body: dict[str, Any] = {"enabled": False}
    if reason is not None:
        body["disabled_reason"] = reason
    until = until_of(for_)
    if until is not None:
        body["disabled_until"] = until
    inst = op.api.call(
        "PATCH",
        _instance_path(service, instance),
        body=body,
        params=_force(force),
        if_version=if_version,
    )
    op.show(inst, lambda: render_instance_change("disabled", inst))


@click.command()
@click.argument("service", type=SERVICE)
@click.argument("instance", type=INSTANCE, metavar="HOST:PORT")
@click.option("--undo", is_flag=True, help="Stop draining: take new requests again.")
@force_option
@if_version_option
@api_command
def drain(
    op: Op, service: str, instance: str, undo: bool, force: bool, if_version: int | None
) -> None:
    """Drain HOST:PORT: no new requests, open ones finish (it stays enabled and attached).

    A draining instance does not count toward min_enabled: refused like a disable unless
    --force. `enable` also undrains.
    """
    inst = op.api.call(
        "PATCH",
        _instance_path(service, instance),
        body={"drain": not undo},
        params=None if undo else _force(force),
        if_version=if_version,
    )
    op.show(inst, lambda: render_instance_change("undrained" if undo else "drained", inst))


# ------------------------------------------------------------------ hosts


@click.group()
def hosts() -> None:
    """Everything on one host, across services; take a host out everywhere."""


@hosts.command("show")
@click.argument("host")
@api_command
def hosts_show(op: Op, host: str) -> None:
    """Every instance on HOST."""
    body = op.api.call("GET", f"/v1/hosts/{seg(host)}")
    items = body.get("items") or []
    c = counts(items)

    def human() -> str:
        head = f"host {body.get('host')}: {c['enabled']}/{c['total']} enabled"
        return head + "\n" + render_instances(items, with_service=True)

    op.show(body, human)


@hosts.command("disable")
@click.argument("host")
@click.option("--reason", default=None, help="Why (default: 'host disabled').")
@for_option
@force_option
@api_command
def hosts_disable(op: Op, host: str, reason: str | None, for_: str | None, force: bool) -> None:
    """Disable every instance on HOST.

    Every service on the host is checked against its min_enabled at once: if any would be left
    with too few enabled instances, nothing is disabled (unless --force).
    """
    payload: dict[str, Any] = {"reason": reason} if reason else {}
    until = until_of(for_)
    if until is not None:
        payload["disabled_until"] = until
    body = op.api.call("POST", f"/v1/hosts/{seg(host)}/disable", body=payload, params=_force(force))
    items = body.get("items") or []
    op.show(body, lambda: f"disabled {len(items)} instance(s)\n" + render_instances(items, True))


@hosts.command("enable")
@click.argument("host")
@api_command
def hosts_enable(op: Op, host: str) -> None:
    """Enable every instance on HOST."""
    body = op.api.call("POST", f"/v1/hosts/{seg(host)}/enable", body={})
    items = body.get("items") or []
    op.show(body, lambda: f"enabled {len(items)} instance(s)\n" + render_instances(items, True))


# ------------------------------------------------------------------ config


@click.group()
def config() -> None:
    """Read and write a service's config and secrets."""


def _config_path(service: str, key: str) -> str:
    return f"/v1/services/{seg(service)}/config/{seg(key)}"


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render_entry(entry: Mapping[str, Any], revealed: bool) -> str:
    """A config entry as a block; a secret's value only when it was revealed."""
    if entry.get("secret") and not revealed:
        value = "(secret, hidden: --reveal prints it and is recorded in the audit trail)"
    else:
        value = _value_text(entry.get("value"))
    return block(
        [
            ("service", entry.get("service")),
            ("key", entry.get("key")),
            ("version", entry.get("version")),
            ("secret", bool(entry.get("secret"))),
            ("value", value),
            ("updated", ago(entry.get("updated_at"))),
            ("by", entry.get("updated_by")),
        ]
    )


def _masked_entry(op: Op, service: str, key: str, version: int | None) -> dict[str, Any]:
    """A key's entry without opening a secret: from its version history, which Atlas masks.

    (GET .../config/{key} would send the secret's value, and the audit would record a read.)
    """
    path = _config_path(service, key) + "/versions"
    for entry in op.api.pages(path, limit=None if version else 1):
        if version is not None and entry.get("version") != version:
            continue
        if entry.get("deleted"):
            which = f"version {entry.get('version')}"
            raise ApiError(
                404, "Not found", f"config key {key!r} of {service!r} is deleted ({which})"
            )
        return dict(entry)
    raise ApiError(404, "Not found", f"config key {key!r} of {service!r} has no version {version}")


@config.command("get")
@click.argument("service", type=SERVICE)
@click.argument("key")
@click.option("--version", type=click.IntRange(1), default=None, help="An older version.")
@click.option(
    "--reveal", is_flag=True, help="Print a secret's value (Atlas records the read in the audit)."
)
@api_command
def config_get(op: Op, service: str, key: str, version: int | None, reveal: bool) -> None:
    """Show a config key; a secret's value is hidden unless --reveal."""
    if reveal:
        params = {"version": version} if version else None
        entry = op.api.call("GET", _config_path(service, key), params=params)
    else:
        entry = _masked_entry(op, service, key, version)
        if entry.get("secret"):
            entry.pop("value", None)
    op.show(entry, lambda: render_entry(entry, revealed=reveal))


def _read_value(key: str, secret: bool) -> str:
    """The value from stdin (a pipe) or a prompt (hidden for a secret)."""
    stdin = sys.stdin
    if stdin.isatty():
        return str(
            click.prompt(
                f"value of {key}",
                hide_input=secret,
                confirmation_prompt=secret,
                err=True,
            )
        )
    raw = stdin.read()
    if raw.endswith("\n"):
        raw = raw[:-1]
        if raw.endswith("\r"):
            raw = raw[:-1]
    if raw == "":
        raise click.UsageError(f"no value for {key} on stdin")
    return raw


@config.command("set")
@click.argument("service", type=SERVICE)
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--secret", is_flag=True, help="Store it encrypted; the value comes from stdin or a prompt."
)
@click.option("--json-value", is_flag=True, help="Parse the value as JSON (number, object, ...).")
@if_version_option
@api_command
def config_set(
    op: Op,
    service: str,
    key: str,
    value: str | None,
    secret: bool,
    json_value: bool,
    if_version: int | None,
) -> None:
    """Write a new version of KEY (VALUE, or stdin / a prompt when VALUE is - or absent)."""
    if secret and value not in (None, "-"):
        raise click.UsageError(
            "a secret is never taken from the command line (ps and shell history show it): "
            "pipe it on stdin or type it at the prompt"
        )
    raw = _read_value(key, secret) if value in (None, "-") else str(value)
    parsed: Any = raw
    if json_value:
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise click.BadParameter("not valid JSON", param_hint="VALUE") from None
    entry = op.api.call(
        "PUT",
        _config_path(service, key),
        body={"value": parsed, "secret": secret},
        if_version=if_version,
    )
    op.show(
        entry,
        lambda: (
            f"set {service} {key} (version {entry.get('version')}"
            + (", secret)" if entry.get("secret") else ")")
        ),
    )


@config.command("unset")
@click.argument("service", type=SERVICE)
@click.argument("key")
@if_version_option
@api_command
def config_unset(op: Op, service: str, key: str, if_version: int | None) -> None:
    """Delete KEY (its history is kept)."""
    op.api.call("DELETE", _config_path(service, key), if_version=if_version)
    op.show({"unset": key, "service": service}, lambda: f"unset {service} {key}")


def _history_value(entry: Mapping[str, Any]) -> str | None:
    if entry.get("secret"):
        return "(secret)"
    return None if entry.get("deleted") else _value_text(entry.get("value"))


@config.command("history")
@click.argument("service", type=SERVICE)
@click.argument("key")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many versions.")
@api_command
def config_history(op: Op, service: str, key: str, limit: int | None) -> None:
    """Every version of KEY, newest first (secret values are never shown)."""
    items = list(op.api.pages(_config_path(service, key) + "/versions", limit=limit))

    def human() -> str:
        rows = [
            [
                e.get("version"),
                e.get("secret"),
                e.get("deleted"),
                _history_value(e),
                e.get("updated_at"),
                e.get("updated_by"),
            ]
            for e in items
        ]
        return table(["version", "secret", "deleted", "value", "updated", "by"], rows)

    op.show(items, human)


# ------------------------------------------------------------------ tokens and audit


@click.group()
def tokens() -> None:
    """Issue, list and revoke service tokens (admin)."""


@tokens.command("issue")
@click.argument("service", type=SERVICE)
@click.option("--description", default="", help="What the token is for.")
@api_command
def tokens_issue(op: Op, service: str, description: str) -> None:
    """Issue a token for SERVICE; the token is printed once, on stdout alone."""
    body = op.api.call(
        "POST", f"/v1/services/{seg(service)}/tokens", body={"description": description}
    )
    if op.as_json:
        emit_json(body)
        return
    click.echo(f"issued {body.get('id')} for {service}; it is shown this once", err=True)
    click.echo(body.get("token"))


@tokens.command("ls")
@click.argument("service", type=SERVICE)
@api_command
def tokens_ls(op: Op, service: str) -> None:
    """List SERVICE's tokens (ids and metadata; never the tokens)."""
    items = list(op.api.pages(f"/v1/services/{seg(service)}/tokens"))

    def human() -> str:
        if not items:
            return "(no tokens)"
        rows = [
            [t.get("id"), t.get("description"), t.get("created_at"), t.get("created_by")]
            for t in items
        ]
        return table(["id", "description", "created", "by"], rows)

    op.show(items, human)


@tokens.command("revoke")
@click.argument("service", type=SERVICE)
@click.argument("token_id")
@api_command
def tokens_revoke(op: Op, service: str, token_id: str) -> None:
    """Revoke one of SERVICE's tokens by its id (tok_...)."""
    op.api.call("DELETE", f"/v1/services/{seg(service)}/tokens/{seg(token_id)}")
    op.show({"revoked": token_id, "service": service}, lambda: f"revoked {token_id}")


@click.command()
@click.option("--service", type=SERVICE, default=None, help="Only this service (newest first).")
@click.option(
    "--limit", type=click.IntRange(1), default=50, show_default=True, help="At most this many."
)
@api_command
def audit(op: Op, service: str | None, limit: int) -> None:
    """The audit trail: every mutation and every secret read (admin)."""
    params = {"service": service} if service else None
    items = list(op.api.pages("/v1/audit", params=params, limit=limit))

    def human() -> str:
        if not items:
            return "(no audit records)"
        rows = [
            [
                r.get("at"),
                r.get("service"),
                r.get("principal"),
                r.get("token_id"),
                r.get("action"),
                r.get("target"),
                r.get("status"),
                describe_changes(r.get("changes")),
            ]
            for r in items
        ]
        headers = ["at", "service", "who", "token", "action", "target", "status", "changes"]
        return table(headers, rows, wide=("changes",))

    op.show(items, human)


# ------------------------------------------------------------------ the fleet


def _secs(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}s"


@click.command()
@api_command
def sidecars(op: Op) -> None:
    """Every live sidecar: what it has applied, whether it is stale, its last error."""
    items = list(op.api.pages("/v1/sidecars"))

    def human() -> str:
        if not items:
            return "(no live sidecars)"
        rows = []
        for s in items:
            if not s.get("valid"):
                rows.append([s.get("host_id"), "UNREADABLE", "-", "-", "-", "-", s.get("problem")])
                continue
            lagging = ", ".join(sorted(s.get("lagging") or {})) or "-"
            state = "stale" if s.get("stale") else "ok"
            zk = s.get("zookeeper") or {}
            rows.append([
                s.get("host_id"), state, s.get("applied_index"), lagging,
                f"{s.get('reloads')}/{s.get('runtime_updates')}",
                _secs(zk.get("session_age_s")), s.get("last_error") or "-",
            ])  # fmt: skip
        headers = ["host", "state", "applied", "lagging", "reloads/runtime", "session", "error"]
        return table(headers, rows)

    op.show(items, human)


class NotConverged(click.ClickException):
    """`convergence --wait` ran out of time: exit 3, the last state on stderr."""

    exit_code = 3


@click.command()
@click.argument("service", type=SERVICE)
@click.option(
    "--wait", "wait_s", type=click.FloatRange(0, 86400), default=None, metavar="SECONDS",
    help="Poll until converged (exit 3 if not within SECONDS).",
)  # fmt: skip
@click.option(
    "--min-index", type=click.IntRange(0), default=None,
    help="With --wait: also until the service's index reaches this (a write's X-Atlas-Index).",
)  # fmt: skip
@api_command
def convergence(op: Op, service: str, wait_s: float | None, min_index: int | None) -> None:
    """Which sidecars have applied SERVICE's latest change, which lag and for how long."""
    path = f"/v1/services/{seg(service)}/convergence"
    body = op.api.call("GET", path)
    if wait_s is not None:
        deadline = time.monotonic() + wait_s
        while not (body["converged"] and (body["index"] or 0) >= (min_index or 0)):
            if time.monotonic() >= deadline:
                op.show(body, functools.partial(render_convergence, body))
                raise NotConverged(
                    f"atlas: {service} not converged within {wait_s:g}s: {body['state']}, "
                    f"{body['summary']['lagging']} lagging of {body['summary']['total']}"
                )
            time.sleep(0.1)
            body = op.api.call("GET", path)
    op.show(body, lambda: render_convergence(body))


def render_convergence(body: Mapping[str, Any]) -> str:
    """The convergence of a service as a summary line and a table of sidecars."""
    summary = body["summary"]
    head = (
        f"{body['service']}: {body['state']} (index {body['index']}): "
        f"{summary['converged']}/{summary['total']} converged, {summary['lagging']} lagging"
        + (f", {summary['unreadable']} unreadable" if summary["unreadable"] else "")
    )
    if not body["sidecars"]:
        return head
    rows = [
        [
            s["host_id"], s["status"], s["applied_index"], _secs(s["behind_s"]),
            (s.get("reported") or {}).get("reason") or s.get("problem") or "-",
        ]
        for s in body["sidecars"]
    ]  # fmt: skip
    return head + "\n" + table(["host", "status", "applied", "behind", "reason"], rows)


#: The top-level commands, for any click group to mount (`group.add_command(c)`).
COMMANDS: list[click.Command] = [
    services,
    instances,
    attach,
    detach,
    enable,
    disable,
    drain,
    hosts,
    config,
    tokens,
    audit,
    sidecars,
    convergence,
]
COMMAND_NAMES = frozenset(c.name for c in COMMANDS if c.name)


@click.group(name="atlas", context_settings={"help_option_names": ["-h", "--help"]})
def admin() -> None:
    """Atlas admin commands over the HTTP API (ATLAS_URL, ATLAS_TOKEN)."""


for _command in COMMANDS:
    admin.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the admin commands as `atlas ...` (exit 0 ok, 1 API error, 2 usage)."""
    try:
        admin.main(args=argv, prog_name="atlas", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
