"""An in-process Kubernetes API server that real clients (kubernetes-asyncio) talk to unchanged.

It speaks the JSON wire protocol over HTTP on 127.0.0.1: discovery, list (selectors, limit/continue),
chunked watch streams with bookmarks and 410 ``Expired``, create/update/patch/delete with optimistic
concurrency, the ``status`` subresource, merge/strategic/JSON patch and server-side apply. Tests drive it
through ``FakeApiServer``: seed and change objects, drop or expire watches, inject failures, install and
remove CRD groups at runtime, and inspect every request that reached it.

    async with FakeApiServer(absent_groups=["gateway.networking.k8s.io"]) as api:
        api.create({"apiVersion": "v1", "kind": "Service", "metadata": {...}, "spec": {...}})
        run_code_under_test(kubeconfig=api.kubeconfig_path())   # or: await api.new_client()
        await api.wait_for_watches(1, "services")
        api.install_group("gateway.networking.k8s.io")           # CRDs appear at runtime
        api.compact(); api.drop_watches()                        # clients must relist after 410
        await api.wait_until(lambda: api.find_requests(subresource="status", writes_only=True))

Objects created from the test side (``create``/``update``/``apply``/``delete``) are stored as given,
status included, and produce the same watch events as API writes. Not modelled: namespace deletion
cascading to its objects, admission, defaulting of spec fields, RBAC, TLS and in-cluster config.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml
from aiohttp import web

from .resources import DEFAULT_RESOURCES, ResourceType, version_priority
from .store import (
    ApiError,
    Obj,
    Store,
    WatchBookmark,
    WatchEnd,
    Watcher,
    WatchLine,
    bad_request,
    parse_bool,
)

log = logging.getLogger("kubefake")

SEED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_PLAIN_404 = "404 page not found\n"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, with the outcome."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    content_type: str
    body: str
    status: int
    verb: str = ""  # get list watch create update patch delete deletecollection discovery
    group: str = ""
    version: str = ""
    plural: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str = ""
    field_manager: str = ""
    user_agent: str = ""

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    @property
    def json(self) -> Any:
        """The decoded body (JSON, or YAML for apply patches); None when empty."""
        if not self.body:
            return None
        return yaml.safe_load(self.body) if "yaml" in self.content_type else json.loads(self.body)

    def param(self, name: str) -> str | None:
        return dict(self.query).get(name)


@dataclass
class Fault:
    """An injected failure: matching requests get ``code`` instead of being served."""

    code: int
    reason: str
    message: str
    verb: str | None = None
    group: str | None = None
    plural: str | None = None
    name: str | None = None
    namespace: str | None = None
    subresource: str | None = None
    times: int | None = 1  # None: until cleared
    retry_after: int | None = None
    hits: int = 0

    def matches(self, t: _Target | None, verb: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.verb is not None and self.verb != verb:
            return False
        if t is None:
            return all(
                v is None for v in (self.group, self.plural, self.name, self.namespace, self.subresource)
            )
        return (
            (self.group is None or self.group == t.rtype.group)
            and (self.plural is None or self.plural == t.rtype.plural)
            and (self.name is None or self.name == t.name)
            and (self.namespace is None or self.namespace == t.namespace)
            and (self.subresource is None or self.subresource == t.subresource)
        )


@dataclass(frozen=True)
class _Target:
    rtype: ResourceType
    version: str
    namespace: str | None
    name: str | None
    subresource: str
    legacy_watch: bool


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps(payload, separators=(",", ":")) + "\n"
    return web.Response(
        status=status,
        text=body,
        content_type="application/json",
        headers={"Cache-Control": "no-cache, private", **(headers or {})},
    )


def _status_response(err: ApiError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return _json_response(err.status(), err.code, headers)


class FakeApiServer:
    """A Kubernetes API server for tests. Use as ``async with FakeApiServer() as api:``.

    ``absent_groups`` start uninstalled (as if their CRDs were not applied); ``install_group`` adds them
    later. ``history_limit`` bounds the per-kind event history a watch can resume from;
    ``bookmark_interval`` is how often idle watches that asked for bookmarks get one.
    """

    def __init__(
        self,
        *,
        resources: Iterable[ResourceType] = DEFAULT_RESOURCES,
        absent_groups: Iterable[str] = (),
        history_limit: int = 1000,
        bookmark_interval: float = 1.0,
        token: str | None = "kubefake-token",
        namespaces: Iterable[str] = SEED_NAMESPACES,
        host: str = "127.0.0.1",
    ) -> None:
        self.store = Store(tuple(resources), history_limit=history_limit)
        for group in absent_groups:
            self.uninstall_group(group)
        for ns in namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.bookmark_interval = bookmark_interval
        self.token = token
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.server_errors: list[str] = []  # unexpected exceptions while serving (a bug in the fake)
        self.faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._tmpdir: str | None = None
        self._watch_tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> FakeApiServer:
        app = web.Application(client_max_size=3 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        for w in self.store.watchers():
            w.push(WatchEnd())
        if self._watch_tasks:
            await asyncio.wait(set(self._watch_tasks), timeout=2.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> FakeApiServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def kubeconfig(self, namespace: str = "default") -> Obj:
        user: Obj = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubefake", "cluster": {"server": self.url}}],
            "users": [{"name": "kubefake", "user": user}],
            "contexts": [
                {
                    "name": "kubefake",
                    "context": {"cluster": "kubefake", "user": "kubefake", "namespace": namespace},
                }
            ],
            "current-context": "kubefake",
        }

    def kubeconfig_path(self, namespace: str = "default") -> str:
        """Write a kubeconfig for this server (removed on close) and return its path."""
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="kubefake-")
        path = Path(self._tmpdir) / "kubeconfig"
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace)))
        return str(path)

    async def new_client(self) -> Any:
        """A ``kubernetes_asyncio.client.ApiClient`` configured from ``kubeconfig_path()``; close it."""
        from kubernetes_asyncio import config

        return await config.new_client_from_config(config_file=self.kubeconfig_path())

    # ------------------------------------------------------------ objects (test side, no HTTP)

    def _rtype(self, obj_or_api_version: Obj | str, kind: str | None = None) -> ResourceType:
        if isinstance(obj_or_api_version, dict):
            return self.store.type_for(
                obj_or_api_version.get("apiVersion", ""), obj_or_api_version.get("kind", "")
            )
        assert kind is not None, "kind is required with an apiVersion"
        return self.store.type_for(obj_or_api_version, kind)

    def create(self, obj: Obj) -> Obj:
        """Store a new object as given, status included (like seeding etcd); emits ADDED."""
        rtype = self._rtype(obj)
        return self.store.create(rtype, (obj.get("metadata") or {}).get("namespace"), obj, via_api=False)

    def update(self, obj: Obj) -> Obj:
        """Replace an object as given, status included; a set resourceVersion must be current."""
        rtype = self._rtype(obj)
        md = obj.get("metadata") or {}
        return self.store.update(rtype, md.get("namespace"), md["name"], obj, via_api=False)

    def apply(self, obj: Obj) -> Obj:
        """Create or replace regardless of resourceVersion (no event if nothing changed)."""
        rtype = self._rtype(obj)
        md = obj.get("metadata") or {}
        key = ((md.get("namespace") or "") if rtype.namespaced else "", md.get("name", ""))
        if key not in self.store.colls[rtype.key].objects:
            return self.create(obj)
        body = {**obj, "metadata": {k: v for k, v in md.items() if k != "resourceVersion"}}
        return self.store.update(rtype, md.get("namespace"), md["name"], body, via_api=False)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        rtype = self._rtype(api_version, kind)
        try:
            return self.store.get(rtype, namespace, name, api_version.rpartition("/")[2])
        except ApiError:
            return None

    def list_objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[Obj]:
        rtype = self._rtype(api_version, kind)
        version = api_version.rpartition("/")[2]
        return [
            self.store.present(o, rtype, version)
            for k, o in sorted(self.store.colls[rtype.key].objects.items())
            if namespace is None or k[0] == namespace
        ]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj:
        """Delete (or, with finalizers, mark deleting); emits DELETED (or MODIFIED)."""
        rtype = self._rtype(api_version, kind)
        return self.store.delete(rtype, namespace, name, via_api=False)

    # ------------------------------------------------------------ API groups

    def install_group(self, group: str, kinds: Iterable[str] | None = None) -> list[str]:
        """Install (the CRDs of) a group's kinds, all of them by default; returns the plurals added."""
        want = set(kinds) if kinds is not None else None
        added = []
        for key, rtype in sorted(self.store.types.items()):
            if rtype.group == group and (want is None or rtype.kind in want) and self.store.install(key):
                added.append(rtype.plural)
        return added

    def uninstall_group(self, group: str, kinds: Iterable[str] | None = None) -> list[str]:
        """Remove a group's kinds: their objects go, open watches end, paths answer 404."""
        want = set(kinds) if kinds is not None else None
        removed = []
        for key, rtype in sorted(self.store.types.items()):
            if rtype.group == group and (want is None or rtype.kind in want) and self.store.uninstall(key):
                removed.append(rtype.plural)
        return removed

    def register(self, rtype: ResourceType, *, installed: bool = True) -> None:
        self.store.register(rtype, installed=installed)

    # ------------------------------------------------------------ watch control

    def watch_count(self, plural: str | None = None, group: str | None = None) -> int:
        return len(self.store.watchers(group, plural))

    async def wait_for_watches(
        self, count: int, plural: str | None = None, group: str | None = None, within: float = 5.0
    ) -> None:
        """Wait until at least ``count`` watches are open (on ``plural`` if given)."""
        deadline = time.monotonic() + within
        while self.watch_count(plural, group) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"expected {count} open watches on {plural or 'any kind'}, "
                    f"have {self.watch_count(plural, group)}"
                )
            await asyncio.sleep(0.01)

    def drop_watches(
        self, plural: str | None = None, *, abort: bool = False, group: str | None = None
    ) -> int:
        """End open watches: cleanly (client sees end of stream) or by aborting the connection."""
        ws = self.store.watchers(group, plural)
        for w in ws:
            w.push(WatchEnd(abort=abort))
        return len(ws)

    def compact(self) -> int:
        """Drop all event history: watches resuming from an older resourceVersion get 410 Expired."""
        return self.store.compact()

    def send_bookmarks(self, plural: str | None = None) -> int:
        """Send a BOOKMARK now on every open watch that allows bookmarks."""
        ws = [w for w in self.store.watchers(None, plural) if w.bookmarks]
        for w in ws:
            w.push(WatchBookmark(self.store.rv))
        return len(ws)

    def send_watch_error(
        self, code: int = 410, reason: str = "Expired", message: str | None = None, plural: str | None = None
    ) -> int:
        """Send an ERROR event carrying a Status on open watches, then end them."""
        status = ApiError(code, reason, message or f"injected watch error {code} {reason}").status()
        ws = self.store.watchers(None, plural)
        for w in ws:
            w.push(WatchEnd(error=status))
        return len(ws)

    def inject_error(
        self,
        code: int,
        *,
        reason: str | None = None,
        message: str | None = None,
        verb: str | None = None,
        group: str | None = None,
        plural: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
        times: int | None = 1,
        retry_after: int | None = None,
    ) -> Fault:
        """Fail the next ``times`` matching requests with ``code`` (and a Status body)."""
        f = Fault(
            code,
            reason or _REASONS.get(code, "InternalError"),
            message or f"injected error {code}",
            verb,
            group,
            plural,
            name,
            namespace,
            subresource,
            times,
            retry_after,
        )
        self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        self.faults.clear()

    # ------------------------------------------------------------ request log

    @property
    def writes(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_write]

    async def wait_until(self, predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
        """Poll ``predicate`` (e.g. over ``requests`` or objects) until it holds; TimeoutError otherwise."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {within} s{': ' + what if what else ''}")
            await asyncio.sleep(0.01)

    def find_requests(self, *, writes_only: bool = False, **attrs: Any) -> list[RecordedRequest]:
        """Requests whose attributes equal all ``attrs``, e.g. ``plural="gateways", subresource="status"``."""
        return [
            r
            for r in self.requests
            if (not writes_only or r.is_write) and all(getattr(r, k) == v for k, v in attrs.items())
        ]

    def clear_requests(self) -> None:
        self.requests.clear()

    # ------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        query = tuple(parse_qsl(request.query_string, keep_blank_values=True))
        info: dict[str, Any] = {}
        status = 500
        try:
            resp = await self._dispatch(request, body, dict(query), info)
            status = resp.status
            return resp
        except ApiError as err:
            status = err.code
            return _status_response(err)
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception:
            tb = traceback.format_exc()
            self.server_errors.append(tb)
            log.error("kubefake failed serving %s %s:\n%s", request.method, request.path_qs, tb)
            return _status_response(ApiError(500, "InternalError", "kubefake internal error"))
        finally:
            t: _Target | None = info.get("target")
            if not info.get("recorded"):
                self.requests.append(self._record(request, body, query, status, info.get("verb", ""), t))

    def _record(
        self,
        request: web.Request,
        body: bytes,
        query: tuple[tuple[str, str], ...],
        status: int,
        verb: str,
        t: _Target | None,
    ) -> RecordedRequest:
        q = dict(query)
        return RecordedRequest(
            method=request.method,
            path=request.path,
            query=query,
            content_type=request.headers.get("Content-Type", ""),
            body=body.decode("utf-8", "replace"),
            status=status,
            verb=verb,
            group=t.rtype.group if t else "",
            version=t.version if t else "",
            plural=t.rtype.plural if t else "",
            namespace=t.namespace if t else None,
            name=t.name if t else None,
            subresource=t.subresource if t else "",
            field_manager=q.get("fieldManager", ""),
            user_agent=request.headers.get("User-Agent", ""),
        )

    def _check_fault(self, t: _Target | None, verb: str) -> None:
        for f in self.faults:
            if f.matches(t, verb):
                f.hits += 1
                raise ApiError(f.code, f.reason, f.message, retry_after=f.retry_after)

    async def _dispatch(
        self, request: web.Request, body: bytes, q: dict[str, str], info: dict[str, Any]
    ) -> web.StreamResponse:
        segs = [s for s in request.path.split("/") if s]
        if segs in (["healthz"], ["livez"], ["readyz"]):
            return web.Response(text="ok")
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if segs == ["version"]:
            return _json_response(
                {"major": "1", "minor": "34", "gitVersion": "v1.34.0-kubefake", "platform": "linux/amd64"}
            )
        if not segs or segs[0] not in ("api", "apis"):
            return web.Response(status=404, text=_PLAIN_404)
        discovery = self._discovery(segs)
        if discovery is not None:
            info["verb"] = "discovery"
            self._check_fault(None, "discovery")
            if request.method != "GET":
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            return discovery
        target = self._target(segs)
        if isinstance(target, web.StreamResponse):
            return target
        info["target"] = target
        verb = self._verb(request.method, target, q)
        info["verb"] = verb
        if verb not in target.rtype.verbs:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"the server does not allow this method on the requested "
                f"resource ({verb} {target.rtype.group_resource})",
            )
        self._check_fault(target, verb)
        return await self._serve(request, target, verb, body, q, info)

    # -- discovery

    def _discovery(self, segs: list[str]) -> web.Response | None:
        served = self.store.served_types()
        if segs == ["api"]:
            return _json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                    ],
                }
            )
        if segs == ["api", "v1"]:
            return _json_response(self._resource_list("", "v1", served))
        if segs == ["apis"]:
            groups = sorted({r.group for r in served if r.group})
            return _json_response(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._group(g, served) for g in groups],
                }
            )
        if segs[0] == "apis" and len(segs) == 2:
            if not any(r.group == segs[1] for r in served):
                return web.Response(status=404, text=_PLAIN_404)
            return _json_response({"kind": "APIGroup", "apiVersion": "v1", **self._group(segs[1], served)})
        if segs[0] == "apis" and len(segs) == 3:
            if not any(r.group == segs[1] and segs[2] in r.versions for r in served):
                return web.Response(status=404, text=_PLAIN_404)
            return _json_response(self._resource_list(segs[1], segs[2], served))
        return None

    @staticmethod
    def _group(group: str, served: list[ResourceType]) -> Obj:
        versions = sorted({v for r in served if r.group == group for v in r.versions}, key=version_priority)
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    @staticmethod
    def _resource_list(group: str, version: str, served: list[ResourceType]) -> Obj:
        resources: list[Obj] = []
        for r in sorted(served, key=lambda r: r.plural):
            if r.group != group or version not in r.versions:
                continue
            entry: Obj = {
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": list(r.verbs),
            }
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            if r.categories:
                entry["categories"] = list(r.categories)
            resources.append(entry)
            if r.status_subresource:
                resources.append(
                    {
                        "name": f"{r.plural}/status",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": version if not group else f"{group}/{version}",
            "resources": resources,
        }

    # -- resource paths

    def _target(self, segs: list[str]) -> _Target | web.Response:
        if segs[0] == "api":
            if len(segs) < 3 or segs[1] != "v1":
                return web.Response(status=404, text=_PLAIN_404)
            group, version, rest = "", "v1", segs[2:]
        else:
            group, version, rest = segs[1], segs[2], segs[3:]
        if not any(r.group == group and version in r.versions for r in self.store.served_types()):
            return web.Response(status=404, text=_PLAIN_404)
        legacy_watch = rest[0] == "watch"
        if legacy_watch:
            rest = rest[1:]
        missing = ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            rtype = self.store.served(group, version, rest[2])
            if rtype is not None and rtype.namespaced:
                namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise missing
        rtype = self.store.served(group, version, rest[0])
        if rtype is None:
            raise missing
        if rtype.namespaced and namespace is None and len(rest) > 1:
            raise missing
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if sub and (sub != "status" or not rtype.status_subresource):
            raise missing
        return _Target(rtype, version, namespace, name, sub, legacy_watch)

    @staticmethod
    def _verb(method: str, t: _Target, q: dict[str, str]) -> str:
        watch = t.legacy_watch or (t.name is None and bool(parse_bool(q.get("watch"), "watch")))
        not_allowed = ApiError(
            405,
            "MethodNotAllowed",
            f"the server does not allow this method on the "
            f"requested resource ({method} {t.rtype.group_resource})",
        )
        if t.legacy_watch and method != "GET":
            raise not_allowed
        if method in ("GET", "HEAD"):
            if watch:
                return "watch"
            return "get" if t.name else "list"
        if t.subresource and method not in ("PUT", "PATCH"):
            raise not_allowed
        if method == "POST" and t.name is None and (t.namespace is not None or not t.rtype.namespaced):
            return "create"
        if method == "PUT" and t.name:
            return "update"
        if method == "PATCH" and t.name:
            return "patch"
        if method == "DELETE":
            return "delete" if t.name else "deletecollection"
        raise not_allowed

    async def _serve(
        self,
        request: web.Request,
        t: _Target,
        verb: str,
        body: bytes,
        q: dict[str, str],
        info: dict[str, Any],
    ) -> web.StreamResponse:
        store, rtype = self.store, t.rtype
        manager = q.get("fieldManager") or request.headers.get("User-Agent", "").split("/")[0]
        dry_run = q.get("dryRun") == "All"
        if verb == "get":
            assert t.name is not None
            return _json_response(store.get(rtype, t.namespace, t.name, t.version))
        if verb == "list":
            limit = q.get("limit")
            return _json_response(
                store.list_objects(
                    rtype,
                    t.namespace,
                    version=t.version,
                    label_selector=q.get("labelSelector"),
                    field_selector=q.get("fieldSelector"),
                    limit=int(limit) if limit and limit.isdigit() else None,
                    continue_token=q.get("continue"),
                    resource_version=q.get("resourceVersion"),
                    resource_version_match=q.get("resourceVersionMatch"),
                )
            )
        if verb == "watch":
            field_selector = q.get("fieldSelector")
            if t.name:
                field_selector = f"metadata.name={t.name}" + (f",{field_selector}" if field_selector else "")
            timeout = q.get("timeoutSeconds")
            w = store.watch(
                rtype,
                t.namespace,
                version=t.version,
                label_selector=q.get("labelSelector"),
                field_selector=field_selector,
                resource_version=q.get("resourceVersion"),
                resource_version_match=q.get("resourceVersionMatch"),
                allow_bookmarks=bool(parse_bool(q.get("allowWatchBookmarks"), "allowWatchBookmarks")),
                send_initial_events=parse_bool(q.get("sendInitialEvents"), "sendInitialEvents"),
            )
            info["recorded"] = True
            self.requests.append(self._record(request, body, tuple(q.items()), 200, verb, t))
            return await self._serve_watch(request, w, float(timeout) if timeout else None)
        if verb == "create":
            if "yaml" not in request.content_type and "json" not in request.content_type:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format "
                    "- accepted media types include: application/json, application/yaml",
                )
            obj = store.create(
                rtype, t.namespace, _decode(body), version=t.version, manager=manager, dry_run=dry_run
            )
            return _json_response(obj, 201)
        if verb == "update":
            assert t.name is not None
            obj = store.update(
                rtype,
                t.namespace,
                t.name,
                _decode(body),
                version=t.version,
                subresource=t.subresource,
                manager=manager,
                dry_run=dry_run,
            )
            return _json_response(obj)
        if verb == "patch":
            assert t.name is not None
            force = parse_bool(q.get("force"), "force")
            obj, created = store.patch(
                rtype,
                t.namespace,
                t.name,
                request.headers.get("Content-Type", ""),
                body,
                version=t.version,
                subresource=t.subresource,
                manager=q.get("fieldManager") or ("" if "apply-patch" in request.content_type else manager),
                force=force,
                dry_run=dry_run,
            )
            return _json_response(obj, 201 if created else 200)
        if verb == "delete":
            assert t.name is not None
            options = _decode(body) if body.strip() else None
            return _json_response(
                store.delete(rtype, t.namespace, t.name, options, version=t.version, dry_run=dry_run)
            )
        if verb == "deletecollection":
            return _json_response(
                store.delete_collection(
                    rtype,
                    t.namespace,
                    version=t.version,
                    label_selector=q.get("labelSelector"),
                    field_selector=q.get("fieldSelector"),
                    dry_run=dry_run,
                )
            )
        raise AssertionError(verb)

    async def _serve_watch(
        self, request: web.Request, w: Watcher, timeout_s: float | None
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._watch_tasks.add(task)
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"}
        )
        resp.enable_chunked_encoding()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s else None
        next_bookmark = loop.time() + self.bookmark_interval
        aborted = False
        try:
            await resp.prepare(request)
            while True:
                now = loop.time()
                wait = next_bookmark - now if w.bookmarks else 3600.0
                if deadline is not None:
                    wait = min(wait, deadline - now)
                try:
                    if w.queue.empty():
                        item = await asyncio.wait_for(w.queue.get(), timeout=max(wait, 0.0))
                    else:
                        item = w.queue.get_nowait()
                except TimeoutError:
                    now = loop.time()
                    if not w.queue.empty():
                        continue  # an event raced the timeout: send it before any bookmark
                    if w.bookmarks and now >= next_bookmark:
                        # every event up to the current resourceVersion has been written
                        await resp.write(self._bookmark_line(w, WatchBookmark(None)))
                        next_bookmark = now + self.bookmark_interval
                    if deadline is not None and now >= deadline:
                        break
                    continue
                if isinstance(item, WatchLine):
                    w.events_sent += 1
                    await resp.write(item.data)
                elif isinstance(item, WatchBookmark):
                    if w.bookmarks:
                        await resp.write(self._bookmark_line(w, item))
                        next_bookmark = loop.time() + self.bookmark_interval
                else:
                    if item.error is not None:
                        await resp.write(
                            (
                                json.dumps({"type": "ERROR", "object": item.error}, separators=(",", ":"))
                                + "\n"
                            ).encode()
                        )
                    if item.abort:
                        aborted = True
                        if request.transport is not None:
                            request.transport.abort()
                    break
        except (ConnectionResetError, ConnectionError):
            aborted = True
        finally:
            w.closed = True
            self.store.unwatch(w)
            self._watch_tasks.discard(task)
        if not aborted:
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
        return resp

    def _bookmark_line(self, w: Watcher, bm: WatchBookmark) -> bytes:
        md: Obj = {"resourceVersion": str(bm.rv if bm.rv is not None else self.store.rv)}
        if bm.initial_events_end:
            md["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": w.rtype.kind, "apiVersion": w.api_version, "metadata": md}
        return (json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")) + "\n").encode()


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        try:
            return yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise bad_request(f"error decoding request body: {exc}") from None
