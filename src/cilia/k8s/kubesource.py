"""The Kubernetes source: list + watch every registered kind into the store.

One loop per kind in ``cilia.k8s.registry.known_kinds()``:

* **List first.** The kind's versions are tried in registry order and the first one the server serves
  is used. A 404 on every version means the kind is not served (CRD not installed): the kind is
  disabled with one log line, its objects leave the store, and the list is retried every
  ``crd_retry_s`` until the CRD appears. Never a crash.
* **Watch from the list's resourceVersion**, with bookmarks, resuming from the last resourceVersion
  seen when the stream ends or breaks. Errors back off exponentially with jitter.
* **410 Expired** (history compacted) means relist, but *without emptying the store*: the relist goes
  through ``Store.replace_kind``, which compares content hashes that ignore resourceVersion and
  managedFields, so unchanged objects change nothing and cause no rebuild and no xDS push.
* **Invalid objects** become issues naming kind, namespace, name and field; the last valid version of
  the object keeps serving.

**Secrets are read only where they are meant for cilia**: in the namespaces of
``WatchOptions.secret_namespaces`` (``--secrets-namespace``, default ``cilia-secrets``), one list + watch per
namespace, so the ServiceAccount needs a Role there and no cluster-wide grant on Secrets (deploy/README.md).

**ConfigMaps are watched cluster-wide but only those with a ``ca.crt`` key are kept**, and of those only
that key (CA bundles that Gateways' ``spec.tls.frontend`` refers to); the rest never reach the store.

``on_watch_restart(kind, reason)`` is called for every restarted watch (reasons: ``closed`` when the
server ended the stream, ``expired`` (410), ``gone`` (404), ``error``), for metrics.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cilia.diagnostics import Issue
from cilia.errors import ValidationError
from cilia.k8s.core import CA_CERT_KEY
from cilia.k8s.kubeapi import KubeApi, KubeApiError, Resource, WatchStreamError
from cilia.k8s.objects import KubeObject, Origin
from cilia.k8s.registry import KindSpec, known_kinds, parse_object
from cilia.k8s.store import Store

log = logging.getLogger("cilia.source.kube")

SOURCE = "kubernetes"
SOURCE_VERBS = ("list", "watch")  # every verb the source uses on every kind it reads (see cilia.k8s.rbac)
# Kinds read namespace by namespace (WatchOptions.secret_namespaces), never cluster-wide.
NAMESPACE_SCOPED_KINDS = frozenset({"Secret"})
DEFAULT_SECRETS_NAMESPACE = "cilia-secrets"

RestartHook = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class WatchOptions:
    page_size: int = 500
    watch_timeout_s: float = 300.0  # asked of the server, jittered to [1x, 2x) so watches do not renew in step
    read_slack_s: float = 30.0  # a stream silent this long past its timeout is considered dead
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    crd_retry_s: float = 30.0  # how often a kind the server does not serve is looked for again
    initial_sync_timeout_s: float = 30.0  # longest the first list of all kinds may hold up serving
    secret_namespaces: tuple[str, ...] = (DEFAULT_SECRETS_NAMESPACE,)  # the only namespaces Secrets are read in

    def namespaces_for(self, kind: str) -> tuple[str | None, ...]:
        """Where `kind` is listed and watched: (None,) is every namespace at once (or a cluster-scoped kind)."""
        return tuple(dict.fromkeys(self.secret_namespaces)) if kind in NAMESPACE_SCOPED_KINDS else (None,)


class Backoff:
    """Exponential backoff with jitter: each delay is drawn from [d/2, d), d doubling up to `maximum`."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        d = self._next
        self._next = min(self._next * 2, self.maximum)
        return random.uniform(d / 2, d)

    def reset(self) -> None:
        self._next = self.initial

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())


@dataclass(frozen=True, slots=True)
class ObservedObject:
    """What the API server last said about an object: what a status write is compared against."""

    kind: str
    namespace: str
    name: str
    api_version: str
    generation: int
    resource_version: str
    status: Mapping[str, Any] | None
    uid: str = ""


