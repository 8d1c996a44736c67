"""The packages are rooms with one door each: the import graph, read from the sources with
`ast`, keeps the layering the README's "Repository" table describes."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORE_LIBS = {"pynamodb", "boto3", "botocore"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "atlas").rglob("*.py")):
        if "skeleton" in path.parts:  # templates of `atlas new-service`, not Atlas's code
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every absolute module name the file imports (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(Atlas module -> Atlas modules it imports, Atlas module -> third-party top names)."""
    modules = _modules()
    inner: dict[str, set[str]] = defaultdict(set)
    outer: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        for name in _imports(path):
            if name.split(".")[0] == "atlas":
                if name in modules:
                    inner[mod].add(name)
                elif name.rsplit(".", 1)[0] in modules:  # `from atlas.x import y` (y a name)
                    inner[mod].add(name.rsplit(".", 1)[0])
            else:
                outer[mod].add(name.split(".")[0])
    return inner, outer


def _reach(inner: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        mod = todo.pop()
        for dep in inner.get(mod, ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _in(mod: str, package: str) -> bool:
    return mod == package or mod.startswith(package + ".")


def test_only_the_registry_and_the_migrator_touch_dynamodb_libraries() -> None:
    _, outer = _graph()
    users = {mod for mod, libs in outer.items() if libs & STORE_LIBS}
    assert users, "the scan found no DynamoDB user at all: the test reads nothing"
    assert {m for m in users if not _in(m, "atlas.registry") and m != "atlas.migrate"} == set()
    pynamodb = {mod for mod, libs in outer.items() if "pynamodb" in libs}
    # Inside the registry, only the models and the store (its one door to DynamoDB).
    assert pynamodb <= {"atlas.registry.models", "atlas.registry.store"}, pynamodb


def test_the_registry_and_the_contract_know_nothing_of_flask() -> None:
    inner, outer = _graph()
    for mod in outer:
        if _in(mod, "atlas.registry") or mod == "atlas.contract":
            assert not outer[mod] & {"flask", "flask_restful", "werkzeug"}, mod
    # The contract is the bottom of the graph: the error tree at most.
    assert _reach(inner, "atlas.contract") <= {"atlas.errors", "atlas"}


def test_parts_that_ship_alone_never_reach_the_server() -> None:
    inner, outer = _graph()
    server = ("atlas.registry", "atlas.api", "atlas.mirror", "atlas.view", "atlas.app",
              "atlas.config", "atlas.ui")  # fmt: skip
    checked = 0
    for mod in inner:
        if not any(_in(mod, p) for p in ("atlas.client", "atlas.sidecar", "atlas.service")):
            continue
        checked += 1
        reached = _reach(inner, mod) | {mod}
        bad = {r for r in reached if any(_in(r, s) for s in server)}
        assert not bad, f"{mod} reaches {sorted(bad)}"
        libs = set().union(*(outer.get(r, set()) for r in reached))
        assert not libs & (STORE_LIBS | {"marshmallow", "pydantic", "pydantic_settings"}), mod
    assert checked >= 10


def test_api_mirror_sidecar_and_client_share_the_contract_module() -> None:
    inner, _ = _graph()
    for package in ("atlas.api", "atlas.mirror", "atlas.sidecar", "atlas.client", "atlas.view"):
        users = {m for m in inner if _in(m, package) and "atlas.contract" in inner[m]}
        assert users, f"{package} does not import atlas.contract"
    # The API, the view, the mirror and the dashboard reach DynamoDB only through the registry's
    # services (records, stores): never its models or its store layer.
    for mod, deps in inner.items():
        if any(_in(mod, p) for p in ("atlas.api", "atlas.ui", "atlas.view", "atlas.mirror")):
            assert not deps & {"atlas.registry.models", "atlas.registry.store"}, mod


def test_no_module_reaches_into_pynamodb_or_kazoo_privates() -> None:
    offenders = []
    for mod, path in _modules().items():
        text = path.read_text()
        for needle in ("_get_connection(", "_ReadOnlyTreeCache", "TreeCache._", "._in_background"):
            if needle in text:
                offenders.append(f"{mod}: {needle}")
    assert offenders == []
