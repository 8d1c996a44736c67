"""Shared set-up for the benchmarks: real servers on free loopback ports, stopped at exit."""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from atlas.config import Settings
from atlas.migrate import Migrator
from atlas.stack import AtlasServer, MotoServer, ZooKeeperServer

ADMIN = "bench-admin-token-0123456789abcdef"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

WORKDIR = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
_stop: list[object] = []


def _cleanup() -> None:
    for server in reversed(_stop):
        server.stop()  # type: ignore[attr-defined]
    shutil.rmtree(WORKDIR, ignore_errors=True)


atexit.register(_cleanup)


def start_moto(mode: str = "serialized") -> MotoServer:
    """A moto server (DynamoDB + KMS) for this run; serialized (linearizable) unless told."""
    m = MotoServer(WORKDIR / f"moto-{mode}-{len(_stop)}", mode=mode)
    m.start()
    _stop.append(m)
    return m


def start_zk() -> ZooKeeperServer:
    """A ZooKeeper server for this run."""
    z = ZooKeeperServer(WORKDIR / "zk")
    z.start()
    _stop.append(z)
    return z


def start_atlas(
    moto: MotoServer, realm: str, workers: int = 2, threads: int = 4, **env: str
) -> AtlasServer:
    """Migrate a realm and start Atlas under gunicorn."""
    full = {
        "ATLAS_REALM": realm,
        "ATLAS_DYNAMODB_ENDPOINT": moto.url,
        "ATLAS_ADMIN_TOKENS": ADMIN,
        "ATLAS_LOG_LEVEL": "WARNING",
        **env,
    }
    Migrator(Settings.from_env(full)).run()
    a = AtlasServer(WORKDIR / f"atlas-{realm}", full, workers=workers, threads=threads)
    a.start()
    _stop.append(a)
    return a


def pct(samples: list[float], p: float) -> float:
    """The p-th percentile (0-100) of samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(samples: list[float]) -> str:
    """p50/p99/mean in milliseconds."""
    ms = [s * 1000 for s in samples]
    return f"p50 {pct(ms, 50):7.2f} ms  p99 {pct(ms, 99):7.2f} ms  mean {statistics.mean(ms):7.2f} ms  n={len(ms)}"


def wrk(
    url: str,
    seconds: int = 8,
    connections: int = 32,
    threads: int = 2,
    headers: dict[str, str] | None = None,
) -> float:
    """Requests per second measured by wrk (Debian's package)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required: apt-get install wrk (make deps installs it)")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(out)
