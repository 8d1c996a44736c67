"""The dev stack's reaper: whatever ends `atlas dev`, nothing it started outlives it.

`atlas dev` starts this process first, in a session of its own (so neither Ctrl-C nor a closed
terminal reaches it), and keeps the write end of a pipe to its stdin. Every child of the stack
carries `ATLAS_STACK_ID=<marker>` in its environment, and so do their children (HAProxy, which
the sidecar starts in a session of its own, gunicorn's workers). When the pipe closes (the
stack stopped, or `atlas dev` died, even by SIGKILL) the reaper sends SIGTERM to every process
that carries the marker, waits up to `--grace` seconds, then SIGKILLs what is left and exits.

Direct children also get SIGTERM from the kernel when `atlas dev` dies
(`prctl(PR_SET_PDEATHSIG)`, see `atlas.stack.procs.die_with_parent`); the reaper catches the
rest.

Run as `python -m atlas.stack.reaper --marker M [--grace S]`; lines on stdin are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from types import FrameType

from atlas.stack.procs import marked_pids


class _Wake(Exception):
    """SIGTERM to the reaper itself: sweep now."""


def _wake(signum: int, frame: FrameType | None) -> None:
    raise _Wake()


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def sweep(marker: str, grace_s: float, poll_s: float = 0.1) -> list[int]:
    """SIGTERM every marked process, SIGKILL those still there after `grace_s`; returns the
    pids that had to be killed."""
    left = marked_pids(marker)
    if not left:
        return []
    _signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        time.sleep(poll_s)
        left = marked_pids(marker)
    killed = list(left)
    _signal_all(killed, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return killed


def main(argv: list[str] | None = None) -> int:
    """Wait for stdin to close, then sweep the stack's processes."""
    parser = argparse.ArgumentParser(prog="python -m atlas.stack.reaper")
    parser.add_argument("--marker", required=True, help="value of ATLAS_STACK_ID to sweep")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds before SIGKILL")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _wake)
    with contextlib.suppress(_Wake, OSError):
        while sys.stdin.buffer.read(4096):
            pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    killed = sweep(args.marker, args.grace)
    if killed:
        print(f"reaper: killed {killed} (still running {args.grace:g}s after SIGTERM)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
