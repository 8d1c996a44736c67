"""Registry operations: every write goes to DynamoDB first (conditional), then to the mirror."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.transactions import TransactWrite

from atlas.errors import Conflict, NotFound, PreconditionFailed, Unavailable, ValidationFailed
from atlas.registry.mirror import Mirror, NullMirror
from atlas.registry.models import Models
from atlas.registry.records import HealthCheck, Instance, Page, Service, instance_id

log = logging.getLogger(__name__)

MAX_RACE_RETRIES = 5
SERVICE_FIELDS = ("description", "owner", "port", "health_check", "tags")
INSTANCE_FIELDS = ("enabled", "weight", "zone", "labels", "disabled_reason")


def utcnow() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _conditional(exc: PynamoDBException) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


@contextmanager
def _store(action: str) -> Iterator[None]:
    """Turn DynamoDB failures that are not ours to explain into 503s."""
    try:
        yield
    except PynamoDBException as exc:
        log.warning("dynamodb error while %s: %s", action, exc.__class__.__name__)
        raise Unavailable(
            f"DynamoDB did not complete {action}; retry the request (it is safe to repeat)"
        ) from exc


def encode_cursor(key: Mapping[str, Any]) -> str:
    """Encode a DynamoDB key as an opaque pagination cursor."""
    raw = json.dumps(key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, key_names: tuple[str, ...]) -> dict[str, Any]:
    """Decode a cursor made by encode_cursor for a table with these key attributes."""
    bad = ValidationFailed("invalid pagination cursor", {"cursor": ["Not a cursor Atlas issued."]})
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not isinstance(key, dict) or set(key) != set(key_names):
        raise bad
    for value in key.values():
        if not (
            isinstance(value, dict)
            and set(value) == {"S"}
            and isinstance(value["S"], str)
            and value["S"]
        ):
            raise bad
    return key


class Registry:
    """Services, instances and hosts of one realm."""

    def __init__(
        self,
        models: Models,
        mirror: Mirror | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.models = models
        self.mirror: Mirror = mirror or NullMirror()
        self.clock = clock

    # ----------------------------------------------------------------- records

    @staticmethod
    def service_record(m: Any) -> Service:
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
            tags=tuple(m.tags or ()),
            version=int(m.version),
            created_at=m.created_at,
            updated_at=m.updated_at,
            config_version=int(m.config_version or 0),
            deleting=bool(m.deleting),
        )

    @staticmethod
    def instance_record(m: Any) -> Instance:
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

    def _now(self) -> str:
        return _iso(self.clock())

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
        return self._mirror(
            "instance_changed", self.mirror.instance_changed, service, iid, record, prepared
        )

    def _mirror(self, action: str, fn: Callable[..., int | None], *args: Any) -> int | None:
        # DynamoDB already has the write; a mirror failure is repaired by the reconciler.
        # Returns the zxid that published the change (None: not mirrored now).
        try:
            return fn(*args)
        except Exception:
            log.exception("mirror %s failed; the reconciler will repair it", action)
            return None

    # ---------------------------------------------------------------- services

    def _load_service(self, name: str) -> Any:
        with _store("reading a service"):
            try:
                return self.models.Service.get(name, consistent_read=True)
            except self.models.Service.DoesNotExist:
                raise NotFound(f"service {name!r} does not exist") from None

    def get_service(self, name: str) -> Service:
        """Return one service or raise NotFound."""
        return self.service_record(self._load_service(name))

    def create_service(self, data: Mapping[str, Any]) -> Service:
        """Create a service; 409 if the name is taken."""
        now = self._now()
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
        )
        self._set_health_check(m, data.get("health_check"))
        with _store("creating the service"):
            try:
                m.save()
            except PynamoDBException as exc:
                if _conditional(exc):
                    raise Conflict(
                        f"service {data['name']!r} already exists", {"name": ["Already exists."]}
                    ) from None
                raise
        record = self.service_record(m)
        self._mirror("put_service", self.mirror.put_service, record)
        return record

    @staticmethod
    def _set_health_check(m: Any, hc: Mapping[str, Any] | None) -> None:
        if hc is None:
            m.health_check = None
            return
        attr = type(m).health_check.__class__
        m.health_check = attr(
            path=hc["path"], interval_s=hc.get("interval_s", 10), timeout_s=hc.get("timeout_s", 2)
        )

    def list_services(self, limit: int, cursor: str | None = None) -> Page:
        """One page of services, in table order."""
        start = decode_cursor(cursor, ("name",)) if cursor else None
        with _store("listing services"):
            items = list(
                self.models.Service.scan(
                    limit=limit + 1,
                    page_size=limit + 1,
                    last_evaluated_key=start,
                    consistent_read=True,
                )
            )
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = encode_cursor({"name": {"S": items[-1].name}})
        return Page([self.service_record(m) for m in items], next_cursor)

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
                    hc = type(attr)(
                        path=value["path"],
                        interval_s=value.get("interval_s", 10),
                        timeout_s=value.get("timeout_s", 2),
                    )
                    actions.append(attr.set(hc))
            elif key == "tags":
                actions.append(attr.set(list(value or [])))
            elif key in ("description", "owner"):
                actions.append(attr.set(value or ""))
            elif value is None:
                actions.append(attr.remove())
            else:
                actions.append(attr.set(value))
        actions += [model.updated_at.set(self._now()), model.version.add(1)]
        condition = model.name.exists() & (model.deleting == False)  # noqa: E712
        if if_match is not None:
            condition &= model.version == if_match
        raw: dict[str, Any] | None = None
        for _ in range(MAX_RACE_RETRIES):
            with _store("updating the service"):
                try:
                    raw = model._get_connection().update_item(
                        name, actions=actions, condition=condition, return_values="ALL_NEW"
                    )
                    break
                except PynamoDBException as exc:
                    if not _conditional(exc):
                        raise
            current = self._load_service(name)  # NotFound if it is gone
            if current.deleting:
                raise Conflict(f"service {name!r} is being deleted")
            if if_match is not None and current.version != if_match:
                raise PreconditionFailed(
                    f"service {name!r} is at version {current.version}, not {if_match}"
                )
            # A plain DELETE marked the service for a moment and let go: try again.
        if raw is None:
            raise Conflict(f"service {name!r} kept changing; retry")
        record = self.service_record(model.from_raw_data(raw["Attributes"]))
        self._mirror("put_service", self.mirror.put_service, record)
        return record

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
        with _store("marking the service"):
            try:
                svc._get_connection().update_item(
                    name,
                    actions=[svc.deleting.set(True), svc.deleting_by.set(owner)],
                    condition=condition,
                )
            except PynamoDBException as exc:
                if not _conditional(exc):
                    raise
                current = self._load_service(name)
                if current.deleting:
                    raise Conflict(f"service {name!r} is being deleted") from None
                raise PreconditionFailed(f"service {name!r} changed concurrently") from None

    def _unmark_deleting(self, name: str, owner: str) -> None:
        """Clear `deleting` if this DELETE still owns the mark (a cascade may have taken it)."""
        svc = self.models.Service
        with _store("unmarking the service"):
            try:
                svc._get_connection().update_item(
                    name,
                    actions=[svc.deleting.set(False), svc.deleting_by.remove()],
                    condition=svc.deleting_by == owner,
                )
            except PynamoDBException as exc:
                if not _conditional(exc):
                    raise

    def has_children(self, name: str) -> bool:
        """True while the service has instances or config keys that are not deleted."""
        with _store("checking the service's instances"):
            if next(iter(self.models.Instance.query(name, limit=1, page_size=1)), None) is not None:
                return True
        with _store("checking the service's config"):
            return any(not m.deleted for m in self.models.Config.query(name, consistent_read=True))

    def _purge_config_and_tokens(self, name: str) -> None:
        # Config history and tokens go with the service: a later service of the same name
        # must not inherit old secrets or accept old tokens.
        with _store("deleting the service's config"):
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
        with _store("deleting the service's tokens"):
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
        with _store("deleting the service's instances"):
            for inst in self.models.Instance.query(name, consistent_read=True):
                try:
                    with TransactWrite(connection=svc._get_connection().connection) as tx:
                        tx.condition_check(svc, name, condition=owned)
                        tx.delete(inst, add_version_condition=False)
                except TransactWriteError as exc:
                    if (_cancellation_codes(exc) or [None])[0] == "ConditionalCheckFailed":
                        return  # another DELETE took over, or this service is a new one
                    raise
        if not self._owns(name, owner):
            return
        self._purge_config_and_tokens(name)
        with _store("deleting the service"):
            try:
                svc(name).delete(condition=owned, add_version_condition=False)
            except PynamoDBException as exc:
                if _conditional(exc):
                    return
                raise
        # The tokens index is eventually consistent: sweep once more, now that no token can be
        # issued for this name (unless it was created again meanwhile).
        if self.find_service(name) is None:
            self._purge_config_and_tokens(name)
        self._mirror("delete_service", self.mirror.delete_service, name)

    def _owns(self, name: str, owner: str) -> bool:
        """True while the service exists and its `deleting` mark is this DELETE's."""
        with _store("reading a service"):
            try:
                m = self.models.Service.get(name, consistent_read=True)
            except self.models.Service.DoesNotExist:
                return False
        return bool(m.deleting_by == owner)

    # --------------------------------------------------------------- instances

    def _get_instance_model(self, service: str, iid: str) -> Any | None:
        with _store("reading an instance"):
            try:
                return self.models.Instance.get(service, iid, consistent_read=True)
            except self.models.Instance.DoesNotExist:
                return None

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
        for _ in range(MAX_RACE_RETRIES):
            existing = self._get_instance_model(service, iid)
            if existing is not None and if_none_match:
                raise PreconditionFailed(f"instance {iid} already exists")
            if if_match is not None and (existing is None or int(existing.version) != if_match):
                raise PreconditionFailed(f"instance {iid} is not at version {if_match}")
            now = self._now()
            enabled = bool(data.get("enabled", True))
            m = self.models.Instance(
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
            )
            if existing is not None:
                m.version = existing.version
            prepared = self._prepare(service, iid)
            try:
                with (
                    _store("attaching the instance"),
                    TransactWrite(connection=svc._get_connection().connection) as tx,
                ):
                    tx.condition_check(
                        svc,
                        service,
                        condition=svc.name.exists() & (svc.deleting == False),  # noqa: E712
                    )
                    tx.save(m)
            except Unavailable as exc:
                reasons = _cancellation_codes(exc.__cause__)
                if reasons is None:
                    raise
                if reasons[0] == "ConditionalCheckFailed":
                    current = self._load_service(service)  # raises NotFound if gone
                    if current.deleting:
                        raise Conflict(f"service {service!r} is being deleted") from None
                    continue
                if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                    if if_match is not None or if_none_match:
                        raise PreconditionFailed(f"instance {iid} changed concurrently") from None
                    continue
                raise
            record = self.instance_record(m)
            self._instance_changed(service, iid, record, prepared)
            return record, existing is None
        raise Conflict(f"instance {iid} kept changing; retry")

    def list_instances(self, service: str, limit: int, cursor: str | None = None) -> Page:
        """One page of a service's instances, ordered by id."""
        start = decode_cursor(cursor, ("service", "instance_id")) if cursor else None
        if start is not None and start["service"]["S"] != service:
            raise ValidationFailed(
                "cursor belongs to another listing", {"cursor": ["Not a cursor of this listing."]}
            )
        with _store("listing instances"):
            items = list(
                self.models.Instance.query(
                    service,
                    limit=limit + 1,
                    page_size=limit + 1,
                    last_evaluated_key=start,
                    consistent_read=True,
                )
            )
        if not items:
            self._load_service(service)  # an empty page of a missing service is a 404
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = encode_cursor(
                {"service": {"S": service}, "instance_id": {"S": items[-1].instance_id}}
            )
        return Page([self.instance_record(m) for m in items], next_cursor)

    def all_instances(self, service: str) -> list[Instance]:
        """Every instance of a service (for the mirror)."""
        with _store("listing instances"):
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
        actions += [model.updated_at.set(self._now()), model.version.add(1)]
        condition = model.service.exists()
        if if_match is not None:
            condition &= model.version == if_match
        prepared = self._prepare(service, iid)
        with _store("updating the instance"):
            try:
                raw = model._get_connection().update_item(
                    service, iid, actions=actions, condition=condition, return_values="ALL_NEW"
                )
            except PynamoDBException as exc:
                if not _conditional(exc):
                    raise
                if self._get_instance_model(service, iid) is None:
                    self._load_service(service)
                    raise NotFound(f"instance {iid} of {service!r} does not exist") from None
                raise PreconditionFailed(f"instance {iid} is not at version {if_match}") from None
        record = self.instance_record(model.from_raw_data(raw["Attributes"]))
        self._instance_changed(service, iid, record, prepared)
        return record

    def _modify_instance_read_write(
        self,
        service: str,
        iid: str,
        changes: Mapping[str, Any],
        if_match: int | None = None,
    ) -> Instance:
        for _ in range(MAX_RACE_RETRIES):
            m = self._get_instance_model(service, iid)
            if m is None:
                self._load_service(service)
                raise NotFound(f"instance {iid} of {service!r} does not exist")
            if if_match is not None and int(m.version) != if_match:
                raise PreconditionFailed(f"instance {iid} is not at version {if_match}")
            for key in INSTANCE_FIELDS:
                if key in changes:
                    setattr(m, key, dict(changes[key] or {}) if key == "labels" else changes[key])
            if m.enabled:
                m.disabled_reason = None
            m.updated_at = self._now()
            prepared = self._prepare(service, iid)
            with _store("updating the instance"):
                try:
                    m.save(condition=self.models.Instance.service.exists())
                except PynamoDBException as exc:
                    if not _conditional(exc):
                        raise
                    if if_match is not None:
                        raise PreconditionFailed(f"instance {iid} changed concurrently") from None
                    continue
            record = self.instance_record(m)
            self._instance_changed(service, iid, record, prepared)
            return record
        raise Conflict(f"instance {iid} kept changing; retry")

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
        with _store("detaching the instance"):
            try:
                m.delete(add_version_condition=if_match is not None)
            except PynamoDBException as exc:
                if _conditional(exc):
                    raise PreconditionFailed(f"instance {iid} changed concurrently") from None
                raise
        self._instance_changed(service, iid, None, prepared)

    # ------------------------------------------------------------------- hosts

    def host_instances(self, host: str) -> list[Instance]:
        """Every instance on a host, across services (a GSI: eventually consistent)."""
        with _store("listing the host's instances"):
            return [self.instance_record(m) for m in self.models.Instance.by_host.query(host)]

    def set_host_enabled(
        self, host: str, enabled: bool, reason: str | None = None
    ) -> list[Instance]:
        """Enable or disable every instance on a host; returns them as stored."""
        changes: dict[str, Any] = {"enabled": enabled}
        if not enabled:
            changes["disabled_reason"] = reason or "host disabled"
        out = []
        for inst in self.host_instances(host):
            if inst.enabled == enabled and (enabled or inst.disabled_reason):
                out.append(inst)
                continue
            try:
                out.append(self._modify_instance(inst.service, inst.id, changes))
            except NotFound:
                continue  # detached meanwhile
        return out

    # ------------------------------------------------------- mirror's reads

    def find_service(self, name: str) -> Service | None:
        """The service as stored now (consistent read), or None."""
        with _store("reading a service"):
            try:
                return self.service_record(self.models.Service.get(name, consistent_read=True))
            except self.models.Service.DoesNotExist:
                return None

    def find_instance(self, service: str, iid: str) -> Instance | None:
        """The instance as stored now (consistent read), or None."""
        m = self._get_instance_model(service, iid)
        return self.instance_record(m) if m is not None else None

    def scan_services(self) -> list[Service]:
        """Every service of the realm (consistent scan)."""
        with _store("scanning services"):
            return [self.service_record(m) for m in self.models.Service.scan(consistent_read=True)]

    def iter_instances(self) -> Iterator[Instance]:
        """Every instance of the realm, streamed in scan order (consistent scan)."""
        with _store("scanning instances"):
            for m in self.models.Instance.scan(consistent_read=True):
                yield self.instance_record(m)

    def scan_instances(self) -> dict[str, list[Instance]]:
        """Every instance of the realm, grouped by service (consistent scan)."""
        out: dict[str, list[Instance]] = {}
        for inst in self.iter_instances():
            out.setdefault(inst.service, []).append(inst)
        return out

    # ------------------------------------------------------------------ health

    def check_store(self) -> None:
        """Raise Unavailable unless every table answers."""
        with _store("the readiness check"):
            for model in self.models.all():
                model.describe_table()


def _cancellation_codes(exc: BaseException | None) -> list[str | None] | None:
    if not isinstance(exc, TransactWriteError):
        return None
    if exc.cause_response_code != "TransactionCanceledException":
        return None
    return [r.code if r is not None else None for r in exc.cancellation_reasons]
