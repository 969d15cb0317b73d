"""The fake API server's storage: objects, resource versions, history, watchers, write semantics.

Everything here is synchronous and runs on the event loop thread, so a write and the fan-out of its
watch event happen in one step, exactly once, in resourceVersion order.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import re
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from .patching import (
    PatchError,
    Path,
    apply_merge,
    changed_paths,
    delete_path,
    fields_from_v1,
    fields_to_v1,
    get_path,
    json_patch,
    leaf_paths,
    merge_patch,
    render_path,
    strategic_merge_patch,
)
from .resources import CRD_RESOURCE, ResourceType, crd_object
from .selectors import (
    FieldRequirement,
    Requirement,
    SelectorError,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MICROTIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_SYSTEM_META = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "resourceVersion",
    "selfLink",
)
_TRACKED_META = ("labels", "annotations", "finalizers", "ownerReferences")


class ApiError(Exception):
    """A failure the server reports as a ``Status`` object with an HTTP code."""

    def __init__(
        self, code: int, reason: str, message: str, details: Obj | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def status(self) -> Obj:
        st: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details = dict(self.details or {})
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        if details:
            st["details"] = details
        return st


def _details(rtype: ResourceType, name: str) -> Obj:
    d: Obj = {"name": name, "kind": rtype.plural}
    if rtype.group:
        d["group"] = rtype.group
    return d


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rtype.group_resource} "{name}" not found', _details(rtype, name))


def conflict(rtype: ResourceType, name: str, why: str = "") -> ApiError:
    msg = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rtype.group_resource} "{name}": {msg}',
        _details(rtype, name),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(rtype: ResourceType, name: str, field_path: str, why: str) -> ApiError:
    kind = rtype.kind if not rtype.group else f"{rtype.kind}.{rtype.group}"
    details: Obj = {
        "name": name,
        "kind": rtype.kind,
        "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field_path}],
    }
    if rtype.group:
        details["group"] = rtype.group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {field_path}: {why}', details)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def _now_str(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class Event:
    """One committed change; its encoded watch lines are cached per (type, apiVersion)."""

    type: str  # ADDED | MODIFIED | DELETED
    rv: int
    obj: Obj
    old: Obj | None
    _wire: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def line(self, etype: str, api_version: str) -> bytes:
        cached = self._wire.get((etype, api_version))
        if cached is None:
            payload = {"type": etype, "object": {**self.obj, "apiVersion": api_version}}
            cached = (json.dumps(payload, separators=(",", ":")) + "\n").encode()
            self._wire[(etype, api_version)] = cached
        return cached


# Items a watch handler takes from its queue.
@dataclass(frozen=True)
class WatchLine:
    data: bytes


@dataclass(frozen=True)
class WatchBookmark:
    rv: int | None  # None: the store's current resourceVersion when written
    initial_events_end: bool = False


@dataclass(frozen=True)
class WatchEnd:
    abort: bool = False
    error: Obj | None = None  # a Status to send as an ERROR event before ending


WatchItem = WatchLine | WatchBookmark | WatchEnd


@dataclass(eq=False)
class Watcher:
    """One open watch: its filter and the queue its HTTP handler drains."""

    rtype: ResourceType
    version: str
    namespace: str | None
    labels: tuple[Requirement, ...]
    fields: tuple[FieldRequirement, ...]
    bookmarks: bool
    queue_limit: int
    queue: asyncio.Queue[WatchItem] = field(default_factory=asyncio.Queue)
    closed: bool = False
    events_sent: int = 0

    @property
    def api_version(self) -> str:
        return self.rtype.api_version(self.version)

    def selects(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)

    def push(self, item: WatchItem) -> None:
        if self.closed:
            return
        if isinstance(item, WatchEnd):
            self.closed = True
        elif self.queue.qsize() >= self.queue_limit:
            # a real server terminates watchers that cannot keep up; the client re-watches
            self.closed = True
            item = WatchEnd()
        self.queue.put_nowait(item)

    def offer(self, ev: Event) -> None:
        """Queue ``ev`` as this watcher sees it: selector transitions turn into ADDED/DELETED."""
        new_in = ev.type != "DELETED" and self.selects(ev.obj)
        old_in = self.selects(ev.old) if ev.old is not None else False
        if ev.type == "DELETED":
            etype = "DELETED" if old_in else ""
        elif new_in and old_in:
            etype = "MODIFIED"
        elif new_in:
            etype = "ADDED"
        elif old_in:
            etype = "DELETED"
        else:
            etype = ""
        if etype:
            self.push(WatchLine(ev.line(etype, self.api_version)))


@dataclass
class Collection:
    rtype: ResourceType
    objects: dict[Key, Obj] = field(default_factory=dict)
    history: deque[Event] = field(default_factory=deque)
    compacted_rv: int = 0  # events with rv <= this may be missing from history
    watchers: set[Watcher] = field(default_factory=set)


@dataclass
class _Manager:
    manager: str
    operation: str
    subresource: str
    api_version: str
    time: str
    fields: set[Path]


def _decode_managed(obj: Obj) -> list[_Manager]:
    out = []
    for e in obj.get("metadata", {}).get("managedFields") or []:
        out.append(
            _Manager(
                e.get("manager", ""),
                e.get("operation", ""),
                e.get("subresource", ""),
                e.get("apiVersion", ""),
                e.get("time", ""),
                fields_from_v1(e.get("fieldsV1") or {}),
            )
        )
    return out


def _encode_managed(entries: list[_Manager]) -> list[Obj]:
    out = []
    for e in entries:
        if not e.fields:
            continue
        entry: Obj = {
            "manager": e.manager,
            "operation": e.operation,
            "apiVersion": e.api_version,
            "time": e.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_to_v1(sorted(e.fields)),
        }
        if e.subresource:
            entry["subresource"] = e.subresource
        out.append(entry)
    return out


def _without_times(managed: list[Obj]) -> list[Obj]:
    return [{k: v for k, v in e.items() if k != "time"} for e in managed]


def _comparable(obj: Obj) -> Obj:
    md = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    md["managedFields"] = _without_times(obj.get("metadata", {}).get("managedFields") or [])
    return {**obj, "metadata": md}


def _spec_part(obj: Obj, rtype: ResourceType) -> Obj:
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rtype.status_subresource else set())
    return {k: v for k, v in obj.items() if k not in skip}


def scoped(obj: Obj, rtype: ResourceType, subresource: str) -> Obj:
    """The part of an object a write to ``subresource`` ("" = main resource) may change and own."""
    if subresource == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    out = {
        k: v
        for k, v in obj.items()
        if k not in ("apiVersion", "kind", "metadata") and not (k == "status" and rtype.status_subresource)
    }
    md = {k: v for k, v in (obj.get("metadata") or {}).items() if k in _TRACKED_META}
    if md:
        out["metadata"] = md
    return out


def parse_bool(value: str | None, name: str) -> bool | None:
    """Go's strconv.ParseBool, which the API server uses for boolean query parameters."""
    if value is None:
        return None
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise bad_request(f'invalid value for {name}: strconv.ParseBool: parsing "{value}": invalid syntax')


