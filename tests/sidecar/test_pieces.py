"""Pure and small pieces of the fleet work: the report schema, map-mode render, runtime plans,
the CLI socket client, metrics, the command line, and the loop's adoption guard (fakes)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.contract import (
    INSTANCE_DRAIN,
    INSTANCE_SLOW_START,
    LaggingService,
    SidecarReport,
    change_index,
    parse_drain,
    parse_sidecar_report,
    parse_slow_start,
)
from atlas.sidecar import cli
from atlas.sidecar.core import InlineExecutor, LoopSettings, Sidecar
from atlas.sidecar.haproxy import (
    HAProxy,
    ServerState,
    filter_state_lines,
    parse_servers_state,
    socket_command,
    split_answers,
)
from atlas.sidecar.model import HealthCheck, Instance, Service, Snapshot, parse_instance
from atlas.sidecar.plan import server_ops
from atlas.sidecar.render import RenderOptions, render, render_check_map, render_map
from atlas.sidecar.status import render_metrics
from tests.sidecar.test_units import GOLDEN, Clock, FakeProxy, FakeSource, snap, svc

# -- contract ---------------------------------------------------------------------------------


def test_report_round_trips_and_parses_leniently() -> None:
    report = SidecarReport(
        host_id="h:4000",
        realm="prod",
        applied_index=42,
        lagging={
            "b": LaggingService(7, "holding last-known-good instances", "2026-01-01T00:00:00Z")
        },
        reloads=3,
        failures={"check": 2},
        haproxy_version="2.6.12",
    )
    back = parse_sidecar_report(report.to_json(), "h:4000")
    assert back == report
    assert back is not None and back.has_applied("a", 42) and not back.has_applied("a", 43)
    assert back.applied_index_of("b") == 7 and not back.has_applied("b", 8)
    odd = json.dumps({"applied_index": 5, "lagging": {"Bad Name": {}, "c": "x"}, "reloads": -1})
    parsed = parse_sidecar_report(odd.encode(), "x")
    assert parsed is not None and parsed.lagging == {} and parsed.reloads == 0
    assert parse_sidecar_report(b"\xff", "x") is None
    assert parse_sidecar_report(b'{"no": "index"}', "x") is None


def test_instance_extras_are_parsed_leniently() -> None:
    assert parse_drain(True) and not parse_drain("true") and not parse_drain(1)
    assert parse_slow_start(30) == 30 and parse_slow_start(True) == 0
    assert parse_slow_start(-1) == 0 and parse_slow_start(10**6) == 0 and parse_slow_start("5") == 0
    data = json.dumps({"port": 80, INSTANCE_DRAIN: True, INSTANCE_SLOW_START: 20}).encode()
    inst, warning = parse_instance("10.0.0.1:80", data)
    assert warning is None and inst is not None and inst.drain and inst.slow_start_s == 20


def test_change_index_takes_the_latest_of_data_and_children() -> None:
    class Stat:
        def __init__(self, mzxid: int, pzxid: int = 0) -> None:
            self.mzxid, self.pzxid = mzxid, pzxid

    assert change_index([Stat(5, 9), Stat(7)]) == 9
    assert change_index([]) == 0


# -- render (map mode) ------------------------------------------------------------------------


def map_options(tmp: str = "/run/atlas") -> RenderOptions:
    return RenderOptions(
        port=4000,
        admin_socket=f"{tmp}/admin.sock",
        realm="local",
        map_file=f"{tmp}/services.map",
        check_map_file=f"{tmp}/checks.map",
        server_state_file=f"{tmp}/server-state",
        spares=2,
    )


def test_map_mode_render_matches_its_golden_file() -> None:
    snapshot = snap(
        Service("users", HealthCheck("/healthz", 1000, 500)).with_instances(
            (Instance("10.0.0.1", 8080), Instance("10.0.0.2", 8080, slow_start_s=30))
        ),
        Service("fresh", HealthCheck("/ping")).with_instances((Instance("10.0.0.5", 80),)),
    )
    placement = {"fresh": "atlas_spare_0001"}
    text = render(snapshot, map_options(), placement)
    path = GOLDEN / "map_mode.cfg"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert render_map(snapshot, placement) == "fresh atlas_spare_0001\nusers users\n"
    assert render_check_map(snapshot, placement) == "atlas_spare_0001 /ping\n"


def test_map_mode_config_is_valid_haproxy(tmp_path: Path) -> None:
    o = map_options(str(tmp_path))
    snapshot = snap(svc("a", 1, 2, hc=HealthCheck("/h")))
    (tmp_path / "services.map").write_text(render_map(snapshot))
    (tmp_path / "checks.map").write_text("")
    cfg = tmp_path / "h.cfg"
    cfg.write_text(render(snapshot, o))
    ok, out = HAProxy(cfg, tmp_path / "m.sock", tmp_path / "admin.sock").check(cfg)
    assert ok, out


def test_spares_need_the_maps() -> None:
    with pytest.raises(ValueError):
        RenderOptions(spares=3)


# -- plans ----------------------------------------------------------------------------------------


def test_server_ops_drain_address_and_slow_start() -> None:
    old = Service("a").with_instances(
        (Instance("10.0.0.1", 1), Instance("10.0.0.1", 2, enabled=False), Instance("10.0.0.1", 3))
    )
    new = Service("a").with_instances(
        (
            Instance("10.0.0.1", 1, drain=True),
            Instance("10.0.0.1", 2, enabled=False, slow_start_s=60),  # out of traffic: replaced
            Instance("10.0.0.1", 3, address="10.9.9.9", slow_start_s=5),  # in traffic: waits
        )
    )
    p = server_ops("a", old, new)
    assert p is not None and not p.complete
    cmds = [c for op in p.ops for c in op.commands]
    assert "set server a/10.0.0.1:1 state drain" in cmds
    assert "set server a/10.0.0.1:3 addr 10.9.9.9 port 3" in cmds
    i = cmds.index("del server a/10.0.0.1:2")
    assert cmds[i + 1].startswith("add server a/10.0.0.1:2 10.0.0.1:2 id ")
    assert cmds[i + 1].endswith("slowstart 60s")
    assert p.after.instance_map()["10.0.0.1:3"].slow_start_s == 0  # what it runs until then
    undrain = server_ops("a", new, old)
    assert undrain is not None
    assert "set server a/10.0.0.1:1 state ready" in [c for op in undrain.ops for c in op.commands]


# -- the CLI socket client --------------------------------------------------------------------


def test_socket_command_retries_a_socket_missing_or_refusing_around_a_reload(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"
    seen: list[bytes] = []

    def serve() -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))  # missing until now, then bound but not listening: refused
        threading.Event().wait(0.2)
        server.listen(8)
        conn, _ = server.accept()
        with conn, server:
            data = b""
            while chunk := conn.recv(100):
                data += chunk
            seen.append(data)
            conn.sendall(b"answer\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert socket_command(path, "show proc", timeout=2, retry_s=10) == "answer\n"
    t.join(5)
    assert seen == [b"show proc\n"]
    with pytest.raises(FileNotFoundError):
        socket_command(tmp_path / "missing.sock", "x", retry_s=0)


def test_a_reset_after_the_command_went_out_ends_the_answer(tmp_path: Path) -> None:
    """`reload` makes the master re-execute itself and drop the connection: delivered."""
    path = tmp_path / "m.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert socket_command(path, "reload", timeout=2) == ""
    t.join(5)
    server.close()


def test_prompt_mode_answers_are_split_per_command() -> None:
    text = "\n> New server registered.\n\n> \n> Server deleted.\n> No such server.\n\n> "
    assert split_answers(text, 4) == [
        "New server registered.",
        "",
        "Server deleted.",
        "No such server.",
    ]
    assert split_answers("\n> ok\n> ", 3)[1:] == ["<no answer>", "<no answer>"]


def test_state_lines_are_filtered_to_the_servers_kept() -> None:
    dump = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...\n"
        "3 web 11 a 127.0.0.1 0 0 100 100 1 15 3 1 6 0 0 1 - 18001 - 0 0 - - 0\n"
        "3 web 12 b 127.0.0.1 2 8 100 100 1 15 3 4 6 0 0 1 - 18002 - 0 0 - - 0\n"
    )
    states = parse_servers_state(dump)
    assert [(s.server, s.op_state, s.drain, s.maint, s.port) for s in states] == [
        ("a", 0, False, False, 18001),
        ("b", 2, True, False, 18002),
    ]
    kept = filter_state_lines(dump, {("web", "b")})
    assert "web 12 b" in kept and "web 11 a" not in kept and kept.startswith("1\n#")


# -- metrics and the command line -------------------------------------------------------------


def test_metrics_name_every_failure_kind() -> None:
    text = render_metrics(
        {"reloads": 2, "failures": {"check": 3}, "failing": {"check": {}}, "stale": True,
         "pool": {"free": 3, "used": 1, "refills": 1}}
    )  # fmt: skip
    assert 'atlas_sidecar_failures_total{kind="check"} 3' in text
    assert 'atlas_sidecar_failures_total{kind="config_write"} 0' in text
    assert 'atlas_sidecar_failing{kind="check"} 1' in text
    assert "atlas_sidecar_reloads_total 2" in text and "atlas_sidecar_stale 1" in text
    assert 'atlas_sidecar_spare_backends{state="free"} 3' in text
    assert all(
        line.startswith(("# HELP", "# TYPE", "atlas_sidecar_")) for line in text.splitlines()
    )


def test_every_option_says_what_it_does() -> None:
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for param in cli.main.params:
        assert getattr(param, "help", None), param.name
    for flag in ("--zk", "--realm", "--port", "--state-dir", "--spares", "--stop", "--host-id"):
        assert flag in result.output


def test_zookeeper_hosts_from_the_api_variable_or_the_deprecated_alias(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("ATLAS_ZK_HOSTS", raising=False)
    monkeypatch.delenv("ATLAS_ZK", raising=False)
    assert cli._zk_hosts(None) == "127.0.0.1:2181"
    assert cli._zk_hosts("zk1:2181") == "zk1:2181"
    monkeypatch.setenv("ATLAS_ZK", "old:2181")
    with caplog.at_level(logging.WARNING, "atlas.sidecar"):
        assert cli._zk_hosts(None) == "old:2181"
    assert "ATLAS_ZK is deprecated" in caplog.text
    seen: dict[str, object] = {}
    monkeypatch.setattr(cli, "run", lambda state, args: seen.update(args) or 0)
    monkeypatch.setenv("ATLAS_ZK_HOSTS", "new:2181")
    monkeypatch.setenv("ATLAS_SIDECAR_SPARES", "3")
    result = CliRunner().invoke(cli.main, ["--state-dir", "/tmp/asc-cli-test"])
    assert result.exit_code == 0, result.output
    assert seen["zk"] == "new:2181" and seen["spares"] == 3


# -- the loop: adoption ----------------------------------------------------------------------------


class AdoptingProxy(FakeProxy):
    """An HAProxy left running by an earlier sidecar, which the record describes."""

    def __init__(self, path: Path, routes: dict[str, str], states: list[ServerState]) -> None:
        super().__init__(path)
        self.routes, self.states = routes, states

    def adopt(self) -> bool:
        return True

    def show_map(self, path: str) -> dict[str, str]:
        return self.routes

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        return self.states


def test_an_adopted_haproxy_is_read_back_and_kept_through_a_wiped_tree(tmp_path: Path) -> None:
    applied = tmp_path / "applied.json"
    applied.write_text(
        json.dumps(
            {"master_pid": 4242, "master_reloads": 0, "spares_free": ["atlas_spare_0001"],
             "spares_total": 2, "backends": {"a": None}, "placement": {},
             "services": {"a": {"health_check": None, "slow_start": {}, "keys": {}}}}
        )
    )  # fmt: skip
    line = "3 a 1 10.0.0.1:1 10.0.0.1 2 0 100 100 1 1 0 0 0 0 0 0 - 1 - 0 0 - - 0"
    states = parse_servers_state(line)
    proxy = AdoptingProxy(tmp_path / "haproxy.cfg", {"a": "a"}, states)
    source = FakeSource()  # a wiped tree: no service at all
    o = map_options(str(tmp_path))
    clock = Clock()
    sc = Sidecar(
        source, proxy, o,
        LoopSettings(applied_file=applied, empty_grace_s=30, file_sync_delay_s=0.0),
        clock=clock, executor=InlineExecutor(),
    )  # fmt: skip
    (tmp_path / "services.map").write_text("a a\n")
    (tmp_path / "checks.map").write_text("")
    sc.boot()
    assert sc.status.adopted and proxy.reloads == 0
    assert sc.running == snap(Service("a").with_instances((Instance("10.0.0.1", 1),)))
    assert "a" in sc._held  # what it ran is the last-known-good
    assert proxy.commands == []  # nothing removed
    clock.t += 31  # the grace is over: the wipe is real
    sc.step()
    assert "del map" in " ".join(proxy.commands) and sc.running == Snapshot()
