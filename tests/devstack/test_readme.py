"""The README, as pasted: its marked shell blocks, read from README.md (never copied here), run
in order in one bash against a fresh `atlas dev` on free ports, and every `# → text` line they
state is checked against what the command before it printed.

How the text is moved to the test's stack (nothing else is changed):
- `127.0.0.1:<port>` and `localhost:<port>` of a default port of the stack (8080, 8000, 2181,
  4000, 4001, 9001, 9002) become the test stack's ports;
- `.venv/bin/` becomes the bin directory of the interpreter running the tests;
- `/tmp/demo` becomes a temporary directory;
- the shell gets ATLAS_URL, ATLAS_SIDECAR_URL and ATLAS_DEV_DATA of the test stack (the
  commands that read them, `atlas audit`, `load()`, the smart client and `atlas dev wait`,
  default to the ports the README shows), and ATLAS_CONFIG_CACHE_DIR in the temporary
  directory (load() keeps its last-known-good copy there instead of in ~/.cache).

Expectations: `# → text` says the command's output contains `text` (after what the previous
`# →` line matched: several can match one line, in order); `# → N\u00d7 text` (N, the
multiplication sign, a space) says N more lines contain it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from atlas.devstack import Ports
from tests.devstack.conftest import DevProcess, stack_ports

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- pasted: tests/devstack/test_readme.py -->"
EXPECT = "# → "
TIMES = "\u00d7"  # the multiplication sign
COUNTED = re.compile(rf"^(\d+){TIMES} (.*)$")
MARKER = "@@atlas-readme {}@@"
DEFAULT = Ports()


@dataclass
class Command:
    """One command as pasted (maybe several lines) and what the README says it prints."""

    text: str
    block: int
    expected: list[str] = field(default_factory=list)


def _open_quote(line: str, quote: str | None) -> str | None:
    """The quote still open at the end of `line` (given the one open at its start)."""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote is None:
            if ch == "#" and (i == 0 or line[i - 1].isspace()):
                return None  # a comment: the rest of the line is not shell
            if ch in "'\"":
                quote = ch
            elif ch == "\\":
                i += 1
        elif quote == "'":
            if ch == "'":
                quote = None
        else:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quote = None
        i += 1
    return quote


def blocks(readme: str) -> list[str]:
    """The marked ```sh blocks, in order."""
    found = []
    lines = readme.splitlines()
    for n, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        assert lines[n + 1].strip() == "```sh", f"README.md:{n + 2}: a ```sh block must follow"
        end = next(i for i in range(n + 2, len(lines)) if lines[i].strip() == "```")
        found.append("\n".join(lines[n + 2 : end]))
    return found


def commands(readme: str) -> list[Command]:
    """Every command of the marked blocks, with its expectations."""
    out: list[Command] = []
    for b, block in enumerate(blocks(readme)):
        pending: list[str] = []
        quote: str | None = None
        last: Command | None = None
        for line in block.splitlines():
            if not pending:
                stripped = line.strip()
                if stripped.startswith(EXPECT.rstrip()):
                    assert last is not None, f"block {b}: {line!r} follows no command"
                    last.expected.append(stripped[len(EXPECT) :])
                    continue
                if not stripped or stripped.startswith("#"):
                    last = None  # expectations follow their command directly
                    continue
            pending.append(line)
            quote = _open_quote(line, quote)
            if quote is None and not line.rstrip().endswith("\\"):
                last = Command("\n".join(pending), b)
                out.append(last)
                pending = []
        assert not pending, f"block {b} ends inside a command: {pending}"
    return out


def moved(text: str, ports: Ports, bin_dir: Path, demo: Path) -> str:
    """The README text pointed at the test's stack (see the module docstring)."""
    mapping = {
        DEFAULT.api: ports.api, DEFAULT.dynamodb: ports.dynamodb,
        DEFAULT.zookeeper: ports.zookeeper, DEFAULT.sidecar: ports.sidecar,
        DEFAULT.status: ports.status,
        **dict(zip(DEFAULT.examples, ports.examples, strict=True)),
    }  # fmt: skip
    text = re.sub(
        r"\b(127\.0\.0\.1|localhost):(\d+)\b",
        lambda m: f"{m.group(1)}:{mapping.get(int(m.group(2)), int(m.group(2)))}",
        text,
    )
    return text.replace(".venv/bin/", f"{bin_dir}/").replace("/tmp/demo", str(demo))