def parse_rv(value: str | None) -> int | None:
    if value in (None, ""):
        return None
    assert value is not None
    try:
        n = int(value)
    except ValueError:
        raise bad_request(
            f'invalid resource version: strconv.ParseUint: parsing "{value}": invalid syntax'
        ) from None
    if n < 0:
        raise bad_request(f"invalid resource version: {value}")
    return n


class Store:
    """Objects of every registered kind with one global, monotonically increasing resourceVersion."""

    def __init__(
        self,
        resources: tuple[ResourceType, ...],
        *,
        history_limit: int = 1000,
        queue_limit: int = 10000,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.rv = 100
        self.history_limit = history_limit
        self.queue_limit = queue_limit
        self.now = now or (lambda: datetime.now(UTC))
        self.types: dict[Key, ResourceType] = {}
        self.colls: dict[Key, Collection] = {}
        self.installed: set[Key] = set()
        self.register(CRD_RESOURCE, installed=True)
        for r in resources:
            self.register(r, installed=True)

    # ------------------------------------------------------------ registry

    def register(self, rtype: ResourceType, *, installed: bool = True) -> None:
        self.types[rtype.key] = rtype
        self.colls.setdefault(rtype.key, Collection(rtype))
        self.colls[rtype.key].rtype = rtype
        if installed:
            self.install(rtype.key)

    def install(self, key: Key) -> bool:
        if key in self.installed:
            return False
        rtype = self.types[key]
        coll = self.colls[key]
        coll.compacted_rv = self.rv  # storage starts now: older resource versions are too old
        self.installed.add(key)
        if not rtype.builtin:
            self.create(CRD_RESOURCE, None, crd_object(rtype), via_api=False)
        return True

    def uninstall(self, key: Key) -> bool:
        if key not in self.installed:
            return False
        rtype = self.types[key]
        if rtype.builtin:
            raise ValueError(f"{rtype.group_resource} is built in and cannot be uninstalled")
        coll = self.colls[key]
        for w in list(coll.watchers):
            w.push(WatchEnd())
        coll.watchers.clear()
        coll.objects.clear()
        coll.history.clear()
        self.installed.discard(key)
        self.delete(CRD_RESOURCE, None, f"{rtype.plural}.{rtype.group}", via_api=False)
        coll.compacted_rv = self.rv
        return True

    def served(self, group: str, version: str, plural: str) -> ResourceType | None:
        rtype = self.types.get((group, plural))
        if rtype is None or rtype.key not in self.installed or version not in rtype.versions:
            return None
        return rtype

    def served_types(self) -> list[ResourceType]:
        return [self.types[k] for k in sorted(self.installed)]

    def type_for(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for rtype in self.types.values():
            if rtype.group == group and rtype.kind == kind and version in rtype.versions:
                if rtype.key not in self.installed:
                    raise ApiError(404, "NotFound", f"{api_version} {kind} is not installed on the server")
                return rtype
        raise ApiError(
            404, "NotFound", f"no resource registered for apiVersion {api_version!r} kind {kind!r}"
        )

    # ------------------------------------------------------------ helpers

    def _coll(self, rtype: ResourceType) -> Collection:
        return self.colls[rtype.key]

    def present(self, obj: Obj, rtype: ResourceType, version: str | None) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = rtype.api_version(version)
        return out

    def _commit(self, coll: Collection, key: Key, etype: str, new: Obj | None, old: Obj | None) -> Obj:
        self.rv += 1
        if etype == "DELETED":
            assert old is not None
            final = copy.deepcopy(new if new is not None else old)
            final["metadata"]["resourceVersion"] = str(self.rv)
            coll.objects.pop(key, None)
            ev = Event(etype, self.rv, final, old)
        else:
            assert new is not None
            new["metadata"]["resourceVersion"] = str(self.rv)
            coll.objects[key] = new
            ev = Event(etype, self.rv, new, old)
        coll.history.append(ev)
        while len(coll.history) > self.history_limit:
            coll.compacted_rv = coll.history.popleft().rv
        for w in list(coll.watchers):
            w.offer(ev)
        return ev.obj

    def _check_namespace(self, rtype: ResourceType, namespace: str | None) -> None:
        if rtype.namespaced:
            ns_coll = self.colls[("", "namespaces")]
            if ("", namespace or "") not in ns_coll.objects:
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )

    def _normalise(self, rtype: ResourceType, obj: Obj) -> None:
        """Server-side defaults and canonical forms that a real API server applies on every write."""
        name = obj["metadata"]["name"]
        if rtype.key == ("", "namespaces"):
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if rtype.key == ("coordination.k8s.io", "leases"):
            spec = obj.get("spec") or {}
            for f in ("acquireTime", "renewTime"):
                val = spec.get(f)
                if val is None:
                    continue
                if not isinstance(val, str) or not _MICROTIME_RE.match(val):
                    raise bad_request(
                        f'Lease in version "v1" cannot be handled as a Lease: '
                        f'parsing time "{val}" as RFC3339 micro time failed (spec.{f})'
                    )
                parsed = datetime.fromisoformat(val.replace("Z", "+00:00"))
                spec[f] = parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # ------------------------------------------------------------ reads

    def get(self, rtype: ResourceType, namespace: str | None, name: str, version: str | None = None) -> Obj:
        obj = self._coll(rtype).objects.get((namespace or "", name))
        if obj is None:
            raise not_found(rtype, name)
        return self.present(obj, rtype, version)

    def selectors(
        self, rtype: ResourceType, label_selector: str | None, field_selector: str | None
    ) -> tuple[tuple[Requirement, ...], tuple[FieldRequirement, ...]]:
        allowed = {
            "metadata.name",
            *(("metadata.namespace",) if rtype.namespaced else ()),
            *rtype.selectable_fields,
        }
        try:
            return (
                parse_label_selector(label_selector),
                parse_field_selector(
                    field_selector, allowed.__contains__, rtype.group_resource, rtype.builtin
                ),
            )
        except SelectorError as exc:
            raise bad_request(str(exc)) from None

    def _state_at(self, coll: Collection, rv: int) -> dict[Key, Obj]:
        """The collection as it was at ``rv``, rebuilt from history (410 if compacted away)."""
        if rv < coll.compacted_rv:
            raise expired(f"too old resource version: {rv} ({coll.compacted_rv + 1})")
        state = dict(coll.objects)
        for ev in reversed(coll.history):
            if ev.rv <= rv:
                break
            meta = ev.obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if ev.type == "ADDED":
                state.pop(key, None)
            elif ev.old is not None:
                state[key] = ev.old
        return state

    def list_objects(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> Obj:
        coll = self._coll(rtype)
        labels, fields = self.selectors(rtype, label_selector, field_selector)
        start_after = ""
        rv_req = parse_rv(resource_version)
        if continue_token:
            try:
                tok = json.loads(base64.urlsafe_b64decode(continue_token.encode() + b"=="))
                at_rv, start_after = int(tok["rv"]), str(tok["start"])
            except (ValueError, KeyError, TypeError):
                raise bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion "
                    "(version meta.k8s.io/v1)"
                ) from None
            if rv_req:
                raise bad_request("specifying resource version is not allowed when using continue")
            try:
                state = self._state_at(coll, at_rv)
            except ApiError:
                raise expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                ) from None
        elif resource_version_match == "Exact":
            if rv_req is None or rv_req == 0:
                raise bad_request("resourceVersionMatch=Exact requires a non-zero resourceVersion")
            if rv_req > self.rv:
                raise self._too_large(rv_req)
            at_rv, state = rv_req, self._state_at(coll, rv_req)
        elif resource_version_match not in (None, "", "NotOlderThan"):
            raise bad_request(f"unsupported resourceVersionMatch {resource_version_match!r}")
        else:
            if rv_req is not None and rv_req > self.rv:
                raise self._too_large(rv_req)
            at_rv, state = self.rv, coll.objects
        keys = sorted(k for k in state if f"{k[0]}/{k[1]}" > start_after or not start_after)
        items: list[Obj] = []
        next_start = ""
        remaining = 0
        for n, k in enumerate(keys):
            obj = state[k]
            if namespace is not None and k[0] != namespace:
                continue
            if not (labels_match(labels, obj) and fields_match(fields, obj)):
                continue
            if limit and len(items) >= limit:
                remaining = sum(1 for kk in keys[n:] if namespace is None or kk[0] == namespace) or 1
                break
            item = self.present(obj, rtype, version)
            if rtype.builtin:  # typed lists omit TypeMeta in items; unstructured (CRD) lists keep it
                item.pop("apiVersion", None)
                item.pop("kind", None)
            items.append(item)
            next_start = f"{k[0]}/{k[1]}"
        meta: Obj = {"resourceVersion": str(at_rv)}
        if remaining:
            raw = json.dumps({"v": "meta.k8s.io/v1", "rv": at_rv, "start": next_start + "\x00"})
            meta["continue"] = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
            if not labels and not fields:
                meta["remainingItemCount"] = remaining
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version(version),
            "metadata": meta,
            "items": items,
        }

    def _too_large(self, rv: int) -> ApiError:
        return ApiError(
            504,
            "Timeout",
            f"Too large resource version: {rv}, current: {self.rv}",
            {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]},
            retry_after=1,
        )

    # ------------------------------------------------------------ watch

    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        allow_bookmarks: bool = False,
        send_initial_events: bool | None = None,
    ) -> Watcher:
        """Open a watch; its queue already holds the replayed or initial events."""
        coll = self._coll(rtype)
        labels, fields = self.selectors(rtype, label_selector, field_selector)
        rv_req = parse_rv(resource_version)
        if send_initial_events is not None:
            if not allow_bookmarks or resource_version_match != "NotOlderThan":
                raise ApiError(
                    422,
                    "Invalid",
                    'ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: '
                    "Forbidden: sendInitialEvents is forbidden for watch unless the "
                    "WatchList feature gate is enabled and allowWatchBookmarks is true and "
                    "resourceVersionMatch is NotOlderThan",
                )
        elif resource_version_match:
            raise bad_request(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
            )
        w = Watcher(
            rtype,
            version or rtype.preferred_version,
            namespace,
            labels,
            fields,
            allow_bookmarks,
            self.queue_limit,
        )
        if rv_req is not None and rv_req > self.rv:
            w.push(WatchEnd(error=self._too_large(rv_req).status()))
            return w
        initial = send_initial_events if send_initial_events is not None else not rv_req
        if initial:
            for k in sorted(coll.objects):
                obj = coll.objects[k]
                if w.selects(obj):
                    w.push(WatchLine(Event("ADDED", 0, obj, None).line("ADDED", w.api_version)))
            if send_initial_events:
                w.push(WatchBookmark(self.rv, initial_events_end=True))
        elif rv_req is not None:
            if rv_req < coll.compacted_rv:
                w.push(
                    WatchEnd(
                        error=expired(
                            f"too old resource version: {rv_req} ({coll.compacted_rv + 1})"
                        ).status()
                    )
                )
                return w
            for ev in coll.history:
                if ev.rv > rv_req:
                    w.offer(ev)
        coll.watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        self._coll(w.rtype).watchers.discard(w)

    def watchers(self, group: str | None = None, plural: str | None = None) -> list[Watcher]:
        out: list[Watcher] = []
        for key, coll in self.colls.items():
            if (group is None or key[0] == group) and (plural is None or key[1] == plural):
                out.extend(w for w in coll.watchers if not w.closed)
        return out

    def compact(self) -> int:
        """Forget all history: every resourceVersion older than now becomes too old to watch from."""
        for coll in self.colls.values():
            coll.history.clear()
            coll.compacted_rv = self.rv
        return self.rv

    # ------------------------------------------------------------ writes

    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        version: str | None = None,
        manager: str = "",
        via_api: bool = True,
        dry_run: bool = False,
        managed: list[_Manager] | None = None,
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request was not a JSON object")
        self._check_type_meta(rtype, body, version)
        obj = copy.deepcopy(body)
        md = obj.get("metadata")
        if not isinstance(md, dict):
            md = obj["metadata"] = {}
        name = md.get("name") or ""
        if not name and md.get("generateName"):
            name = md["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        if not name:
            raise invalid(rtype, "", "metadata.name", "Required value: name or generateName is required")
        if not _NAME_RE.match(name) or len(name) > 253:
            raise invalid(
                rtype,
                name,
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 '
                "subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            )
        if rtype.namespaced:
            body_ns = md.get("namespace")
            if namespace is None:
                namespace = body_ns
            elif body_ns and body_ns != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            if not namespace:
                raise bad_request(f"{rtype.kind} {name}: a namespace is required")
            self._check_namespace(rtype, namespace)
        else:
            namespace = None
        if via_api and md.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        key = (namespace or "", name)
        coll = self._coll(rtype)
        if key in coll.objects:
            raise ApiError(
                409, "AlreadyExists", f'{rtype.group_resource} "{name}" already exists', _details(rtype, name)
            )
        now = self.now()
        obj["apiVersion"] = rtype.api_version(rtype.preferred_version)
        obj["kind"] = rtype.kind
        for k in _SYSTEM_META:
            md.pop(k, None)
        md["name"] = name
        if namespace:
            md["namespace"] = namespace
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = _now_str(now)
        md["generation"] = 1
        default_status = rtype.status_default()
        if rtype.key == ("", "namespaces"):
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            default_status = {"phase": "Active"}
        if via_api and rtype.status_subresource:
            obj.pop("status", None)
        if "status" not in obj and default_status is not None:
            obj["status"] = default_status
        self._normalise(rtype, obj)
        if managed is not None:
            md["managedFields"] = _encode_managed(managed)
        elif via_api:
            api_version = rtype.api_version(version)
            fields = leaf_paths(scoped(obj, rtype, ""))
            md["managedFields"] = _encode_managed(
                [_Manager(manager, "Update", "", api_version, _now_str(now), fields)]
            )
        if not md.get("managedFields"):
            md.pop("managedFields", None)
        if dry_run:
            return self.present(obj, rtype, version)
        return self.present(self._commit(coll, key, "ADDED", obj, None), rtype, version)

    def _check_type_meta(self, rtype: ResourceType, body: Obj, version: str | None) -> None:
        kind = body.get("kind")
        api_version = body.get("apiVersion")
        if kind and kind != rtype.kind:
            raise bad_request(
                f'{kind} in version "{api_version}" cannot be handled as a {rtype.kind}: '
                f"the object kind does not match the resource"
            )
        if api_version:
            group, _, v = api_version.rpartition("/")
            if group != rtype.group or v not in rtype.versions:
                raise bad_request(
                    f"the API version in the data ({api_version}) does not match the expected "
                    f"API version ({rtype.api_version(version)})"
                )

    def _existing(self, rtype: ResourceType, namespace: str | None, name: str) -> tuple[Collection, Key, Obj]:
        coll = self._coll(rtype)
        key = ((namespace or "") if rtype.namespaced else "", name)
        old = coll.objects.get(key)
        if old is None:
            raise not_found(rtype, name)
        return coll, key, old

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        version: str | None = None,
        subresource: str = "",
        manager: str = "",
        via_api: bool = True,
        dry_run: bool = False,
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request was not a JSON object")
        self._check_type_meta(rtype, body, version)
        coll, key, old = self._existing(rtype, namespace, name)
        md = body.get("metadata") or {}
        if md.get("name") and md["name"] != name:
            raise bad_request(
                f"the name of the object ({md['name']}) does not match the name on the URL ({name})"
            )
        if rtype.namespaced and md.get("namespace") and md["namespace"] != (namespace or key[0]):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        rv = md.get("resourceVersion")
        if rv:
            if rv != old["metadata"]["resourceVersion"]:
                raise conflict(rtype, name)
        elif via_api and not rtype.builtin:
            raise invalid(
                rtype, name, "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update"
            )
        return self._write(
            coll,
            key,
            old,
            copy.deepcopy(body),
            version=version,
            subresource=subresource,
            manager=manager,
            via_api=via_api,
            dry_run=dry_run,
        )

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        body: bytes,
        *,
        version: str | None = None,
        subresource: str = "",
        manager: str = "",
        force: bool | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Apply a PATCH request; returns the object and whether it was created (apply only)."""
        ct = content_type.split(";")[0].strip().lower()
        if ct == APPLY_PATCH:
            return self.apply(
                rtype,
                namespace,
                name,
                body,
                version=version,
                subresource=subresource,
                manager=manager,
                force=bool(force),
                dry_run=dry_run,
            )
        if force is not None:
            raise ApiError(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not '
                "be specified for non-apply patch",
            )
        accepted = [JSON_PATCH, MERGE_PATCH] + ([STRATEGIC_PATCH] if rtype.builtin else []) + [APPLY_PATCH]
        if ct not in accepted:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(accepted)}",
            )
        try:
            patch = json.loads(body or b"null")
        except ValueError as exc:
            raise bad_request(f"error decoding patch: {exc}") from None
        coll, key, old = self._existing(rtype, namespace, name)
        current = self.present(old, rtype, version)
        try:
            if ct == JSON_PATCH:
                if not isinstance(patch, list):
                    raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
                cand = json_patch(current, patch)
            elif not isinstance(patch, dict):
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rtype.kind} "{name}" is invalid: patch: Invalid value: '
                    f"couldn't get version/kind; json parse error: json: cannot unmarshal "
                    f"{type(patch).__name__} into Go value of type struct",
                )
            elif ct == MERGE_PATCH:
                cand = merge_patch(current, patch)
            else:
                cand = strategic_merge_patch(current, patch)
        except PatchError as exc:
            raise ApiError(
                422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
            ) from None
        if not isinstance(cand, dict):
            raise ApiError(422, "Invalid", "the patch replaced the object with a non-object")
        self._check_type_meta(rtype, cand, version)
        cmd = cand.get("metadata") or {}
        if cmd.get("name") != name:
            raise invalid(rtype, name, "metadata.name", "Invalid value: field is immutable")
        if cmd.get("uid") and cmd["uid"] != old["metadata"]["uid"]:
            raise conflict(
                rtype,
                name,
                f"Precondition failed: UID in precondition: {cmd['uid']}, UID in object "
                f"meta: {old['metadata']['uid']}",
            )
        if cmd.get("resourceVersion") and cmd["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(rtype, name)
        return self._write(
            coll,
            key,
            old,
            cand,
            version=version,
            subresource=subresource,
            manager=manager,
            via_api=True,
            dry_run=dry_run,
        ), False

    def apply(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: bytes,
        *,
        version: str | None = None,
        subresource: str = "",
        manager: str = "",
        force: bool = False,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Server-side apply: merge the applied configuration and track field ownership per manager."""
        try:
            config = yaml.safe_load(body.decode() if body else "")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise bad_request("error decoding YAML: the applied configuration is not an object")
        if not config.get("apiVersion") or not config.get("kind"):
            raise bad_request(
                "error decoding YAML: Object 'Kind' or 'apiVersion' is missing in the applied configuration"
            )
        self._check_type_meta(rtype, config, version)
        cmd = config.get("metadata") or {}
        if cmd.get("name") != name:
            raise bad_request(
                f"the name of the object ({cmd.get('name')}) does not match the name on the URL ({name})"
            )
        if not manager:
            raise ApiError(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                "value: is required for apply patch",
            )
        api_version = rtype.api_version(version)
        now = _now_str(self.now())
        applied = scoped(config, rtype, subresource)
        applied_p = leaf_paths(applied)
        coll = self._coll(rtype)
        key = ((namespace or "") if rtype.namespaced else "", name)
        old = coll.objects.get(key)
        if old is None:
            if subresource:
                raise not_found(rtype, name)
            mine = _Manager(manager, "Apply", "", api_version, now, applied_p)
            return self.create(
                rtype, namespace, config, version=version, manager=manager, dry_run=dry_run, managed=[mine]
            ), True
        if cmd.get("resourceVersion") and cmd["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(rtype, name)
        entries = _decode_managed(old)
        mine_l = [
            e for e in entries if (e.manager, e.operation, e.subresource) == (manager, "Apply", subresource)
        ]
        mine = mine_l[0] if mine_l else _Manager(manager, "Apply", subresource, api_version, now, set())
        if not mine_l:
            entries.append(mine)
        conflicts: list[tuple[str, Path]] = []
        for e in entries:
            if e is mine:
                continue
            for p in sorted(e.fields & applied_p):
                if p[-1] != "." and get_path(old, p) != get_path(applied, p):
                    conflicts.append((e.manager, p))
        if conflicts and not force:
            lines = [f'conflict with "{m}": {render_path(p)}' for m, p in conflicts]
            raise ApiError(
                409,
                "Conflict",
                f"Apply failed with {len(conflicts)} conflict"
                f"{'s' if len(conflicts) > 1 else ''}: " + "; ".join(lines),
                {
                    "causes": [
                        {
                            "reason": "FieldManagerConflict",
                            "message": f'conflict with "{m}"',
                            "field": render_path(p),
                        }
                        for m, p in conflicts
                    ]
                },
            )
        for e in entries:
            if e is not mine:
                e.fields -= {p for _, p in conflicts}
        result = copy.deepcopy(old)
        others: set[Path] = set().union(*(e.fields for e in entries if e is not mine))
        for p in sorted(mine.fields - applied_p - others, key=len, reverse=True):
            delete_path(result, p)
        apply_merge(result, copy.deepcopy(applied))
        if mine.fields != applied_p:
            mine.time = now
        mine.fields = set(applied_p)
        mine.api_version = api_version
        return self._write(
            coll,
            key,
            old,
            result,
            version=version,
            subresource=subresource,
            manager=manager,
            via_api=True,
            dry_run=dry_run,
            managed=entries,
        ), False

    def _write(
        self,
        coll: Collection,
        key: Key,
        old: Obj,
        cand: Obj,
        *,
        version: str | None,
        subresource: str,
        manager: str,
        via_api: bool,
        dry_run: bool,
        managed: list[_Manager] | None = None,
    ) -> Obj:
        """Finish an update: keep what this write may not change, bump generation, commit unless no-op."""
        rtype = coll.rtype
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in cand:
                new["status"] = cand["status"]
            else:
                new.pop("status", None)
        else:
            new = cand
            new["apiVersion"] = rtype.api_version(rtype.preferred_version)
            new["kind"] = rtype.kind
            md = new.get("metadata")
            if not isinstance(md, dict):
                md = new["metadata"] = {}
            for k in _SYSTEM_META:
                if k in old["metadata"]:
                    md[k] = copy.deepcopy(old["metadata"][k])
                else:
                    md.pop(k, None)
            if via_api and rtype.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        self._normalise(rtype, new)
        md = new["metadata"]
        if _spec_part(new, rtype) != _spec_part(old, rtype):
            md["generation"] = int(old["metadata"].get("generation", 1)) + 1
        now = _now_str(self.now())
        if managed is None and via_api:
            managed = _decode_managed(old)
            changed, removed = changed_paths(scoped(old, rtype, subresource), scoped(new, rtype, subresource))
            if changed or removed:
                mine = None
                for e in managed:
                    e.fields -= removed
                    if (e.manager, e.operation, e.subresource) == (manager, "Update", subresource):
                        mine = e
                    else:
                        e.fields -= changed
                if changed:
                    if mine is None:
                        mine = _Manager(
                            manager, "Update", subresource, rtype.api_version(version), now, set()
                        )
                        managed.append(mine)
                    mine.fields |= changed
                    mine.time = now
        if managed is not None:
            md["managedFields"] = _encode_managed(managed)
            if not md["managedFields"]:
                md.pop("managedFields")
        if _comparable(new) == _comparable(old):
            return self.present(old, rtype, version)  # no-op: no new resourceVersion, no event
        if dry_run:
            return self.present(new, rtype, version)
        if md.get("deletionTimestamp") and not md.get("finalizers"):
            return self.present(self._commit(coll, key, "DELETED", new, old), rtype, version)
        return self.present(self._commit(coll, key, "MODIFIED", new, old), rtype, version)

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        options: Obj | None = None,
        *,
        version: str | None = None,
        via_api: bool = True,
        dry_run: bool = False,
    ) -> Obj:
        coll, key, old = self._existing(rtype, namespace, name)
        pre = (options or {}).get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise conflict(
                rtype,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                f"meta: {old['metadata']['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(
                rtype,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{old['metadata']['resourceVersion']}",
            )
        if dry_run:
            return self.present(old, rtype, version)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return self.present(old, rtype, version)
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now_str(self.now())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self.present(self._commit(coll, key, "MODIFIED", new, old), rtype, version)
        return self.present(self._commit(coll, key, "DELETED", None, old), rtype, version)

    def delete_collection(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        listed = self.list_objects(
            rtype, namespace, version=version, label_selector=label_selector, field_selector=field_selector
        )
        items = []
        for item in listed["items"]:
            md = item["metadata"]
            items.append(
                self.delete(rtype, md.get("namespace"), md["name"], version=version, dry_run=dry_run)
            )
        return {**listed, "items": items, "metadata": {"resourceVersion": str(self.rv)}}
