"""Registry operations: every write goes to DynamoDB first (conditional), then to the mirror."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from atlas.errors import Conflict, NotFound, PreconditionFailed
from atlas.registry.mirror import Mirror, NullMirror
from atlas.registry.models import (
    EXPIRY_SHARD,
    HealthCheckAttribute,
    InstanceModel,
    Models,
    ServiceModel,
)
from atlas.registry.records import (
    DueExpiry,
    HealthCheck,
    HostChange,
    Instance,
    Page,
    Service,
    instance_id,
)
from atlas.registry.serving import Floor, MinEnabledRefused, serving, with_until
from atlas.registry.store import (
    ConditionFailed,
    CursorKey,
    ScanPolicy,
    Store,
    StoreMetrics,
    Transaction,
    TransactionCanceled,
    TransactionConflict,
    race_retries,
    timestamp,
    utcnow,
)

log = logging.getLogger(__name__)

SERVICE_FIELDS = ("description", "owner", "port", "health_check", "tags", "min_enabled")
INSTANCE_FIELDS = (
    "enabled", "weight", "zone", "labels", "disabled_reason", "drain", "slow_start_s",
    "disabled_until",
)  # fmt: skip
#: DynamoDB's limit on the items of one TransactWriteItems.
MAX_TRANSACTION_ITEMS = 100
SERVICE_CURSOR = CursorKey(("name",))
INSTANCE_CURSOR = CursorKey(("service", "instance_id"))


class Registry:
    """Services, instances and hosts of one realm."""

    def __init__(
        self,
        models: Models,
        mirror: Mirror | None = None,
        clock: Callable[[], datetime] = utcnow,
        scan: ScanPolicy | None = None,
        metrics: StoreMetrics | None = None,
    ) -> None:
        self.models = models
        self.mirror: Mirror = mirror or NullMirror()
        self.clock = clock
        self.store = Store(models, clock=clock, scan=scan, metrics=metrics)

    # ----------------------------------------------------------------- records

    @staticmethod
    def service_record(m: ServiceModel) -> Service:
        """Convert a service model to a record."""
        hc = m.health_check
        return Service(
            name=m.name,
            description=m.description or "",
            owner=m.owner or "",
            port=int(m.port) if m.port is not None else None,
            health_check=HealthCheck(hc.path, int(hc.interval_s), int(hc.timeout_s))
            if hc
            else None,
            tags=tuple(str(t) for t in m.tags or ()),
            version=int(m.version),
            created_at=m.created_at,
            updated_at=m.updated_at,
            config_version=int(m.config_version or 0),
            deleting=bool(m.deleting),
            min_enabled=int(m.min_enabled or 0),
        )

    @staticmethod
    def instance_record(m: InstanceModel) -> Instance:
        """Convert an instance model to a record."""
        labels = m.labels.as_dict() if hasattr(m.labels, "as_dict") else dict(m.labels or {})
        return Instance(
            service=m.service,
            host=m.host,
            port=int(m.port),
            enabled=bool(m.enabled),
            weight=int(m.weight),
            zone=m.zone,
            labels={str(k): str(v) for k, v in labels.items()},
            disabled_reason=m.disabled_reason,
            version=int(m.version),
            created_at=m.created_at,
            updated_at=m.updated_at,
            drain=bool(m.drain),
            slow_start_s=int(m.slow_start_s or 0),
            disabled_until=m.disabled_until,
        )

    def now(self) -> str:
        """The current time as stored in records (the registry's clock)."""
        return self.store.now()

    def _prepare(self, service: str, iid: str) -> Any:
        # The mirror reads the znode before the DynamoDB write, so that its compare-and-set
        # after the write can use the written record instead of reading DynamoDB again.
        try:
            return self.mirror.prepare_instance(service, iid)
        except Exception:
            log.exception("mirror prepare failed; the write goes on")
            self.store.metrics.swallowed("mirror_prepare")
            return None

    def _instance_changed(
        self, service: str, iid: str, record: Instance | None, prepared: Any
    ) -> int | None:
        return self._tell_mirror(
            "instance_changed", self.mirror.instance_changed, service, iid, record, prepared
        )

    def _tell_mirror(self, action: str, fn: Callable[..., int | None], *args: Any) -> int | None:
        # DynamoDB already has the write; a mirror failure is repaired by the reconciler.
        # Returns the zxid that published the change (None: not mirrored now).
        try:
            return fn(*args)
        except Exception:
            log.exception("mirror %s failed; the reconciler will repair it", action)
            self.store.metrics.swallowed(f"mirror_{action}")
            return None

    def service_changed(self, name: str) -> None:
        """Tell the mirror the service as stored now (after a write that changed its record,
        such as a config write's `config_version`); never raises."""

        def tell() -> None:
            record = self.find_service(name)
            if record is not None:
                self.mirror.put_service(record)

        self._tell_mirror("put_service", tell)

    # ---------------------------------------------------------------- services

    def _load_service(self, name: str) -> ServiceModel:
        m = self.store.get(self.models.Service, name, action="reading a service")
        if m is None:
            raise NotFound(f"service {name!r} does not exist")
        return m

    def get_service(self, name: str) -> Service:
        """Return one service or raise NotFound."""
        return self.service_record(self._load_service(name))

    def create_service(self, data: Mapping[str, Any]) -> Service:
        """Create a service; 409 if the name is taken."""
        now = self.now()
        m = self.models.Service(
            data["name"],
            description=data.get("description") or "",
            owner=data.get("owner") or "",
            port=data.get("port"),
            tags=list(data.get("tags") or []),
            deleting=False,
            config_version=0,
            min_enabled=data.get("min_enabled") or None,
            created_at=now,
            updated_at=now,
            version=1,
        )
        self._set_health_check(m, data.get("health_check"))
        try:
            self.store.put(
                m,
                action="creating the service",
                condition=self.models.Service.name.does_not_exist(),
            )
        except ConditionFailed:
            raise Conflict(
                f"service {data['name']!r} already exists", {"name": ["Already exists."]}
            ) from None
        record = self.service_record(m)
        self._tell_mirror("put_service", self.mirror.put_service, record)
        return record

    @staticmethod
    def _set_health_check(m: ServiceModel, hc: Mapping[str, Any] | None) -> None:
        m.health_check = _health_check(hc) if hc is not None else None

    def list_services(self, limit: int, cursor: str | None = None) -> Page:
        """One page of services, in table order."""
        return self.store.paginate(
            lambda **page: self.models.Service.scan(consistent_read=True, **page),
            limit=limit,
            start=SERVICE_CURSOR.decode(cursor),
            key=SERVICE_CURSOR,
            convert=self.service_record,
            action="listing services",
        )

    def update_service(
        self, name: str, changes: Mapping[str, Any], if_match: int | None = None
    ) -> Service:
        """Apply a partial update; 412 if If-Match does not hold, 409 if deleting.

        One UpdateItem that sets only the changed fields: attributes other writers own
        (`config_version`, `deleting`) are never written back from a stale read.
        """
        model = self.models.Service
        actions: list[Any] = []
        for key in SERVICE_FIELDS:
            if key not in changes:
                continue
            value = changes[key]
            attr = getattr(model, key)
            if key == "health_check":
                if value is None:
                    actions.append(attr.remove())
                else:
                    actions.append(attr.set(_health_check(value)))
            elif key == "tags":
                actions.append(attr.set(list(value or [])))
            elif key in ("description", "owner"):
                actions.append(attr.set(value or ""))
            elif key == "min_enabled":
                actions.append(attr.set(value) if value else attr.remove())
            elif value is None:
                actions.append(attr.remove())
            else:
                actions.append(attr.set(value))
        actions += [model.updated_at.set(self.now()), model.version.add(1)]
        condition = model.live()
        if if_match is not None:
            condition &= model.version == if_match
        for _ in race_retries(f"service {name!r}"):
            try:
                stored = self.store.update(
                    model(name), actions, action="updating the service", condition=condition
                )
            except ConditionFailed:
                current = self._load_service(name)  # NotFound if it is gone
                if current.deleting:
                    raise Conflict(f"service {name!r} is being deleted") from None
                if if_match is not None and current.version != if_match:
                    raise PreconditionFailed(
                        f"service {name!r} is at version {current.version}, not {if_match}"
                    ) from None
                continue  # a plain DELETE marked the service for a moment and let go
            record = self.service_record(stored)
            self._tell_mirror("put_service", self.mirror.put_service, record)
            return record
        raise AssertionError("unreachable: race_retries raises when the attempts are spent")

    def _mark_deleting(self, name: str, owner: str, version: int | None, take_over: bool) -> None:
        """Set `deleting` (without bumping the version clients hold in ETags).

        Only a cascade may take over a service another DELETE marked (that is how a delete
        that crashed half-way is finished); a plain DELETE of a service being deleted is 409.
        """
        svc = self.models.Service
        condition = svc.name.exists()
        if not take_over:
            condition &= svc.deleting == False  # noqa: E712
        if version is not None:
            condition &= svc.version == version
        try:
            self.store.update(
                svc(name),
                [svc.deleting.set(True), svc.deleting_by.set(owner)],
                action="marking the service",
                condition=condition,
            )
        except ConditionFailed:
            current = self._load_service(name)
            if current.deleting:
                raise Conflict(f"service {name!r} is being deleted") from None
            raise PreconditionFailed(f"service {name!r} changed concurrently") from None

    def _unmark_deleting(self, name: str, owner: str) -> None:
        """Clear `deleting` if this DELETE still owns the mark (a cascade may have taken it)."""
        svc = self.models.Service
        # A failed condition means a cascade took the mark over: it is the cascade's to clear.
        with suppress(ConditionFailed):
            self.store.update(
                svc(name),
                [svc.deleting.set(False), svc.deleting_by.remove()],
                action="unmarking the service",
                condition=svc.deleting_by == owner,
            )

    def has_children(self, name: str) -> bool:
        """True while the service has instances or config keys that are not deleted."""
        with self.store.operation("checking the service's instances"):
            if next(iter(self.models.Instance.query(name, limit=1, page_size=1)), None) is not None:
                return True
        with self.store.operation("checking the service's config"):
            return any(not m.deleted for m in self.models.Config.query(name, consistent_read=True))

    def _purge_config_and_tokens(self, name: str) -> None:
        # Config history and tokens go with the service: a later service of the same name
        # must not inherit old secrets or accept old tokens.
        with self.store.operation("deleting the service's config"):
            keys = [m.key for m in self.models.Config.query(name, consistent_read=True)]
            for key in keys:
                versions = list(
                    self.models.ConfigHistory.query(f"{name}/{key}", consistent_read=True)
                )
                with self.models.ConfigHistory.batch_write() as batch:
                    for h in versions:
                        batch.delete(h)
            with self.models.Config.batch_write() as batch:
                for key in keys:
                    batch.delete(self.models.Config(name, key))
        with self.store.operation("deleting the service's tokens"):
            tokens = list(self.models.Token.by_service.query(name))
            with self.models.Token.batch_write() as batch:
                for t in tokens:
                    batch.delete(t)

    def delete_service(self, name: str, cascade: bool = False, if_match: int | None = None) -> None:
        """Delete a service; 409 while it has instances or config unless cascade."""
        m = self._load_service(name)
        if if_match is not None and int(m.version) != if_match:
            raise PreconditionFailed(f"service {name!r} is at version {m.version}, not {if_match}")
        # Mark first, so that no instance, config or token can attach between the check and
        # the delete.
        owner = uuid.uuid4().hex
        version = int(m.version) if if_match is not None else None
        self._mark_deleting(name, owner, version, take_over=cascade)
        if self.has_children(name) and not cascade:
            self._unmark_deleting(name, owner)
            raise Conflict(
                f"service {name!r} still has instances or config; "
                "detach and delete them or use ?cascade=true"
            )
        svc = self.models.Service
        owned = svc.deleting_by == owner
        # Every step checks that this DELETE still owns the mark: a second cascade (a client's
        # retry) that finds the service re-created after the first one finished must not
        # delete the new service's instances, config or tokens.
        with self.store.operation("deleting the service's instances"):
            instances = list(self.models.Instance.query(name, consistent_read=True))
        for inst in instances:
            try:
                with self.store.transaction("deleting the service's instances") as tx:
                    tx.check("service", svc, name, condition=owned)
                    tx.delete("instance", inst)
            except TransactionCanceled as canceled:
                if canceled.failed("service"):
                    return  # another DELETE took over, or this service is a new one
                raise
        if not self._owns(name, owner):
            return
        self._purge_config_and_tokens(name)
        try:
            self.store.delete(svc(name), action="deleting the service", condition=owned)
        except ConditionFailed:
            return
        # The tokens index is eventually consistent: sweep once more, now that no token can be
        # issued for this name (unless it was created again meanwhile).
        if self.find_service(name) is None:
            self._purge_config_and_tokens(name)
        self._tell_mirror("delete_service", self.mirror.delete_service, name)

    def _owns(self, name: str, owner: str) -> bool:
        """True while the service exists and its `deleting` mark is this DELETE's."""
        m = self.store.get(self.models.Service, name, action="reading a service")
        return m is not None and m.deleting_by == owner

    # --------------------------------------------------------------- instances

    def _get_instance_model(self, service: str, iid: str) -> InstanceModel | None:
        return self.store.get(self.models.Instance, service, iid, action="reading an instance")

    def get_instance(self, service: str, host: str, port: int) -> Instance:
        """Return one instance or raise NotFound."""
        m = self._get_instance_model(service, instance_id(host, port))
        if m is None:
            self._load_service(service)
            raise NotFound(f"instance {instance_id(host, port)} of {service!r} does not exist")
        return self.instance_record(m)

    def _with_until(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Changes whose `disabled_until` (a datetime) is checked against the clock and stored
        as a timestamp; 422 naming the field when it is past or too far ahead."""
        return with_until(changes, timestamp, self.clock())

    # The min_enabled guard. A write that takes instances out of service (a disable, a drain,
    # a detach, a replacement that does not serve) reads the service (its min_enabled and
    # serving_seq), then counts the service's serving instances with a consistent query, and
    # commits in one transaction with its instance writes either
    #   - min_enabled == 0: a check that min_enabled is still 0, or
    #   - min_enabled > 0: serving_seq + 1, on condition that min_enabled and serving_seq are
    #     still what it read.
    # So between the count and the commit no other such write committed (it would have bumped
    # serving_seq): two writes that are each fine alone but not together cannot both commit;
    # the second re-reads, counts again and is refused. Writes that only add serving
    # instances (attach, enable, undrain, an expiry) take no part: they only raise the count.

    def _guard(self, service: str) -> _Guard:
        """Read what a write that takes instances of `service` out of service is checked
        against: the service first, then (when it has a floor) its instances' serving state."""
        m = self._load_service(service)
        floor = int(m.min_enabled or 0)
        seq = int(m.serving_seq) if m.serving_seq is not None else None
        instances: list[InstanceModel] = []
        if floor:
            with self.store.operation("counting the service's instances"):
                instances = list(
                    self.models.Instance.query(
                        service,
                        consistent_read=True,
                        attributes_to_get=["service", "instance_id", "enabled", "drain"],
                    )
                )
        return _Guard(service, floor, seq, instances)

    def _guard_op(
        self, tx: Transaction, guard: _Guard, role: str = "service", base: Any = None
    ) -> None:
        """Add the guard's item to a transaction (see above); `base` is a further condition."""
        svc = self.models.Service
        if guard.min_enabled == 0:
            condition = svc.min_enabled.does_not_exist() | (svc.min_enabled == 0)
            tx.check(
                role, svc, guard.service, condition=condition if base is None else base & condition
            )
            return
        seq = (
            svc.serving_seq.does_not_exist() if guard.seq is None else svc.serving_seq == guard.seq
        )
        condition = svc.name.exists() & (svc.min_enabled == guard.min_enabled) & seq
        if base is not None:
            condition &= base
        tx.update(role, svc(guard.service), [svc.serving_seq.add(1)], condition=condition)

    def _guarded(self, service: str, leaving: set[str], force: bool) -> _Guard:
        """The guard of a write that takes `leaving` out of service; 409 if min_enabled refuses
        it (unless force)."""
        guard = self._guard(service)
        floor = guard.floor(leaving)
        if floor is not None and floor.refused and not force:
            raise MinEnabledRefused([floor])
        return guard

    def put_instance(
        self,
        service: str,
        host: str,
        port: int,
        data: Mapping[str, Any],
        if_match: int | None = None,
        if_none_match: bool = False,
        force: bool = False,
    ) -> tuple[Instance, bool]:
        """Attach or replace an instance; returns (record, created).

        Replacing a serving instance with one that does not serve (disabled, draining) is
        held to the service's min_enabled (409 unless `force`).
        """
        data = self._with_until(data)
        iid = instance_id(host, port)
        svc = self.models.Service
        model = self.models.Instance
        for _ in race_retries(f"instance {iid}"):
            existing = self._get_instance_model(service, iid)
            if existing is not None and if_none_match:
                raise PreconditionFailed(f"instance {iid} already exists")
            if if_match is not None and (existing is None or int(existing.version) != if_match):
                raise PreconditionFailed(f"instance {iid} is not at version {if_match}")
            now = self.now()
            enabled = bool(data.get("enabled", True))
            until = None if enabled else data.get("disabled_until")
            m = model(
                service,
                iid,
                host=host,
                port=port,
                enabled=enabled,
                weight=data.get("weight", 100),
                zone=data.get("zone"),
                labels=dict(data.get("labels") or {}),
                disabled_reason=None if enabled else data.get("disabled_reason"),
                drain=True if data.get("drain") else None,
                slow_start_s=data.get("slow_start_s") or None,
                disabled_until=until,
                expiry_shard=EXPIRY_SHARD if until else None,
                created_at=existing.created_at if existing is not None else now,
                updated_at=now,
                version=int(existing.version) + 1 if existing is not None else 1,
            )
            unchanged = (
                model.instance_id.does_not_exist()
                if existing is None
                else model.version == existing.version
            )
            leaves = (
                existing is not None
                and serving(existing.enabled, existing.drain)
                and not serving(m.enabled, m.drain)
            )
            guard = self._guarded(service, {iid}, force) if leaves else None
            prepared = self._prepare(service, iid)
            try:
                with self.store.transaction("attaching the instance") as tx:
                    if guard is None:
                        tx.check("service", svc, service, condition=svc.live())
                    else:
                        self._guard_op(tx, guard, base=svc.live())
                    tx.save("instance", m, condition=unchanged)
            except TransactionConflict:
                continue
            except TransactionCanceled as canceled:
                if canceled.failed("service"):
                    current = self._load_service(service)  # raises NotFound if gone
                    if current.deleting:
                        raise Conflict(f"service {service!r} is being deleted") from None
                    continue
                if if_match is not None or if_none_match:
                    raise PreconditionFailed(f"instance {iid} changed concurrently") from None
                continue
            record = self.instance_record(m)
            self._instance_changed(service, iid, record, prepared)
            return record, existing is None
        raise AssertionError("unreachable: race_retries raises when the attempts are spent")

    def list_instances(self, service: str, limit: int, cursor: str | None = None) -> Page:
        """One page of a service's instances, ordered by id."""
        page = self.store.paginate(
            lambda **kw: self.models.Instance.query(service, consistent_read=True, **kw),
            limit=limit,
            start=INSTANCE_CURSOR.decode(cursor, service=service),
            key=INSTANCE_CURSOR,
            convert=self.instance_record,
            action="listing instances",
        )
        if not page.items:
            self._load_service(service)  # an empty page of a missing service is a 404
        return page

    def all_instances(self, service: str) -> list[Instance]:
        """Every instance of a service (for the mirror)."""
        with self.store.operation("listing instances"):
            return [
                self.instance_record(m)
                for m in self.models.Instance.query(service, consistent_read=True)
            ]

    def _modify_instance(
        self,
        service: str,
        iid: str,
        changes: Mapping[str, Any],
        if_match: int | None = None,
        force: bool = False,
    ) -> Instance:
        if (
            changes.get("enabled") is False
            or changes.get("drain") is True
            or "disabled_until" in changes
            # Whether the reason sticks depends on the stored `enabled`: read, then write.
            or ("disabled_reason" in changes and "enabled" not in changes)
        ):
            # May take the instance out of service (min_enabled), or depends on what is stored.
            return self._modify_instance_read_write(service, iid, changes, if_match, force)
        # Only adds to what serves (an enable, an undrain) or changes nothing of it: one
        # UpdateItem without a read.
        model = self.models.Instance
        actions: list[Any] = []
        clears = changes.get("enabled") is True
        for key in INSTANCE_FIELDS:
            if key not in changes or (key == "disabled_reason" and clears):
                continue
            attr = getattr(model, key)
            value = changes[key]
            if key == "labels":
                actions.append(attr.set(dict(value or {})))
            elif value is None or (key in ("drain", "slow_start_s") and not value):
                actions.append(attr.remove())
            else:
                actions.append(attr.set(value))
        if clears:
            # Enabled again: no reason, no end of a disable, and back in service (undrained)
            # unless the same request drains it.
            actions += [
                model.disabled_reason.remove(),
                model.disabled_until.remove(),
                model.expiry_shard.remove(),
            ]
            if "drain" not in changes:
                actions.append(model.drain.remove())
        actions += [model.updated_at.set(self.now()), model.version.add(1)]
        condition = model.service.exists()
        if if_match is not None:
            condition &= model.version == if_match
        prepared = self._prepare(service, iid)
        try:
            stored = self.store.update(
                model(service, iid), actions, action="updating the instance", condition=condition
            )
        except ConditionFailed:
            if self._get_instance_model(service, iid) is None:
                self._load_service(service)
                raise NotFound(f"instance {iid} of {service!r} does not exist") from None
            raise PreconditionFailed(f"instance {iid} is not at version {if_match}") from None
        record = self.instance_record(stored)
        self._instance_changed(service, iid, record, prepared)
        return record

    def _modify_instance_read_write(
        self,
        service: str,
        iid: str,
        changes: Mapping[str, Any],
        if_match: int | None = None,
        force: bool = False,
    ) -> Instance:
        model = self.models.Instance
        for _ in race_retries(f"instance {iid}"):
            m = self._instance_at(service, iid, if_match)
            read = int(m.version)
            was_serving = serving(m.enabled, m.drain)
            _apply_changes(m, changes)
            m.updated_at = self.now()
            m.version = read + 1
            leaves = was_serving and not serving(m.enabled, m.drain)
            guard = self._guarded(service, {iid}, force) if leaves else None
            unchanged = model.service.exists() & (model.version == read)
            prepared = self._prepare(service, iid)
            if not self._write_instance(m, guard, unchanged, "updating the instance", if_match):
                continue  # it changed (or another guarded write committed): decide again
            record = self.instance_record(m)
            self._instance_changed(service, iid, record, prepared)
            return record
        raise AssertionError("unreachable: race_retries raises when the attempts are spent")

    def _instance_at(self, service: str, iid: str, if_match: int | None) -> InstanceModel:
        """The stored instance (consistent read): 404 naming the service or the instance,
        412 when `if_match` names another version."""
        m = self._get_instance_model(service, iid)
        if m is None:
            self._load_service(service)
            raise NotFound(f"instance {iid} of {service!r} does not exist")
        if if_match is not None and int(m.version) != if_match:
            raise PreconditionFailed(f"instance {iid} is at version {m.version}, not {if_match}")
        return m

    def _write_instance(
        self,
        m: InstanceModel,
        guard: _Guard | None,
        condition: Any,
        action: str,
        if_match: int | None,
        delete: bool = False,
    ) -> bool:
        """Put (or delete) one instance; with the service's guard in one transaction when the
        write takes a serving instance away. False when a race was lost: decide again."""
        try:
            if guard is None:
                write = self.store.delete if delete else self.store.put
                write(m, action=action, condition=condition)
            else:
                with self.store.transaction(action) as tx:
                    self._guard_op(tx, guard)
                    (tx.delete if delete else tx.save)("instance", m, condition=condition)
        except TransactionConflict:
            return False
        except (ConditionFailed, TransactionCanceled) as exc:
            lost = isinstance(exc, ConditionFailed) or exc.failed("instance")
            if lost and if_match is not None:
                raise PreconditionFailed(f"instance {m.instance_id} changed concurrently") from None
            return False
        return True

    def update_instance(
        self,
        service: str,
        host: str,
        port: int,
        changes: Mapping[str, Any],
        if_match: int | None = None,
        force: bool = False,
    ) -> Instance:
        """Partially update an instance (enable/disable, drain, weight, zone, labels, ...).

        A disable or a drain of a serving instance is held to the service's min_enabled (409
        unless `force`). Enabling clears `disabled_reason`, `disabled_until` and `drain` (unless
        the same change sets `drain`); a disable without `disabled_until` is open-ended.
        """
        changes = self._with_until(changes)
        return self._modify_instance(service, instance_id(host, port), changes, if_match, force)

    def delete_instance(
        self,
        service: str,
        host: str,
        port: int,
        if_match: int | None = None,
        force: bool = False,
    ) -> None:
        """Detach an instance; a serving one is held to the service's min_enabled (409 unless
        `force`)."""
        iid = instance_id(host, port)
        model = self.models.Instance
        for _ in race_retries(f"instance {iid}"):
            m = self._instance_at(service, iid, if_match)
            guard = self._guarded(service, {iid}, force) if serving(m.enabled, m.drain) else None
            unchanged = model.version == m.version
            prepared = self._prepare(service, iid)
            if not self._write_instance(
                m, guard, unchanged, "detaching the instance", if_match, delete=True
            ):
                continue  # it changed (or another guarded write committed): decide again
            self._instance_changed(service, iid, None, prepared)
            return
        raise AssertionError("unreachable: race_retries raises when the attempts are spent")

    # ------------------------------------------------------------------- hosts

    def host_instances(self, host: str) -> list[Instance]:
        """Every instance on a host, across services (a GSI: eventually consistent)."""
        with self.store.operation("listing the host's instances"):
            return [self.instance_record(m) for m in self.models.Instance.by_host.query(host)]

    def change_host(
        self,
        host: str,
        enabled: bool,
        reason: str | None = None,
        until: datetime | None = None,
        force: bool = False,
    ) -> HostChange:
        """Enable or disable every instance on a host; says which it changed and which it left.

        A disable records its reason (default "host disabled") on every instance it disables
        and on one disabled without a reason; an instance already disabled with a reason of
        its own keeps it (and its end) and is left alone. It checks every service on the host
        against its min_enabled in one decision and writes nothing when any refuses (409
        naming each, unless `force`). `until` makes it a timed disable. An enable enables
        every instance not already serving.
        """
        if not enabled:
            return self._disable_host(host, reason or "host disabled", until, force)
        items: list[Instance] = []
        changed: list[Instance] = []
        left: list[Instance] = []
        for inst in self.host_instances(host):
            if inst.serving:
                items.append(inst)
                left.append(inst)
                continue
            try:
                stored = self._modify_instance(inst.service, inst.id, {"enabled": True})
            except NotFound:
                continue  # detached meanwhile
            items.append(stored)
            changed.append(stored)
        return HostChange(items, changed, left)

    def _disable_host(
        self, host: str, reason: str, until: datetime | None, force: bool
    ) -> HostChange:
        changes = self._with_until(
            {"enabled": False, "disabled_reason": reason, "disabled_until": until}
        )
        model = self.models.Instance
        for _ in race_retries(f"host {host}"):
            listed = self.host_instances(host)
            wanted: dict[str, set[str]] = {}
            for inst in listed:
                if inst.enabled or not inst.disabled_reason:
                    wanted.setdefault(inst.service, set()).add(inst.id)
            # One decision: every service's guard and the current state of its instances
            # (consistent reads; the host index may lag), then every refusal at once.
            groups: list[tuple[_Guard | None, list[tuple[InstanceModel, int]]]] = []
            refused: list[Floor] = []
            now = self.now()
            for name in sorted(wanted):
                try:
                    guard = self._guard(name)
                except NotFound:
                    continue  # deleted meanwhile, and its instances with it
                writes = []
                leaving = set()
                for iid in sorted(wanted[name]):
                    m = self._get_instance_model(name, iid)
                    if m is None or not (m.enabled or not m.disabled_reason):
                        continue  # detached, or disabled with a reason, since the index said
                    if serving(m.enabled, m.drain):
                        leaving.add(m.instance_id)
                    read = int(m.version)
                    _apply_changes(m, changes)
                    m.updated_at = now
                    m.version = read + 1
                    writes.append((m, read))
                floor = guard.floor(leaving) if leaving else None
                if floor is not None and floor.refused:
                    refused.append(floor)
                if writes:
                    groups.append((guard if leaving else None, writes))
            if refused and not force:
                raise MinEnabledRefused(refused)
            written: dict[tuple[str, str], Instance] = {}
            if self._commit_host(groups, model, written):
                items = [written.get((i.service, i.id), i) for i in listed]
                changed = [i for i in items if (i.service, i.id) in written]
                left = [i for i in items if (i.service, i.id) not in written]
                return HostChange(items, changed, left)
        raise AssertionError("unreachable: race_retries raises when the attempts are spent")

    def _commit_host(
        self,
        groups: list[tuple[_Guard | None, list[tuple[InstanceModel, int]]]],
        model: type[InstanceModel],
        written: dict[tuple[str, str], Instance],
    ) -> bool:
        """Write a host-disable: one transaction when it fits, else whole services in turn.
        False when a race was lost (nothing of that transaction written: decide again)."""
        for chunk in _chunks(groups):
            prepared = {
                (m.service, m.instance_id): self._prepare(m.service, m.instance_id)
                for _, writes in chunk
                for m, _ in writes
            }
            try:
                with self.store.transaction("disabling the host") as tx:
                    for guard, writes in chunk:
                        name = writes[0][0].service
                        if guard is not None:
                            self._guard_op(tx, guard, role=f"service {name}")
                        for m, read in writes:
                            tx.save(
                                f"instance {name} {m.instance_id}",
                                m,
                                condition=model.service.exists() & (model.version == read),
                            )
            except (TransactionCanceled, TransactionConflict):
                return False
            for _, writes in chunk:
                for m, _ in writes:
                    record = self.instance_record(m)
                    written[(m.service, m.instance_id)] = record
                    self._instance_changed(
                        m.service, m.instance_id, record, prepared[(m.service, m.instance_id)]
                    )
        return True

    # ------------------------------------------------------------ timed disables

    def due_expiries(self, limit: int = 100) -> list[DueExpiry]:
        """Timed disables whose `disabled_until` has passed, oldest first (at most `limit`).

        Read from the sparse expiry index, which is eventually consistent: an entry may be
        stale, and `expire_disable` then writes nothing.
        """
        model = self.models.Instance
        with self.store.operation("listing due timed disables"):
            return [
                DueExpiry(m.service, m.instance_id, int(m.version), m.disabled_until)
                for m in model.by_expiry.query(
                    EXPIRY_SHARD,
                    model.disabled_until <= self.now(),
                    limit=limit,
                    page_size=limit,
                )
            ]

    def expire_disable(self, due: DueExpiry) -> Instance | None:
        """End a timed disable: enable the instance (clearing reason, end and drain) if it is
        still at the version that set this end; the record, or None when anything changed
        since (a later write decides, and a stale or second sweep writes nothing)."""
        model = self.models.Instance
        if due.disabled_until > self.now():
            return None
        actions: list[Any] = [
            model.enabled.set(True),
            model.disabled_reason.remove(),
            model.disabled_until.remove(),
            model.expiry_shard.remove(),
            model.drain.remove(),
            model.updated_at.set(self.now()),
            model.version.add(1),
        ]
        condition = (
            (model.version == due.version)
            & (model.disabled_until == due.disabled_until)
            & (model.enabled == False)  # noqa: E712
        )
        prepared = self._prepare(due.service, due.instance_id)
        try:
            stored = self.store.update(
                model(due.service, due.instance_id),
                actions,
                action="ending a timed disable",
                condition=condition,
            )
        except ConditionFailed:
            return None
        record = self.instance_record(stored)
        self._instance_changed(due.service, due.instance_id, record, prepared)
        return record

    # ------------------------------------------------------- mirror's reads

    def find_service(self, name: str) -> Service | None:
        """The service as stored now (consistent read), or None."""
        m = self.store.get(self.models.Service, name, action="reading a service")
        return self.service_record(m) if m is not None else None

    def find_instance(self, service: str, iid: str) -> Instance | None:
        """The instance as stored now (consistent read), or None."""
        m = self._get_instance_model(service, iid)
        return self.instance_record(m) if m is not None else None

    def scan_services(self) -> list[Service]:
        """Every service of the realm (consistent scan in bounded, retried pages)."""
        return [
            self.service_record(m)
            for m in self.store.scan(self.models.Service, "scanning services")
        ]

    def iter_instances(self) -> Iterator[Instance]:
        """Every instance of the realm, streamed (consistent scan in bounded, retried pages).

        The instances of one service arrive together, one run after another (see Store.scan).
        """
        for m in self.store.scan(self.models.Instance, "scanning instances"):
            yield self.instance_record(m)

    # ------------------------------------------------------------------ health

    def check_store(self) -> None:
        """Raise Unavailable unless every table answers."""
        with self.store.operation("the readiness check"):
            for model in self.models.all():
                model.describe_table()


def _health_check(hc: Mapping[str, Any]) -> HealthCheckAttribute:
    return HealthCheckAttribute(
        path=hc["path"], interval_s=hc.get("interval_s", 10), timeout_s=hc.get("timeout_s", 2)
    )


@dataclass
class _Guard:
    """What a write that takes instances of one service out of service read of the service:
    its min_enabled and serving_seq, then (with a floor) its instances (see Registry._guard)."""

    service: str
    min_enabled: int
    seq: int | None
    instances: list[InstanceModel]

    def floor(self, leaving: set[str]) -> Floor | None:
        """What min_enabled says of taking `leaving` out of service (None: no floor)."""
        if self.min_enabled == 0:
            return None
        after = sum(
            1
            for m in self.instances
            if serving(m.enabled, m.drain) and m.instance_id not in leaving
        )
        return Floor(self.service, self.min_enabled, after)


def _apply_changes(m: InstanceModel, changes: Mapping[str, Any]) -> None:
    """Apply a PATCH's changes to a read instance, with the enable/disable rules."""
    for key in INSTANCE_FIELDS:
        if key in changes:
            value = changes[key]
            setattr(m, key, dict(value or {}) if key == "labels" else value)
    if changes.get("enabled") is False and "disabled_until" not in changes:
        m.disabled_until = None  # a disable without an end is open-ended, whatever came before
    if changes.get("enabled") is True and "drain" not in changes:
        m.drain = None  # enabled again: back in service
    if m.enabled:
        m.disabled_reason = None
        m.disabled_until = None
    m.drain = True if m.drain else None
    m.slow_start_s = int(m.slow_start_s) if m.slow_start_s else None
    m.expiry_shard = EXPIRY_SHARD if m.disabled_until else None


_Group = tuple[_Guard | None, list[tuple[InstanceModel, int]]]


def _chunks(groups: list[_Group]) -> list[list[_Group]]:
    """The transactions of a host-disable: all of it in one when it fits DynamoDB's limit,
    else whole services packed in turn (a service's instances without a floor split freely)."""

    def size(group: _Group) -> int:
        return len(group[1]) + 1  # the service's guard or check comes with its instances

    if sum(size(g) for g in groups) <= MAX_TRANSACTION_ITEMS:
        return [groups] if groups else []
    pieces: list[_Group] = []
    for guard, writes in groups:
        if len(writes) < MAX_TRANSACTION_ITEMS:
            pieces.append((guard, writes))
        elif guard is not None:
            raise Conflict(
                f"{len(writes)} instances of service {guard.service!r} are on this host, more "
                "than one transaction holds; disable them in parts"
            )
        else:
            step = MAX_TRANSACTION_ITEMS - 1
            pieces += [(None, writes[i : i + step]) for i in range(0, len(writes), step)]
    out: list[list[_Group]] = []
    current: list[_Group] = []
    for piece in pieces:
        if current and sum(size(g) for g in current) + size(piece) > MAX_TRANSACTION_ITEMS:
            out.append(current)
            current = []
        current.append(piece)
    if current:
        out.append(current)
    return out
