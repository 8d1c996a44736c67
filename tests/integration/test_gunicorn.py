"""Atlas under real gunicorn (atlas.gunicorn_conf): the process model, the body limit, the logs.

Guarantees under test:
- The app factory only configures: with `--preload` the master holds no ZooKeeper
  connection; each worker opens its own after the fork and mirrors every write; a graceful
  stop closes every session at once (election nodes vanish well before the session timeout).
- The body limit holds on the bytes read, whatever the framing: a chunked body over
  ATLAS_MAX_BODY_BYTES is a 413 problem and writes nothing; one of exactly the limit passes.
- One log format: Atlas's own lines ("now leads", "reconciled"), gunicorn's error and access
  lines and kazoo's all carry time, level and logger; while ZooKeeper is down kazoo's
  reconnect lines collapse to one of each kind per connection state change.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
from datetime import datetime
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from atlas.stack import AtlasServer, MotoServer, ZooKeeperServer
from tests.helpers import ADMIN_TOKEN, ApiClient, wait_until
from tests.integration.conftest import atlas_env, migrate

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


# ------------------------------------------------------------------------------ process model


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def zk_connections(pid: int, zk_port: int) -> int:
    """Established TCP connections from process `pid` to 127.0.0.1:zk_port."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if fields[9] in inodes and remote_port == zk_port and fields[3] == "01":
            count += 1
    return count


def test_preloaded_gunicorn_connects_in_each_worker_and_closes_on_stop(
    tmp_path: Path, moto_server: MotoServer, zk_server: ZooKeeperServer, realm: str
) -> None:
    # A long session timeout: election nodes that vanish sooner were closed, not expired.
    env = atlas_env(moto_server, realm, ATLAS_ZK_HOSTS=zk_server.address, ATLAS_ZK_TIMEOUT_S="60")
    migrate(env)
    atlas = AtlasServer(tmp_path / "atlas", env, workers=2, preload=True)
    atlas.start()
    zk = KazooClient(zk_server.address)
    zk.start(timeout=15)
    election = f"/atlas/{realm}/reconciler"
    try:
        master = atlas.process.pid
        assert master is not None
        workers = wait_until(
            lambda: len(children(master)) == 2 and children(master), what="2 workers"
        )
        wait_until(
            lambda: [zk_connections(w, zk_server.port) for w in workers] == [1, 1],
            what="one ZooKeeper session per worker",
        )
        assert zk_connections(master, zk_server.port) == 0
        # Every worker mirrors: each write lands in ZooKeeper whichever worker served it.
        api = ApiClient(atlas.url)
        names = [f"svc{i}" for i in range(12)]
        for name in names:
            assert api.post("/v1/services", json={"name": name}).status_code == 201
        for name in names:
            wait_until(lambda n=name: zk.exists(f"/atlas/{realm}/services/{n}"), what=name)
        wait_until(lambda: len(zk.get_children(election)) == 2, what="both workers contend")
        atlas.stop()
        wait_until(
            lambda: zk.get_children(election) == [],
            timeout=40,
            what="sessions closed by the stopping workers (not expired 60 s later)",
        )
        log = atlas.log_path.read_text()
        for w in workers:
            assert f"background work stopped in process {w}" in log
    finally:
        atlas.stop()
        zk.stop()
        zk.close()


# ------------------------------------------------------------------------------ body limit