@dataclass(slots=True)
class _Invalid:
    observed: ObservedObject
    issue: Issue


@dataclass(slots=True)
class _KindState:
    spec: KindSpec
    namespace: str | None = None  # None: all namespaces (or a cluster-scoped kind)
    resource: Resource | None = None
    rv: str = ""
    listed: bool = False
    served: bool | None = None  # None: not known yet
    invalid: dict[tuple[str, str], _Invalid] = field(default_factory=dict)
    last_error: str = ""

    @property
    def key(self) -> str:
        """`Secret@ns` for a kind read in one namespace, else the kind."""
        return self.spec.kind if self.namespace is None else f"{self.spec.kind}@{self.namespace}"

    @property
    def what(self) -> str:
        return self.spec.kind if self.namespace is None else f"{self.spec.kind} (namespace {self.namespace})"


def _relevant(kind: str, raw: Mapping[str, Any]) -> bool:
    keep = RELEVANT.get(kind)
    return keep is None or keep(raw)


def _label(kind: str, namespace: str, name: str) -> str:
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _trim_node(raw: dict[str, Any]) -> None:
    """Nodes: keep only the status cilia reads (addresses), so heartbeats do not cause rebuilds."""
    status = raw.get("status")
    if isinstance(status, dict):
        raw["status"] = {k: v for k, v in status.items() if k == "addresses"}


def _trim_config_map(raw: dict[str, Any]) -> None:
    """ConfigMaps: keep only the `ca.crt` key (CA bundles Gateways refer to) and drop labels and
    annotations, so that the many unrelated ConfigMaps of a cluster cost little memory and their edits
    cause no rebuilds."""
    data = raw.get("data")
    raw["data"] = {CA_CERT_KEY: data[CA_CERT_KEY]} if isinstance(data, dict) and CA_CERT_KEY in data else {}
    raw.pop("binaryData", None)
    md = raw.get("metadata")
    if isinstance(md, dict):
        raw["metadata"] = {k: v for k, v in md.items() if k not in ("labels", "annotations")}


def _has_ca_cert(raw: Mapping[str, Any]) -> bool:
    data = raw.get("data")
    return isinstance(data, dict) and CA_CERT_KEY in data


TRIMMERS: dict[str, Callable[[dict[str, Any]], None]] = {"Node": _trim_node, "ConfigMap": _trim_config_map}
# Kinds of which only some objects matter: the others are kept out of the store (an object that stops
# mattering leaves it, as if deleted).
RELEVANT: dict[str, Callable[[Mapping[str, Any]], bool]] = {"ConfigMap": _has_ca_cert}


