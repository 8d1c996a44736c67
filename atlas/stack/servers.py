"""Real ZooKeeper (Debian's package) and moto server processes bound to 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from atlas.stack.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port

ZK_JARS = (
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/zookeeper-jute.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
    "/usr/share/java/netty-handler.jar",
    "/usr/share/java/netty-transport.jar",
    "/usr/share/java/netty-common.jar",
    "/usr/share/java/netty-buffer.jar",
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-resolver.jar",
    "/usr/share/java/netty-transport-native-epoll.jar",
    "/usr/share/java/netty-transport-native-unix-common.jar",
)

LOG4J = """log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] - %-5p [%t:%C{1}@%L] - %m%n
"""


def zookeeper_available() -> bool:
    """Return True when Debian's zookeeper package and a java binary are installed."""
    return Path(ZK_JARS[0]).exists() and shutil.which("java") is not None


class ZooKeeperServer:
    """One ZooKeeper server (standalone, or one member of a loopback ensemble)."""

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        myid: int = 1,
        ensemble: list[tuple[int, int, int]] | None = None,
        heap_mb: int = 256,
        env: dict[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.myid = myid
        # ensemble: (myid, peer_port, election_port) for every member, this one included.
        self.ensemble = ensemble
        self.heap_mb = heap_mb
        self.data_dir = self.base_dir / "data"
        self.conf_dir = self.base_dir / "conf"
        self.process = ManagedProcess(
            f"zookeeper-{myid}",
            self._argv(),
            self.base_dir / "zookeeper.log",
            env={**os.environ, **env} if env else None,
            die_with_parent=die_with_parent,
        )

    @property
    def address(self) -> str:
        """host:port for kazoo."""
        return f"{LOOPBACK}:{self.port}"

    def _argv(self) -> list[str]:
        cp = os.pathsep.join([str(self.conf_dir), *[j for j in ZK_JARS if Path(j).exists()]])
        return [
            "java",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            "-Dzookeeper.admin.enableServer=false",
            "-cp",
            cp,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(self.conf_dir / "zoo.cfg"),
        ]

    def write_config(self) -> None:
        """Write zoo.cfg, log4j.properties and (for an ensemble) myid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "tickTime=500",
            "initLimit=20",
            "syncLimit=10",
            f"dataDir={self.data_dir}",
            f"clientPort={self.port}",
            f"clientPortAddress={LOOPBACK}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,stat,srvr,mntr",
            "maxClientCnxns=0",
            "minSessionTimeout=1000",
            "maxSessionTimeout=60000",
        ]
        if self.ensemble:
            for myid, peer, election in self.ensemble:
                lines.append(f"server.{myid}={LOOPBACK}:{peer}:{election}")
            (self.data_dir / "myid").write_text(f"{self.myid}\n")
        (self.conf_dir / "zoo.cfg").write_text("\n".join(lines) + "\n")
        (self.conf_dir / "log4j.properties").write_text(LOG4J)

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the server and wait until its client port accepts connections."""
        self.write_config()
        self.process.start()
        if wait:
            wait_for_port(self.port, timeout=timeout, proc=self.process.proc)

    def stop(self) -> None:
        """Stop the server gracefully."""
        self.process.stop()

    def kill(self) -> None:
        """kill -9 the server."""
        self.process.kill()

    def wipe(self) -> None:
        """Delete the data directory (server must be stopped)."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def running(self) -> bool:
        """Return True while the server process is alive."""
        return self.process.running()


MOTO_MODES = ("serialized", "unserialized", "stock")


class MotoServer:
    """moto's HTTP server: a DynamoDB- and KMS-compatible endpoint, in memory.

    `mode` "serialized" (the default, wherever Atlas starts moto) serves one request at a time,
    which makes it linearizable like DynamoDB (see atlas.stack.motoserver); "unserialized" is
    the same server without the lock, "stock" is `python -m moto.server` itself. The last two
    lose conditional writes under concurrency: only benchmarks and demonstrations use them.
    """

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        mode: str = "serialized",
        state_file: Path | None = None,
        env: dict[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if mode not in MOTO_MODES:
            raise ValueError(f"moto mode must be one of {MOTO_MODES}, not {mode!r}")
        if state_file is not None and mode != "serialized":
            raise ValueError("a moto state file needs the serialized mode")
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.mode = mode
        self.state_file = state_file
        env = {**os.environ, **(env or {})}
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        if mode == "stock":
            argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]
        else:
            argv = [sys.executable, "-m", "atlas.stack.motoserver", "-H", LOOPBACK]
            argv += ["-p", str(self.port)]
            if mode == "unserialized":
                argv.append("--unserialized")
            if state_file is not None:
                argv += ["--state-file", str(state_file)]
        self.process = ManagedProcess(
            "moto", argv, self.base_dir / "moto.log", env=env, die_with_parent=die_with_parent
        )

    @property
    def url(self) -> str:
        """The endpoint URL for boto3 / pynamodb."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start moto server and wait for its port."""
        self.process.start()
        wait_for_port(self.port, timeout=timeout, proc=self.process.proc)

    def stop(self) -> None:
        """Stop moto server (what it stored is lost, unless it has a state file)."""
        self.process.stop()

    def kill(self) -> None:
        """kill -9 moto server."""
        self.process.kill()


class AtlasServer:
    """Atlas under real gunicorn with `atlas.gunicorn_conf`, configured by ATLAS_* variables.

    Everything gunicorn and the app log (access log included) goes to `<base_dir>/<name>.log`;
    the workers' metric files to `<base_dir>/<name>-metrics` (emptied at every start), unless
    `env` names a PROMETHEUS_MULTIPROC_DIR of its own.
    """

    def __init__(
        self,
        base_dir: Path,
        env: dict[str, str],
        port: int | None = None,
        workers: int = 2,
        threads: int = 4,
        app: str = "atlas.wsgi:app",
        name: str = "atlas",
        preload: bool = False,
        graceful_timeout: int = 5,
        die_with_parent: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        full_env = dict(os.environ)
        full_env["PROMETHEUS_MULTIPROC_DIR"] = str(self.base_dir / f"{name}-metrics")
        full_env.update(env)
        self.env = full_env
        self.metrics_dir = Path(full_env["PROMETHEUS_MULTIPROC_DIR"])
        argv = [
            sys.executable, "-m", "gunicorn",
            "--config", "python:atlas.gunicorn_conf",
            "--bind", f"{LOOPBACK}:{self.port}",
            "--workers", str(workers),
            "--threads", str(threads),
            "--graceful-timeout", str(graceful_timeout),
        ]  # fmt: skip
        if preload:
            argv.append("--preload")
        self.log_path = self.base_dir / f"{name}.log"
        self.process = ManagedProcess(
            name, [*argv, app], self.log_path, env=full_env, die_with_parent=die_with_parent
        )

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start gunicorn and wait until it accepts connections."""
        self.process.start()
        try:
            wait_for_port(self.port, timeout=timeout, proc=self.process.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{self.process.log_tail()}") from exc

    def stop(self) -> None:
        """Stop gunicorn gracefully."""
        self.process.stop()

    def kill(self) -> None:
        """kill -9 gunicorn and its workers."""
        self.process.kill()