def post_chunked(
    port: int, path: str, body: bytes, method: str = "POST", chunked: bool = True
) -> tuple[int, str, bytes]:
    """Send `body` over a raw socket, in 64 KiB chunks (or with a Content-Length); read the answer.

    The body is sent from a thread while the answer is read: gunicorn answers a refused body
    at once and closes the connection without reading the rest.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n"
    )

    def send() -> None:
        try:
            sock.sendall(head.encode())
            for i in range(0, len(body), 64 * 1024):
                part = body[i : i + 64 * 1024]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer, and close, before the whole body is sent

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        sender.join(timeout=60)
        sock.close()


def json_padded(doc: dict[str, object], size: int) -> bytes:
    """A valid JSON document followed by spaces up to `size` bytes."""
    raw = json.dumps(doc).encode()
    return raw + b" " * (size - len(raw))


@pytest.mark.parametrize("size", [2 * MiB, 10_000_000])
def test_a_chunked_body_over_the_limit_is_413_and_writes_nothing(
    shared_atlas: AtlasServer, api: ApiClient, size: int
) -> None:
    name = f"chunky{size}"
    status, ctype, body = post_chunked(
        shared_atlas.port, "/v1/services", json_padded({"name": name}, size)
    )
    assert (status, ctype) == (413, "application/problem+json"), body[:300]
    assert json.loads(body)["status"] == 413
    assert api.get(f"/v1/services/{name}").status_code == 404
    # The same through another resource that reads a body.
    assert api.post("/v1/services", json={"name": f"{name}h"}).status_code == 201
    status, _, _ = post_chunked(
        shared_atlas.port,
        f"/v1/services/{name}h/instances/10.9.0.1:80",
        json_padded({"zone": "a"}, size),
        method="PUT",
    )
    assert status == 413
    assert api.get(f"/v1/services/{name}h/instances/10.9.0.1:80").status_code == 404


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(
    shared_atlas: AtlasServer, api: ApiClient
) -> None:
    status, _, body = post_chunked(
        shared_atlas.port, "/v1/services", json_padded({"name": "chunky-exact"}, MiB)
    )
    assert status == 201, body[:300]
    assert api.get("/v1/services/chunky-exact").status_code == 200
    # A declared length over the limit is refused before anything is read.
    status, ctype, _ = post_chunked(
        shared_atlas.port, "/v1/services", json_padded({"name": "sized"}, 2 * MiB), chunked=False
    )
    assert (status, ctype) == (413, "application/problem+json")
    assert api.get("/v1/services/sized").status_code == 404


# ------------------------------------------------------------------------------------ logging

LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"([\w.-]+): (.*)$"
)
KAZOO_STATE = (
    "Zookeeper connection established",
    "Zookeeper session closed",
    "Zookeeper connection lost",
    "Transition to CONNECTING",
    "Session has expired",
    "Failed connecting to Zookeeper",
)
KAZOO_REPEATS = (
    "Connection dropped:",
    "Connection time-out:",
    "Connecting to ",
    "Closing connection",
)


def records(text: str) -> list[tuple[datetime, str, str, str]]:
    """Parse a log into (time, level, logger, message); every line must be a record (or traceback)."""
    out = []
    in_traceback = False
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            in_traceback = False
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            out.append((stamp, m.group(2), m.group(3), m.group(4)))
        elif line.startswith("Traceback (most recent call last):") or in_traceback:
            in_traceback = True
        else:
            raise AssertionError(f"a log line without time, level and logger: {line!r}")
    return out


def test_one_log_format_and_kazoo_reconnect_noise_collapses(
    tmp_path: Path, moto_server: MotoServer, realm: str
) -> None:
    zk = ZooKeeperServer(tmp_path / "zk")
    zk.start()
    env = atlas_env(
        moto_server,
        realm,
        ATLAS_ZK_HOSTS=zk.address,
        ATLAS_LOG_LEVEL="DEBUG",
        ATLAS_ZK_TIMEOUT_S="2",
        ATLAS_RECONCILE_INTERVAL_S="60",
    )
    migrate(env)
    atlas = AtlasServer(tmp_path / "atlas", env, workers=1)
    atlas.start()
    api = ApiClient(atlas.url)

    def mirror() -> dict[str, object]:
        return dict(api.get("/v1/info").json()["mirror"])

    try:
        assert api.post("/v1/services", json={"name": "logged"}).status_code == 201
        first = wait_until(lambda: (m := mirror())["leader"] and m["reconciles"] and m, what="lead")
        zk.stop()
        wait_until(lambda: not mirror()["connected"], what="disconnected")
        # Long enough for kazoo to retry many times, and for the mirror to replace its client.
        wait_until(lambda: mirror()["client_recreated"] >= 2, timeout=60, what="client replaced")
        zk.start()
        wait_until(
            lambda: (m := mirror())["connected"] and m["reconciles"] > first["reconciles"],
            timeout=60,
            what="reconciled after ZooKeeper came back",
        )
    finally:
        atlas.stop()
        zk.stop()

    log = records(atlas.log_path.read_text())
    messages = [(level, logger, msg) for _, level, logger, msg in log]
    assert any(lg == "atlas.mirror.reconciler" and "now leads" in m for _, lg, m in messages)
    reconciled = [m for lvl, lg, m in messages if lg == "atlas.mirror.zk" and "reconciled" in m]
    assert len(reconciled) >= 2  # at election, and again after the reconnect
    assert any(lg == "gunicorn.error" and "Booting worker" in m for _, lg, m in messages)
    assert any(lg == "gunicorn.access" and "GET /v1/info" in m for _, lg, m in messages)

    # kazoo: between two connection state changes, each kind of reconnect line at most once
    # (or again after 60 s), and what was held back is counted on the next line shown.
    kazoo = [(t, m) for t, _, lg, m in log if lg.startswith("kazoo")]
    last_shown: dict[str, datetime] = {}
    held_back = 0
    for stamp, msg in kazoo:
        if m := re.search(r"\((\d+) repeated kazoo lines held back\)$", msg):
            held_back += int(m.group(1))
        if msg.startswith(KAZOO_STATE):
            last_shown.clear()
            continue
        kind = next((k for k in KAZOO_REPEATS if msg.startswith(k)), None)
        if kind is None:
            continue
        if kind in last_shown:
            assert (stamp - last_shown[kind]).total_seconds() >= 60, (kind, stamp)
        last_shown[kind] = stamp
    dropped = sum(1 for _, m in kazoo if m.startswith("Connection dropped"))
    assert held_back > dropped, (held_back, dropped)
    print(
        f"\nlog: {len(log)} lines, {len(kazoo)} from kazoo ({dropped} 'Connection dropped' shown, "
        f"{held_back} reconnect lines held back); {len(reconciled)} 'reconciled'"
    )