class KubernetesSource:
    """Feeds the store from the API server. `run()` until cancelled; `initial_sync()` first if wanted."""

    def __init__(self, store: Store, api: KubeApi, *, options: WatchOptions | None = None,
                 kinds: Iterable[KindSpec] | None = None, source: str = SOURCE,
                 on_watch_restart: RestartHook | None = None) -> None:
        self.store = store
        self.api = api
        self.opts = options or WatchOptions()
        self.source = source
        self.issue_source = f"{source}:invalid"
        self.on_watch_restart = on_watch_restart
        self.watch_restarts: Counter[tuple[str, str]] = Counter()
        self.events = 0
        self.relists = 0
        states = [_KindState(s, ns) for s in (kinds if kinds is not None else known_kinds())
                  for ns in self.opts.namespaces_for(s.kind)]
        self._kinds = {st.key: st for st in states}  # kind, or `Kind@namespace` for namespace-scoped reads
        self._origin = Origin(source)
        self._published_issues: tuple[Issue, ...] = ()

    # -- views --------------------------------------------------------------------------------------
    def served(self, kind: str) -> bool | None:
        """True when the kind is listed and watched, False when the server does not serve it (`kind` may be
        `Kind@namespace` for a kind read per namespace)."""
        st = self._kinds.get(kind)
        return None if st is None else st.served

    def resource(self, kind: str) -> Resource | None:
        """The version of `kind` in use (None while not served)."""
        st = self._kinds.get(kind)
        return None if st is None else st.resource

    def observed(self, kind: str, namespace: str, name: str) -> ObservedObject | None:
        """The object as the API server last reported it, valid or not."""
        st = self._kinds.get(kind)
        if st is None:
            return None
        bad = st.invalid.get((namespace, name))
        if bad is not None:
            return bad.observed
        obj = self.store.objects_of(self.source).get((kind, namespace, name))
        return None if obj is None else _observe(obj)

    def observed_objects(self, kind: str) -> list[ObservedObject]:
        st = self._kinds.get(kind)
        if st is None:
            return []
        out = {(o.meta.namespace, o.meta.name): _observe(o)
               for k, o in self.store.objects_of(self.source).items() if k[0] == kind}
        out.update({key: bad.observed for key, bad in st.invalid.items()})
        return [out[k] for k in sorted(out)]

    # -- running --------------------------------------------------------------------------------------
    async def initial_sync(self, within: float | None = None) -> None:
        """List every kind once (retrying errors for up to `within` seconds), so the first config is complete."""
        deadline = time.monotonic() + (self.opts.initial_sync_timeout_s if within is None else within)
        scoped = sorted(k for k in NAMESPACE_SCOPED_KINDS if any(st.spec.kind == k for st in self._kinds.values()))
        for kind in scoped:
            where = ", ".join(self.opts.secret_namespaces) or "no namespace"
            log.info("%ss are read only in: %s (--secrets-namespace)", kind, where)

        async def one(st: _KindState) -> None:
            backoff = Backoff(self.opts.backoff_initial_s, self.opts.backoff_max_s)
            while True:
                try:
                    await self._list(st)
                    return
                except (KubeApiError, WatchStreamError) as exc:
                    self._log_error(st, "list", exc)
                delay = backoff.next_delay()
                if time.monotonic() + delay > deadline:
                    log.warning("%s: no complete initial list yet; serving without it and retrying", st.what)
                    return
                await asyncio.sleep(delay)

        await asyncio.gather(*(one(st) for st in self._kinds.values()))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for st in self._kinds.values():
                tg.create_task(self._run_kind(st), name=f"kube-watch-{st.key}")

    async def _run_kind(self, st: _KindState) -> None:
        backoff = Backoff(self.opts.backoff_initial_s, self.opts.backoff_max_s)
        quick_expiries = 0
        while True:
            try:
                if not st.listed:
                    if not await self._list(st):
                        await asyncio.sleep(self.opts.crd_retry_s * random.uniform(0.9, 1.1))
                        continue
                started = time.monotonic()
                events = await self._watch(st)
                self._restarted(st, "closed")
                if events == 0 and time.monotonic() - started < 1.0:
                    await backoff.sleep()  # a server that ends watches at once must not make us spin
                else:
                    backoff.reset()
                    quick_expiries = 0
            except KubeApiError as exc:
                if exc.status == 410:
                    st.listed = False
                    self._restarted(st, "expired")
                    quick_expiries += 1
                    if quick_expiries > 1:
                        await backoff.sleep()
                elif exc.status == 404:
                    st.listed = False  # the list finds out whether the kind is still served
                    self._restarted(st, "gone")
                    await backoff.sleep()
                else:
                    self._log_error(st, "watch", exc)
                    self._restarted(st, "error")
                    await backoff.sleep()
            except WatchStreamError as exc:
                self._log_error(st, "watch", exc)
                self._restarted(st, "error")
                await backoff.sleep()
            except Exception:  # a bug here must not take the control plane down: log, back off, go on
                log.exception("%s: unexpected error in the watch loop", st.what)
                st.listed = False
                self._restarted(st, "error")
                await backoff.sleep()

    def _restarted(self, st: _KindState, reason: str) -> None:
        self.watch_restarts[(st.spec.kind, reason)] += 1
        if self.on_watch_restart is not None:
            self.on_watch_restart(st.spec.kind, reason)

    def _log_error(self, st: _KindState, what: str, exc: Exception) -> None:
        text = str(exc)
        if text != st.last_error:
            hint = ""
            if isinstance(exc, KubeApiError) and exc.status == 403:
                where = f"a Role in namespace {st.namespace}" if st.namespace else "its ClusterRole"
                hint = f" (cilia's ServiceAccount needs {what} on {st.spec.plural} from {where}: see deploy/README.md)"
            log.warning("%s: %s failed: %s%s (retrying with backoff)", st.what, what, text, hint)
            st.last_error = text
        else:
            log.debug("%s: %s failed again: %s", st.what, what, text)

    # -- list ------------------------------------------------------------------------------------------
    async def _list(self, st: _KindState) -> bool:
        """(Re)list the kind; False when the server serves none of its versions."""
        spec = st.spec
        for version in spec.versions:
            res = Resource(spec.group, version, spec.plural, spec.namespaced)
            try:
                items, rv = await self._list_all(res, st.namespace)
            except KubeApiError as exc:
                if exc.status == 404:
                    continue
                raise
            if st.served is False:
                log.info("%s is now served (%s): watching it", st.what, res.api_version)
            st.served, st.resource, st.last_error = True, res, ""
            self._apply_list(st, res, items)
            st.rv, st.listed = rv, True
            self.relists += 1
            return True
        if st.served is not False:
            versions = ", ".join(f"{spec.group}/{v}" if spec.group else v for v in spec.versions)
            log.warning("%s (%s) is not served by the API server (CRD not installed?): %s objects are ignored; "
                        "checking again every %g s", spec.kind, versions, spec.kind, self.opts.crd_retry_s)
        st.served, st.resource, st.listed, st.rv = False, None, False, ""
        self.store.replace_kind(self.source, spec.kind, (), st.namespace)
        if st.invalid:
            st.invalid.clear()
            self._publish_issues()
        return False

    async def _list_all(self, res: Resource, namespace: str | None = None) -> tuple[list[Any], str]:
        items: list[Any] = []
        token = ""
        for _ in range(100_000):  # bounded: a server handing out continue tokens forever is a bug
            page = await self.api.list(res, namespace=namespace, limit=self.opts.page_size, continue_token=token)
            md = _metadata(page)
            page_items = page.get("items") or []
            if not isinstance(page_items, list):
                raise WatchStreamError(f"list of {res.plural}: items is not a list")
            items.extend(page_items)
            token = str(md.get("continue") or "")
            if not token:
                return items, str(md.get("resourceVersion") or "")
        raise WatchStreamError(f"list of {res.plural} did not end")

    def _apply_list(self, st: _KindState, res: Resource, items: list[Any]) -> None:
        kind = st.spec.kind
        good: list[KubeObject] = []
        invalid: dict[tuple[str, str], _Invalid] = {}
        mine = self.store.objects_of(self.source)
        for item in items:
            raw = self._normalise(item, res, kind)
            if raw is None or not _relevant(kind, raw):
                continue
            try:
                good.append(parse_object(raw, self._origin))
            except ValidationError as exc:
                bad = self._invalid(st, raw, exc)
                key = (bad.observed.namespace, bad.observed.name)
                invalid[key] = bad
                last_good = mine.get((kind, *key))
                if last_good is not None:
                    good.append(last_good)
        self.store.replace_kind(self.source, kind, good, st.namespace)
        if invalid != st.invalid:
            st.invalid = invalid
            self._publish_issues()

    # -- watch -----------------------------------------------------------------------------------------
    async def _watch(self, st: _KindState) -> int:
        """Follow one watch stream until the server ends it; returns how many events it carried."""
        assert st.resource is not None
        res = st.resource
        timeout = int(self.opts.watch_timeout_s * random.uniform(1.0, 2.0)) or 1
        count = 0
        async for event in self.api.watch(res, st.rv, timeout_s=timeout, namespace=st.namespace,
                                          read_timeout_s=timeout + self.opts.read_slack_s):
            etype = event["type"]
            obj = event["object"]
            rv = str(_metadata(obj).get("resourceVersion") or "")
            if etype == "BOOKMARK":
                st.rv = rv or st.rv
                count += 1
                continue
            if etype not in ("ADDED", "MODIFIED", "DELETED"):
                raise WatchStreamError(f"unknown watch event type {etype!r}")
            raw = self._normalise(obj, res, st.spec.kind)
            if raw is not None:
                self._apply_event(st, etype, raw)
            st.rv = rv or st.rv
            count += 1
            self.events += 1
        return count

    def _apply_event(self, st: _KindState, etype: str, raw: dict[str, Any]) -> None:
        kind = st.spec.kind
        md = _metadata(raw)
        name = str(md.get("name") or "")
        ns = str(md.get("namespace") or "") if st.spec.namespaced else ""
        if etype == "DELETED" or not _relevant(kind, raw):
            if st.invalid.pop((ns, name), None) is not None:
                self._publish_issues()
            self.store.delete(self.source, kind, ns, name)
            return
        try:
            obj = parse_object(raw, self._origin)
        except ValidationError as exc:
            st.invalid[(ns, name)] = self._invalid(st, raw, exc)
            self._publish_issues()
            return
        if st.invalid.pop((ns, name), None) is not None:
            self._publish_issues()
        self.store.upsert(self.source, obj)

    # -- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _normalise(item: Any, res: Resource, kind: str) -> dict[str, Any] | None:
        """A private copy with kind/apiVersion set (built-in list items lack them), minus managedFields."""
        if not isinstance(item, dict):
            return None
        raw = dict(item)
        raw["kind"] = kind
        raw["apiVersion"] = res.api_version
        md = raw.get("metadata")
        if isinstance(md, dict) and "managedFields" in md:
            raw["metadata"] = {k: v for k, v in md.items() if k != "managedFields"}
        trim = TRIMMERS.get(kind)
        if trim is not None:
            trim(raw)
        return raw

    def _invalid(self, st: _KindState, raw: dict[str, Any], exc: ValidationError) -> _Invalid:
        md = _metadata(raw)
        name = str(md.get("name") or "")
        ns = str(md.get("namespace") or "") if st.spec.namespaced else ""
        kept = (st.spec.kind, ns, name) in self.store.objects_of(self.source)
        message = exc.message + ("; the last valid version is still in use" if kept else "; the object is ignored")
        issue = Issue(_label(st.spec.kind, ns, name), exc.field, message, self.source)
        status = raw.get("status")
        gen = md.get("generation")
        observed = ObservedObject(st.spec.kind, ns, name, str(raw.get("apiVersion")),
                                  gen if isinstance(gen, int) else 0, str(md.get("resourceVersion") or ""),
                                  status if isinstance(status, Mapping) else None, str(md.get("uid") or ""))
        return _Invalid(observed, issue)

    def _publish_issues(self) -> None:
        issues = tuple(sorted(bad.issue for st in self._kinds.values() for bad in st.invalid.values()))
        if issues != self._published_issues:
            for issue in sorted(set(issues) - set(self._published_issues)):
                log.warning("%s", issue, extra={"object": issue.object})
            self._published_issues = issues
            self.store.set_source_issues(self.issue_source, issues)


def _metadata(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """`metadata` when it is a mapping; an object from the API may be anything, a bug must not stop a watch."""
    md = raw.get("metadata")
    return md if isinstance(md, Mapping) else {}


def _observe(obj: KubeObject) -> ObservedObject:
    status = obj.raw.get("status")
    return ObservedObject(obj.kind, obj.meta.namespace, obj.meta.name, obj.api_version, obj.meta.generation,
                          obj.meta.resource_version, status if isinstance(status, Mapping) else None, obj.meta.uid)
