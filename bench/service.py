"""Smart Service: `atlas new-service` wall time, boot time, and /hello throughput under gunicorn
against a plain Flask hello-world under the same gunicorn.

1. `atlas new-service` (skeleton, git, venv with everything installed) timed three ways: the
   Atlas wheel not yet built (a fresh wheel cache) with pip, then cached with pip, then cached
   with uv (the default when uv is installed). Package caches (pip's, uv's) are whatever this
   machine has; the first run on a fresh machine downloads from PyPI.
2. Boot: from exec of `atlas-service 'svc.app:create_app()'` to the first 200 on /hello, with the
   config loaded from a real Atlas (moto + gunicorn) with a service token.
3. Throughput: wrk on /hello of the generated service (flask-restful resource, request ids, JSON
   access log to a file, problem+json handlers, health routes) and on /hello of a plain Flask app,
   both in the generated venv under gunicorn with the same workers (2 gthread x 4 threads),
   alternated in rounds; prints the ratio (goal >= 0.8).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from atlas.stack import ManagedProcess, free_port
from bench._stack import ADMIN, WORKDIR, _stop, start_atlas, start_moto, wrk

ATLAS = str(Path(sys.executable).parent / "atlas")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "4"))
TICK = os.sysconf("SC_CLK_TCK")

PLAIN = """from flask import Flask

app = Flask(__name__)


@app.get("/hello")
def hello():
    return {"service": "plain", "greeting": "hello", "realm": "local"}
"""


def new_service(name: str, installer: str, wheel_cache: Path) -> float:
    """Seconds for one `atlas new-service NAME` (no registration: no Atlas is needed for it)."""
    env = {**os.environ, "ATLAS_WHEEL_CACHE": str(wheel_cache)}
    t0 = time.perf_counter()
    subprocess.run([ATLAS, "new-service", name, "--no-register", "--installer", installer],
                   cwd=WORKDIR, env=env, check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) of a process and all its descendants, from /proc."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo += [p for p, (ppid, _) in stats.items() if ppid == pid]
    return total


def measure(url: str, proc: ManagedProcess) -> tuple[float, float]:
    """(requests/s by wrk, server CPU microseconds per request) for one wrk run."""
    assert proc.pid is not None
    before = cpu_seconds(proc.pid)
    t0 = time.perf_counter()
    rps = wrk(url, seconds=SECONDS)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(proc.pid) - before
    return rps, cpu / (rps * elapsed) * 1e6


def wait_200(url: str, proc: ManagedProcess, timeout: float = 60) -> None:
    """Poll until url answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.01)
    raise TimeoutError(url)


def main() -> None:
    """Run the three measurements and print them."""
    fresh_cache = Path(tempfile.mkdtemp(prefix="atlas-wheels-"))
    _stop.append(type("Rm", (), {"stop": lambda self: shutil.rmtree(fresh_cache, True)})())
    cold = new_service("svc-cold", "pip", fresh_cache)
    warm_pip = new_service("svc-pip", "pip", fresh_cache)
    warm_uv = new_service("svc", "uv" if shutil.which("uv") or _has_uv() else "pip", fresh_cache)
    print(f"atlas new-service, wheel built, pip      {cold:6.1f} s")
    print(f"atlas new-service, wheel cached, pip     {warm_pip:6.1f} s")
    print(f"atlas new-service, wheel cached, uv      {warm_uv:6.1f} s   (goal < 60 s)")

    project = WORKDIR / "svc"
    venv_bin = project / ".venv" / "bin"
    moto = start_moto()
    atlas = start_atlas(moto, "svcbench")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    requests.post(f"{atlas.url}/v1/services", json={"name": "svc"}, headers=admin, timeout=10)
    requests.put(f"{atlas.url}/v1/services/svc/config/GREETING", json={"value": "hi"},
                 headers=admin, timeout=10).raise_for_status()  # fmt: skip
    token = requests.post(f"{atlas.url}/v1/services/svc/tokens", headers=admin,
                          timeout=10).json()["token"]  # fmt: skip
    env = {**os.environ, "ATLAS_URL": atlas.url, "ATLAS_TOKEN": token, "ATLAS_REGISTER": "false"}
    gunicorn_opts = ["--workers", "2", "--worker-class", "gthread", "--threads", "4"]

    def service(port: int, n: int) -> ManagedProcess:
        return ManagedProcess(
            f"svc-{n}",
            [str(venv_bin / "atlas-service"), "svc.app:create_app()", "--bind",
             f"127.0.0.1:{port}", *gunicorn_opts],
            WORKDIR / f"svc-{n}.log", env=env, cwd=project,
        )  # fmt: skip

    boots = []
    for n in range(3):
        port = free_port()
        proc = service(port, n)
        t0 = time.perf_counter()
        proc.start()
        wait_200(f"http://127.0.0.1:{port}/hello", proc)
        boots.append(time.perf_counter() - t0)
        proc.stop()
    print(f"boot to first /hello 200 (config from Atlas): median {statistics.median(boots):.2f} s "
          f"of {', '.join(f'{b:.2f}' for b in boots)}")  # fmt: skip

    (WORKDIR / "plain_hello.py").write_text(PLAIN)
    sp, pp = free_port(), free_port()
    svc = service(sp, 9)
    plain = ManagedProcess(
        "plain",
        [str(venv_bin / "gunicorn"), "--bind", f"127.0.0.1:{pp}", *gunicorn_opts, "plain_hello:app"],
        WORKDIR / "plain.log", cwd=WORKDIR,
    )  # fmt: skip
    for p in (svc, plain):
        _stop.append(p)
        p.start()
    wait_200(f"http://127.0.0.1:{sp}/hello", svc)
    wait_200(f"http://127.0.0.1:{pp}/hello", plain)
    wrk(f"http://127.0.0.1:{sp}/hello", seconds=2)
    wrk(f"http://127.0.0.1:{pp}/hello", seconds=2)
    ratios, cpu_ratios = [], []
    for r in range(ROUNDS):
        s, s_cpu = measure(f"http://127.0.0.1:{sp}/hello", svc)
        p, p_cpu = measure(f"http://127.0.0.1:{pp}/hello", plain)
        ratios.append(s / p)
        cpu_ratios.append(p_cpu / s_cpu)
        print(f"round {r + 1}: smart service {s:6.0f} req/s {s_cpu:5.0f} us CPU/req   "
              f"plain Flask {p:6.0f} req/s {p_cpu:5.0f} us CPU/req   ratio {s / p:.2f}")  # fmt: skip
    print(f"/hello throughput ratio (smart service / plain Flask, same gunicorn): "
          f"median {statistics.median(ratios):.2f} (goal >= 0.8)")  # fmt: skip
    print(f"server CPU per request ratio (plain / smart; what the throughput ratio tends to on "
          f"a machine nobody else uses): median {statistics.median(cpu_ratios):.2f}")  # fmt: skip


def _has_uv() -> bool:
    from atlas.service.scaffold import uv_binary

    return uv_binary() is not None


if __name__ == "__main__":
    main()
