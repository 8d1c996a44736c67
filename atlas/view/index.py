"""The write side of the index: which zxid published what a request wrote.

`IndexedMirror` wraps the mirror the registry writes through. Each mirror call returns the
zxid that published the change (or None: not mirrored now); the wrapper notes it in the
current request's `WriteNote` (a context variable: per thread, per greenlet) so the response
can carry `X-Atlas-Index`, and tells the view, so that this process never serves from its view
a state older than a write it acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from atlas.registry.mirror import Mirror
from atlas.registry.records import Instance, Service

from .snapshot import ServiceEntry


@dataclass
class WriteNote:
    """What one request's writes were published at: the highest zxid, and whether any write
    was not published (ZooKeeper down)."""

    zxid: int | None = None
    pending: bool = False
    services: set[str] = field(default_factory=set)

    def add(self, zxid: int | None, service: str | None = None) -> None:
        """Record one published (zxid) or unpublished (None) change."""
        if zxid is None:
            self.pending = True
        elif self.zxid is None or zxid > self.zxid:
            self.zxid = zxid
        if service is not None:
            self.services.add(service)


_note: ContextVar[WriteNote | None] = ContextVar("atlas_write_note", default=None)


def begin() -> WriteNote:
    """Start noting the writes of the current request (thread- and greenlet-safe)."""
    note = WriteNote()
    _note.set(note)
    return note


def current() -> WriteNote | None:
    """The note of the current request, if one was begun."""
    return _note.get()


def end() -> None:
    """Stop noting (the request is done)."""
    _note.set(None)


#: A check that a view entry (None: the service is absent) shows a write.
Expectation = Callable[[ServiceEntry | None], bool]


class WriteListener(Protocol):
    """What the mirror wrapper tells (the view)."""

    def note_write(self, zxid: int) -> None:
        """A change this process acknowledges was published at `zxid`."""

    def note_unpublished(self, service: str, shows: Expectation) -> None:
        """A change to `service` was not published; `shows` tells when the view has it."""


def _service_shown(svc: Service) -> Expectation:
    def shows(e: ServiceEntry | None) -> bool:
        return (
            e is not None
            and e.service is not None
            and e.service.version >= svc.version
            and (e.config_version or 0) >= svc.config_version
        )

    return shows


def _absent(e: ServiceEntry | None) -> bool:
    return e is None


def _instance_shown(iid: str, record: Instance | None) -> Expectation:
    def shows(e: ServiceEntry | None) -> bool:
        found = e.by_id.get(iid) if e is not None else None
        if record is None:
            return found is None
        return found is not None and found.version >= record.version

    return shows


class IndexedMirror:
    """A Mirror that notes the zxid of every change (see the module docstring).

    Thread-safe as the wrapped mirror is; the listener may be set after construction.
    """

    def __init__(self, inner: Mirror, listener: WriteListener | None = None) -> None:
        self.inner = inner
        self.listener = listener

    def _noted(self, service: str, zxid: int | None, shows: Expectation) -> int | None:
        note = _note.get()
        if note is not None:
            note.add(zxid, service)
        if self.listener is not None:
            if zxid is None:
                self.listener.note_unpublished(service, shows)
            else:
                self.listener.note_write(zxid)
        return zxid

    def put_service(self, service: Service) -> int | None:
        """Mirror a created or changed service; note its zxid."""
        return self._noted(service.name, self.inner.put_service(service), _service_shown(service))

    def delete_service(self, name: str) -> int | None:
        """Mirror a deleted service; note its zxid."""
        return self._noted(name, self.inner.delete_service(name), _absent)

    def prepare_instance(self, service: str, instance_id: str) -> Any:
        """As the wrapped mirror."""
        return self.inner.prepare_instance(service, instance_id)

    def instance_changed(
        self, service: str, instance_id: str, record: Instance | None, prepared: Any
    ) -> int | None:
        """Mirror an instance change; note its zxid."""
        zxid = self.inner.instance_changed(service, instance_id, record, prepared)
        return self._noted(service, zxid, _instance_shown(instance_id, record))

    def status(self) -> dict[str, Any]:
        """As the wrapped mirror."""
        return self.inner.status()
