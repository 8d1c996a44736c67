"""Stock Apache Curator x-discovery (Debian's libcurator-discovery-java) reads Atlas's znodes unchanged."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from atlas.stack import ZooKeeperServer
from tests.helpers import ApiClient
from tests.integration.conftest import StartAtlas

JARS = [
    "curator-x-discovery", "curator-framework", "curator-client", "zookeeper", "zookeeper-jute",
    "jackson-databind", "jackson-core", "jackson-annotations", "guava", "slf4j-api", "slf4j-nop",
]  # fmt: skip
SOURCE = Path(__file__).parent / "java" / "ListInstances.java"


@pytest.fixture(scope="module")
def curator_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Compile the Curator program once; its classpath."""
    jars = [f"/usr/share/java/{j}.jar" for j in JARS]
    missing = [j for j in jars if not Path(j).exists()]
    if missing or shutil.which("javac") is None:
        pytest.fail(f"install libcurator-discovery-java and a JDK (make deps); missing: {missing}")
    out = tmp_path_factory.mktemp("curator")
    cp = ":".join(jars)
    subprocess.run(["javac", "-cp", cp, "-d", str(out), str(SOURCE)], check=True, timeout=120)
    return f"{out}:{cp}"


def test_curator_lists_instances_with_enabled_flags(
    curator_classpath: str, zk_server: ZooKeeperServer, start_atlas: StartAtlas, realm: str
) -> None:
    atlas = start_atlas(realm, ATLAS_ZK_HOSTS=zk_server.address)
    api = ApiClient(atlas.url)
    api.post("/v1/services", json={"name": "identity", "port": 8000})
    api.post("/v1/services", json={"name": "teams"})
    a = api.put("/v1/services/identity/instances/10.0.0.1:8000", json={}).json()
    api.put("/v1/services/identity/instances/10.0.0.2:8000", json={"labels": {"x": "y"}})
    api.put("/v1/services/teams/instances/app-3.internal:9000", json={"zone": "b"})
    api.patch("/v1/services/identity/instances/10.0.0.2:8000", json={"enabled": False})

    run = subprocess.run(
        ["java", "-cp", curator_classpath, "ListInstances", zk_server.address,
         f"/atlas/{realm}/services"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = sorted(run.stdout.split("\n")[:-1])
    from datetime import datetime

    created_ms = int(
        datetime.fromisoformat(a["created_at"].replace("Z", "+00:00")).timestamp() * 1000
    )
    assert lines[0] == f"identity 10.0.0.1:8000 10.0.0.1 8000 true STATIC {created_ms}"
    assert lines[1].startswith("identity 10.0.0.2:8000 10.0.0.2 8000 false STATIC ")
    assert lines[2].startswith("teams app-3.internal:9000 app-3.internal 9000 true STATIC ")
    assert len(lines) == 3
