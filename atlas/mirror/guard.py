"""The guard node's data: which instances each recent mirror commit of a service touched.

Every mirror commit of a service checks and bumps its guard (`guards/<service>`), so a writer
whose pre-read went stale cannot commit. A group commit writes, in the same set_data, which
instance ids it published, keyed by the guard version the commit produces. A later writer
whose pre-read saw guard version `g` can then tell whether the commits after `g` touched its
instance at all: if none did, its record is still the newest for that node and it may commit
beside them; if one did (or the log does not reach back to `g`), it re-reads the truth.

Anything that cannot vouch for what it changed (a full service sync, the reconciler, an older
Atlas) writes an empty log, which vouches for nothing: every earlier pre-read is then stale.
Pure functions only; the data is Atlas-internal and never read by consumers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

MAX_VERSIONS = 64  # commits remembered
MAX_IDS = 512  # instance ids remembered, over all of them (keeps the node a few KiB)


@dataclass(frozen=True)
class GuardLog:
    """Recent commits of one service, oldest first: (guard version produced, ids touched).

    Versions are contiguous and end at the guard's current version; an empty log knows
    nothing.
    """

    entries: tuple[tuple[int, frozenset[str]], ...] = ()

    @classmethod
    def parse(cls, data: bytes | None, version: int) -> GuardLog:
        """The log stored in a guard at `version`; empty when unreadable or not written at it."""
        try:
            raw = json.loads(data or b"null")
        except (TypeError, ValueError):
            return cls()
        log = raw.get("log") if isinstance(raw, dict) else None
        if not isinstance(log, list):
            return cls()
        entries: list[tuple[int, frozenset[str]]] = []
        for item in log:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and type(item[0]) is int
                and isinstance(item[1], list)
                and all(isinstance(i, str) for i in item[1])
            ):
                return cls()
            entries.append((item[0], frozenset(item[1])))
        # Only a log written by the commit that produced `version` describes the commits up
        # to it; keep its contiguous tail.
        if not entries or entries[-1][0] != version:
            return cls()
        start = len(entries) - 1
        while start > 0 and entries[start - 1][0] == entries[start][0] - 1:
            start -= 1
        return cls(tuple(entries[start:]))

    def untouched(self, iid: str, since: int, current: int) -> bool:
        """True when every commit after guard version `since`, up to `current`, is known and
        none of them touched `iid`."""
        if since == current:
            return True
        if since > current or not self.entries:
            return False
        first = self.entries[0][0]
        if first > since + 1 or self.entries[-1][0] != current:
            return False
        return all(iid not in ids for v, ids in self.entries if v > since)

    def encode_after(self, version: int, touched: Iterable[str]) -> bytes:
        """The data of the guard at `version` (the one this commit produces): this log plus
        the commit's ids, oldest entries dropped past the bounds."""
        entries = [*self.entries, (version, frozenset(touched))]
        if len(entries) > 1 and entries[-2][0] != version - 1:
            entries = entries[-1:]  # not contiguous: only the new commit is known
        entries = entries[-MAX_VERSIONS:]
        while len(entries) > 1 and sum(len(ids) for _, ids in entries) > MAX_IDS:
            entries.pop(0)
        body = {"log": [[v, sorted(ids)] for v, ids in entries]}
        return json.dumps(body, separators=(",", ":")).encode()
