"""Registry operations: every write goes to DynamoDB first (conditional), then to the mirror."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from datetime import datetime
from typing import Any

from atlas.errors import Conflict, NotFound, PreconditionFailed
from atlas.registry.mirror import Mirror, NullMirror
from atlas.registry.models import HealthCheckAttribute, InstanceModel, Models, ServiceModel
from atlas.registry.records import (
    HealthCheck,
    HostChange,
    Instance,
    Page,
    Service,
    instance_id,
)
from atlas.registry.store import (
    ConditionFailed,
    CursorKey,
    ScanPolicy,
    Store,
    StoreMetrics,
    TransactionCanceled,
    race_retries,
    utcnow,
)

log = logging.getLogger(__name__)

SERVICE_FIELDS = ("description", "owner", "port", "health_check", "tags")
INSTANCE_FIELDS = ("enabled", "weight", "zone", "labels", "disabled_reason")
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

    def put_instance(
        self,
        service: str,
        host: str,
        port: int,
        data: Mapping[str, Any],
        if_match: int | None = None,
        if_none_match: bool = False,
    ) -> tuple[Instance, bool]:
        """Attach or replace an instance; returns (record, created)."""
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
                created_at=existing.created_at if existing is not None else now,
                updated_at=now,
                version=int(existing.version) + 1 if existing is not None else 1,
            )
            unchanged = (
                model.instance_id.does_not_exist()
                if existing is None
                else model.version == existing.version
            )
            prepared = self._prepare(service, iid)
            try:
                with self.store.transaction("attaching the instance") as tx:
                    tx.check(
                        "service",
                        svc,
                        service,
                        condition=svc.live(),
                    )
                    tx.save("instance", m, condition=unchanged)
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
    ) -> Instance:
        if "disabled_reason" in changes and "enabled" not in changes:
            # Whether the reason sticks depends on the stored `enabled`: read, then write.
            return self._modify_instance_read_write(service, iid, changes, if_match)
        model = self.models.Instance
        actions: list[Any] = []
        clears_reason = changes.get("enabled") is True
        for key in INSTANCE_FIELDS:
            if key not in changes or (key == "disabled_reason" and clears_reason):
                continue
            attr = getattr(model, key)
            value = changes[key]
            if key == "labels":
                actions.append(attr.set(dict(value or {})))
            elif value is None:
                actions.append(attr.remove())
            else:
                actions.append(attr.set(value))
        if clears_reason:
            actions.append(model.disabled_reason.remove())
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
    ) -> Instance:
        model = self.models.Instance
        for _ in race_retries(f"instance {iid}"):
            m = self._get_instance_model(service, iid)
            if m is None:
                self._load_service(service)
                raise NotFound(f"instance {iid} of {service!r} does not exist")
            read = int(m.version)
            if if_match is not None and read != if_match:
                raise PreconditionFailed(f"instance {iid} is not at version {if_match}")
            for key in INSTANCE_FIELDS:
                if key in changes:
                    setattr(m, key, dict(changes[key] or {}) if key == "labels" else changes[key])
            if m.enabled:
                m.disabled_reason = None
            m.updated_at = self.now()
            m.version = read + 1
            prepared = self._prepare(service, iid)
            try:
                self.store.put(
                    m,
                    action="updating the instance",
                    condition=model.service.exists() & (model.version == read),
                )
            except ConditionFailed:
                if if_match is not None:
                    raise PreconditionFailed(f"instance {iid} changed concurrently") from None
                continue
            record = self.instance_record(m)
            self._instance_changed(service, iid, record, prepared)
            return record
        raise AssertionError("unreachable: race_retries raises when the attempts are spent")

    def update_instance(
        self,
        service: str,
        host: str,
        port: int,
        changes: Mapping[str, Any],
        if_match: int | None = None,
    ) -> Instance:
        """Partially update an instance (enable/disable, weight, zone, labels)."""
        return self._modify_instance(service, instance_id(host, port), changes, if_match)

    def delete_instance(
        self, service: str, host: str, port: int, if_match: int | None = None
    ) -> None:
        """Detach an instance."""
        iid = instance_id(host, port)
        m = self._get_instance_model(service, iid)
        if m is None:
            self._load_service(service)
            raise NotFound(f"instance {iid} of {service!r} does not exist")
        if if_match is not None and int(m.version) != if_match:
            raise PreconditionFailed(f"instance {iid} is at version {m.version}, not {if_match}")
        prepared = self._prepare(service, iid)
        try:
            self.store.delete(
                m,
                action="detaching the instance",
                condition=self.models.Instance.version == m.version
                if if_match is not None
                else None,
            )
        except ConditionFailed:
            raise PreconditionFailed(f"instance {iid} changed concurrently") from None
        self._instance_changed(service, iid, None, prepared)

    # ------------------------------------------------------------------- hosts

    def host_instances(self, host: str) -> list[Instance]:
        """Every instance on a host, across services (a GSI: eventually consistent)."""
        with self.store.operation("listing the host's instances"):
            return [self.instance_record(m) for m in self.models.Instance.by_host.query(host)]

    def set_host_enabled(
        self, host: str, enabled: bool, reason: str | None = None
    ) -> list[Instance]:
        """Enable or disable every instance on a host; returns them as stored."""
        return self.change_host(host, enabled, reason).items

    def change_host(self, host: str, enabled: bool, reason: str | None = None) -> HostChange:
        """Enable or disable every instance on a host; says which it changed and which it left.

        A disable records its reason (default "host disabled") on every instance it disables,
        and on one that was disabled without a reason; an instance already disabled with a
        reason of its own keeps it and is left alone. An enable enables every instance.
        """
        changes: dict[str, Any] = {"enabled": enabled}
        if not enabled:
            changes["disabled_reason"] = reason or "host disabled"
        items: list[Instance] = []
        changed: list[Instance] = []
        left: list[Instance] = []
        for inst in self.host_instances(host):
            if inst.enabled == enabled and (enabled or inst.disabled_reason):
                items.append(inst)
                left.append(inst)
                continue
            try:
                stored = self._modify_instance(inst.service, inst.id, changes)
            except NotFound:
                continue  # detached meanwhile
            items.append(stored)
            changed.append(stored)
        return HostChange(items, changed, left)

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