def check(command: Command, output: str) -> list[str]:
    """What the README says the command prints but it did not (empty: all of it)."""
    at = 0
    missing = []
    for expected in command.expected:
        m = COUNTED.match(expected)
        if m is None:
            found = output.find(expected, at)
            if found < 0:
                missing.append(expected)
                continue
            at = found + len(expected)
            continue
        for _ in range(int(m.group(1))):  # N distinct lines
            found = output.find(m.group(2), at)
            if found < 0:
                missing.append(expected)
                break
            end = output.find("\n", found)
            at = len(output) if end < 0 else end + 1
    return missing


def test_the_parser_reads_commands_and_expectations() -> None:
    text = "\n".join([
        MARK, "```sh", "# a comment", "curl -s x \\", "   -d '{\"a\": 1}'", "# → one",
        f"# → 2{TIMES} two", "", 'python -c "', "print(1)", 'print(2)"', "# → 1", "for i in 1 2; do x; done  # trailing",
        "```",
    ])  # fmt: skip
    got = commands(text)
    assert [c.text for c in got] == [
        "curl -s x \\\n   -d '{\"a\": 1}'", 'python -c "\nprint(1)\nprint(2)"',
        "for i in 1 2; do x; done  # trailing",
    ]  # fmt: skip
    assert [c.expected for c in got] == [["one", f"2{TIMES} two"], ["1"], []]
    two = Command("x", 0, ["a", f"2{TIMES} b"])
    assert check(two, "a\nb\nb\n") == [] and check(two, "a\nb b\n") == [f"2{TIMES} b"]
    assert check(Command("x", 0, ["b", "a"]), "a\nb\n") == ["a"]  # in order
    assert check(Command("x", 0, ["a", "b"]), "a, b\n") == []  # on one line
    ports = Ports(api=1, dynamodb=2, zookeeper=3, sidecar=4, status=5, examples=(6, 7))
    assert moved("curl localhost:8080/x http://127.0.0.1:9002 10.0.0.1:8000 :4001", ports,
                 Path("/b"), Path("/d")) == "curl localhost:1/x http://127.0.0.1:7 10.0.0.1:8000 :4001"  # fmt: skip


def test_the_readme_as_pasted(dev_stack: type[DevProcess], tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    cmds = commands(readme)
    assert len(blocks(readme)) >= 4 and sum(len(c.expected) for c in cmds) >= 20
    ports = stack_ports()
    data = tmp_path / "data"
    stack = dev_stack(data, ports, "--fresh").start()
    demo = tmp_path / "demo"
    bin_dir = Path(sys.executable).parent
    script = ["set +e"]
    for i, c in enumerate(cmds):
        script += [f"printf '\\n{MARKER.format(i)}\\n'", moved(c.text, ports, bin_dir, demo)]
    script.append(f"printf '\\n{MARKER.format('end')}\\n'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update(
        ATLAS_URL=stack.api,
        ATLAS_SIDECAR_URL=stack.sidecar,
        ATLAS_DEV_DATA=str(data),
        ATLAS_CONFIG_CACHE_DIR=str(tmp_path / "config-cache"),
    )
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-s"], input="\n".join(script) + "\n", cwd=ROOT,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )  # fmt: skip
    assert MARKER.format("end") in done.stdout, done.stdout
    parts = re.split(r"\n@@atlas-readme (\w+)@@\n", "\n" + done.stdout)
    printed = dict(zip(parts[1::2], parts[2::2], strict=True))
    failures = []
    for i, c in enumerate(cmds):
        missing = check(c, printed.get(str(i), ""))
        if missing:
            failures.append(
                f"$ {c.text}\n  printed:\n{printed.get(str(i), '')}\n  missing: {missing}"
            )
    if failures:
        pytest.fail("the README says, the paste did not show:\n\n" + "\n\n".join(failures))
