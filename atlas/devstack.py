"""`make run`: the whole local stack on 127.0.0.1, in the foreground, like `consul agent -dev`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from atlas.config import Settings
from atlas.migrate import Migrator
from atlas.stack import AtlasServer, ManagedProcess, MotoServer, ZooKeeperServer, wait_for_port
from atlas.stack.servers import zookeeper_available

EXAMPLE_PORTS = (9001, 9002)


@dataclass
class DevStack:
    """The local realm: moto (DynamoDB+KMS), ZooKeeper, Atlas under gunicorn, example backends."""

    data_dir: Path
    api_port: int = 8080
    dynamodb_port: int = 8000
    zk_port: int = 2181
    sidecar_port: int = 4000
    seed: bool = True

    def env(self) -> dict[str, str]:
        """Environment of the Atlas processes."""
        env = dict(os.environ)
        env.update(
            {
                "ATLAS_REALM": "local",
                "ATLAS_AUTH_DISABLED": "true",
                "ATLAS_DYNAMODB_ENDPOINT": f"http://127.0.0.1:{self.dynamodb_port}",
                "ATLAS_ZK_HOSTS": f"127.0.0.1:{self.zk_port}",
                "AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID", "local"),
                "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY", "local"),
                "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"),
            }
        )
        return env

    def _say(self, msg: str) -> None:
        print(f"[atlas dev] {msg}", flush=True)

    def _api(self, method: str, path: str, body: dict[str, object] | None = None) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def run(self) -> int:
        """Start everything, wait for Ctrl-C, stop everything."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        procs: list[ManagedProcess] = []
        env = self.env()
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        stop = {"now": False}

        def _stop(signum: int, frame: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        try:
            moto = MotoServer(self.data_dir / "moto", port=self.dynamodb_port)
            procs.append(moto.process)
            moto.start()
            self._say(f"DynamoDB/KMS (moto server, in memory) on {moto.url}")

            if zookeeper_available():
                zk = ZooKeeperServer(self.data_dir / "zookeeper", port=self.zk_port)
                procs.append(zk.process)
                zk.start()
                self._say(f"ZooKeeper on {zk.address} (data in {zk.data_dir})")
            else:
                self._say("ZooKeeper not installed (apt-get install zookeeper): mirror off")
                env.pop("ATLAS_ZK_HOSTS")

            settings = Settings.from_env(env)
            ran = Migrator(settings).run()
            self._say(f"migrations applied: {', '.join(ran) or 'none pending'}")

            api = AtlasServer(logs, env, port=self.api_port)
            procs.append(api.process)
            api.start()
            self._say(f"Atlas API on http://127.0.0.1:{self.api_port} (realm local)")
            self._say("AUTH IS DISABLED (ATLAS_AUTH_DISABLED=true, allowed only in realm 'local')")

            if self.seed:
                for i, port in enumerate(EXAMPLE_PORTS, start=1):
                    backend = ManagedProcess(
                        f"example-{i}",
                        [sys.executable, "-m", "atlas.stack.echo", "--port", str(port),
                         "--name", f"example-{i}"],
                        logs / f"example-{i}.log",
                    )  # fmt: skip
                    procs.append(backend)
                    backend.start()
                self._api("POST", "/v1/services", {"name": "example", "port": EXAMPLE_PORTS[0],
                          "health_check": {"path": "/", "interval_s": 2, "timeout_s": 1}})  # fmt: skip
                for port in EXAMPLE_PORTS:
                    self._api("PUT", f"/v1/services/example/instances/127.0.0.1:{port}", {})
                self._say(f"seeded service 'example' with backends on {EXAMPLE_PORTS}")

            if "ATLAS_ZK_HOSTS" in env and shutil.which("haproxy"):
                sidecar = ManagedProcess(
                    "sidecar",
                    [sys.executable, "-m", "atlas.sidecar.cli", "--zk", env["ATLAS_ZK_HOSTS"],
                     "--realm", "local", "--port", str(self.sidecar_port),
                     "--state-dir", str(self.data_dir / "sidecar"),
                     "--status-port", str(self.sidecar_port + 1), "--stop-haproxy-on-exit"],
                    logs / "sidecar.log",
                )  # fmt: skip
                procs.append(sidecar)
                sidecar.start()
                wait_for_port(self.sidecar_port, timeout=30, proc=sidecar.proc)
                self._say(
                    f"sidecar + HAProxy on http://127.0.0.1:{self.sidecar_port} "
                    f"(status on :{self.sidecar_port + 1}/status); try:\n"
                    f"    curl -H 'Atlas-Service: example' http://127.0.0.1:{self.sidecar_port}/"
                )
            else:
                self._say("HAProxy or ZooKeeper missing (make deps): no sidecar")

            self._say(f"logs in {logs}; Ctrl-C stops everything")
            while not stop["now"]:
                for p in procs:
                    if not p.running():
                        self._say(f"{p.name} exited; stopping the stack. Last log lines:")
                        print(p.log_tail(20), flush=True)
                        return 1
                time.sleep(0.5)
            return 0
        finally:
            for p in reversed(procs):
                p.stop()
            self._say("stopped")
