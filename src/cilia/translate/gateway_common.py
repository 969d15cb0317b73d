"""Pieces shared by the Gateway and GAMMA translators: conditions, ReferenceGrants, hostnames,
backendRefs and the conversion of HTTPRoute/GRPCRoute rules into IR routes with their precedence.

Status times: a condition keeps the `lastTransitionTime` it already has in the object's status (the
status as read back, `raw["status"]`) while its `status` value does not change. A new or changed
condition gets `TranslateOptions.status_time` when set, else the object's
`metadata.creationTimestamp`, else the epoch `1970-01-01T00:00:00Z`. Translation stays a pure function
of its inputs: the same objects always give the same status stanzas.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cilia.ir import model as ir
from cilia.k8s.gateway import (
    GROUP,
    BackendRef,
    Filter,
    GRPCMatch,
    GRPCRule,
    HeaderModifier,
    HTTPMatch,
    HTTPRule,
    ParentRef,
)
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.backendtls import apply as apply_backend_tls
from cilia.translate.backendtls import backend_tls
from cilia.translate.services import resolve_backend, upstream_protocol

CONTROLLER = "cilia.io/gateway-controller"
GATEWAY_API_VERSION = "v1.5.1"  # the release whose CRDs and conformance suite cilia follows
# The conformance features (upstream names) cilia claims: GatewayClass status lists them, and the
# conformance runner (tests/conformance) replays every upstream test of each extended one, passing.
# Behaviours implemented but not yet verified that way are not claimed.
SUPPORTED_FEATURES = frozenset({
    "Gateway", "HTTPRoute", "ReferenceGrant", "GRPCRoute", "TLSRoute", "Mesh",
    "GatewayHTTPSListenerDetectMisdirectedRequests", "HTTPRouteMethodMatching", "HTTPRouteRequestMirror",
    "HTTPRouteRequestPercentageMirror", "HTTPRouteRequestTimeout", "HTTPRouteRetry", "HTTPRouteParentRefPort",
    "HTTPRoutePortRedirect", "GatewayPort8080", "HTTPRouteCORS", "TLSRouteModeTerminate", "TLSRouteModeMixed",
    "HTTPRouteDestinationPortMatching", "HTTPRouteQueryParamMatching", "HTTPRoutePathRewrite", "HTTPRouteHostRewrite",
    "HTTPRoutePathRedirect", "HTTPRouteSchemeRedirect", "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteRequestMultipleMirrors", "HTTPRouteBackendTimeout", "HTTPRouteNamedRouteRule", "GRPCRouteNamedRouteRule",
    "GatewayHTTPListenerIsolation", "HTTPRouteBackendProtocolH2C", "HTTPRouteBackendProtocolWebSocket",
    "GatewayAddressEmpty", "GatewayStaticAddresses",
    "MeshClusterIPMatching", "MeshConsumerRoute", "MeshHTTPRouteRewritePath", "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRouteRedirectPort", "MeshHTTPRouteRedirectPath", "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteNamedRouteRule", "MeshHTTPRouteBackendRequestHeaderModification",
    "HTTPRoute303RedirectStatusCode", "HTTPRoute307RedirectStatusCode", "HTTPRoute308RedirectStatusCode",
    "HTTPRouteResponseHeaderModification", "ListenerSet", "BackendTLSPolicy", "BackendTLSPolicySANValidation",
    "GatewayBackendClientCertificate",
    "GatewayFrontendClientCertificateValidation", "GatewayFrontendClientCertificateValidationInsecureFallback",
})
EPOCH = "1970-01-01T00:00:00Z"
INVALID_BACKEND = "cilia/invalid-backend"  # never defined: requests routed to it get 500
WELL_KNOWN_PORTS = {"http": 80, "https": 443}


# -- conditions ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Cond:
    type: str
    ok: bool | None  # None = Unknown
    reason: str
    message: str = ""


def _status_word(ok: bool | None) -> str:
    return "Unknown" if ok is None else ("True" if ok else "False")


def fallback_time(obj: KubeObject, status_time: str) -> str:
    if status_time:
        return status_time
    ts = (obj.raw.get("metadata") or {}).get("creationTimestamp")
    return str(ts) if ts else EPOCH


def conditions(conds: Iterable[Cond], generation: int, previous: Any, fallback: str,
               owned: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Condition stanzas; keeps each one's lastTransitionTime while its status is unchanged, and keeps
    conditions of types this controller does not own (`owned` plus the ones given) as they were."""
    prev: dict[str, Mapping[str, Any]] = {}
    if isinstance(previous, list):
        for c in previous:
            if isinstance(c, Mapping) and isinstance(c.get("type"), str):
                prev[c["type"]] = c
    out: list[dict[str, Any]] = []
    mine = set(owned)
    for c in conds:
        mine.add(c.type)
        status = _status_word(c.ok)
        old = prev.get(c.type)
        when = fallback
        if old is not None and old.get("status") == status and isinstance(old.get("lastTransitionTime"), str):
            when = old["lastTransitionTime"]
        out.append({"type": c.type, "status": status, "reason": c.reason, "message": c.message,
                    "observedGeneration": generation, "lastTransitionTime": when})
    for t, c in prev.items():
        if t not in mine:
            out.append(dict(c))
    return out


def previous_status(obj: KubeObject) -> Mapping[str, Any]:
    st = obj.raw.get("status")
    return st if isinstance(st, Mapping) else {}


# -- references ---------------------------------------------------------------------------------------
def norm_group(group: str) -> str:
    return "" if group == "core" else group


def ref_permitted(snapshot: InputSnapshot, from_kind: str, from_ns: str, to_group: str, to_kind: str,
                  to_ns: str, to_name: str, from_group: str = GROUP) -> bool:
    """Same namespace, or a ReferenceGrant in the target namespace allows it."""
    if from_ns == to_ns:
        return True
    for grant in snapshot.list("ReferenceGrant"):
        if grant.meta.namespace != to_ns:
            continue
        spec = grant.spec
        if not any(norm_group(f.group) == norm_group(from_group) and f.kind == from_kind and f.namespace == from_ns
                   for f in spec.from_):
            continue
        if any(norm_group(t.group) == norm_group(to_group) and t.kind == to_kind and (not t.name or t.name == to_name)
               for t in spec.to):
            return True
    return False


def namespace_labels(snapshot: InputSnapshot, ns: str) -> dict[str, str]:
    """A namespace's labels, with the `kubernetes.io/metadata.name` label the API server always sets."""
    obj = snapshot.get("Namespace", "", ns)
    labels = dict(obj.meta.labels) if obj is not None else {}
    labels.setdefault("kubernetes.io/metadata.name", ns)
    return labels


# -- hostnames ----------------------------------------------------------------------------------------
def covers(pattern: str, host: str) -> bool:
    """Whether hostname `pattern` (exact, `*.suffix` or `*`) matches `host` (which may be a wildcard too:
    then every name it matches must match `pattern`). `*.example.com` does not match `example.com`."""
    if pattern in ("", "*") or pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return False


def intersect(listener_host: str, route_hosts: Sequence[str]) -> tuple[str, ...]:
    """Hostnames a route serves on a listener ("*" = any). Empty: they do not intersect."""
    if not route_hosts:
        return (listener_host or "*",)
    if not listener_host:
        return tuple(dict.fromkeys(route_hosts))
    out: list[str] = []
    for h in route_hosts:
        if covers(listener_host, h):
            out.append(h)
        elif covers(h, listener_host):
            out.append(listener_host)
    return tuple(dict.fromkeys(out))


def host_rank(h: str) -> tuple[int, int]:
    """Hostname precedence: characters of a non-wildcard name, then characters of the name."""
    if h in ("", "*"):
        return (0, 0)
    return (0 if h.startswith("*") else len(h), len(h))


# -- backends -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Problem:
    """Why part of a route could not be programmed: a condition reason and a message."""

    condition: str  # "ResolvedRefs" | "Accepted"
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ResolvedBackend:
    cluster: ir.Cluster | None
    problem: Problem | None = None


def resolve_ref(snapshot: InputSnapshot, route: KubeObject, ref: BackendRef,
                protocol: ir.UpstreamProtocol | None, mesh: bool = False) -> ResolvedBackend:
    """A backendRef of `route` -> cluster, or the ResolvedRefs reason it fails with. For mesh (GAMMA)
    routes a backend in another namespace needs no ReferenceGrant: a mesh route only augments how
    clients reach Services they can reach anyway (GEP-1294)."""
    what = f"{ref.kind} {ref.namespace}/{ref.name}"
    if norm_group(ref.group) != "" or ref.kind != "Service":
        return ResolvedBackend(None, Problem("ResolvedRefs", "InvalidKind",
                                             f"backendRef {ref.group}/{ref.kind} {ref.name}: only core Services "
                                             "are supported"))
    if not mesh and not ref_permitted(snapshot, route.kind, route.meta.namespace, "", "Service", ref.namespace,
                                      ref.name):
        return ResolvedBackend(None, Problem("ResolvedRefs", "RefNotPermitted",
                                             f"backendRef {what}: no ReferenceGrant in {ref.namespace} allows "
                                             f"references from {route.kind}s in {route.meta.namespace}"))
    lookup = resolve_backend(snapshot, ref.namespace, ref.name, ref.port)
    if lookup.cluster is None:
        return ResolvedBackend(None, Problem("ResolvedRefs", "BackendNotFound", f"backendRef: {lookup.message}"))
    cluster = lookup.cluster
    if protocol is not None and cluster.protocol != protocol and protocol != "tcp":
        # Another protocol than the Service's own: a cluster of its own name, on the same endpoints.
        cluster = replace(cluster, name=f"{cluster.name}|{protocol}", protocol=protocol)
    elif protocol == "tcp" and lookup.service_port is not None and upstream_protocol(lookup.service_port) == "http2":
        cluster = replace(cluster, name=f"{cluster.name}|tcp", protocol="tcp")
    if lookup.service_port is not None:
        btls = backend_tls(snapshot, ref.namespace, ref.name, lookup.service_port)
        if btls is not None:
            if btls.tls is None:
                # Fail closed (500): never plaintext where a policy asks for verified TLS. The route itself
                # stays valid; the policy's status says what is wrong.
                return ResolvedBackend(None)
            cluster = apply_backend_tls(cluster, btls)
    return ResolvedBackend(cluster)


# -- route rules -> IR ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ListenerContext:
    """What a rule's translation depends on besides the route: the listener's port and scheme."""

    port: int
    scheme: str = "http"


@dataclass(frozen=True, slots=True)
class RankedRoute:
    """An IR route with the sort key that orders it among every route on the same virtual host."""

    key: tuple[Any, ...]
    route: ir.Route


@dataclass
class RuleResult:
    routes: list[RankedRoute] = field(default_factory=list)
    clusters: list[ir.Cluster] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _mods(hm: HeaderModifier | None) -> ir.HeaderMods:
    if hm is None:
        return ir.HeaderMods()
    return ir.HeaderMods(set=hm.set, add=hm.add, remove=hm.remove)


def _merge_mods(a: ir.HeaderMods, b: ir.HeaderMods) -> ir.HeaderMods:
    return ir.HeaderMods(a.set + b.set, a.add + b.add, a.remove + b.remove)


def route_age(route: KubeObject) -> tuple[str, str]:
    """Tie-breakers between routes: creation time, then namespace/name."""
    ts = (route.raw.get("metadata") or {}).get("creationTimestamp") or ""
    return (str(ts), f"{route.meta.namespace}/{route.meta.name}")


def _path_match(m: HTTPMatch) -> ir.PathMatch:
    if m.path is None:
        return ir.PathMatch("prefix", "/")
    kind = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex"}[m.path.type]
    return ir.PathMatch(kind, m.path.value)  # type: ignore[arg-type]


def _match_key(path: ir.PathMatch, method: str, headers: int, query: int) -> tuple[int, int, int, int, int]:
    """HTTPRoute precedence: Exact, then RegularExpression, then the longest PathPrefix; then a method
    match, more header matches, more query matches (ties: the older route, then namespace/name)."""
    rank = {"exact": 0, "regex": 1, "prefix": 2, "raw_prefix": 2}[path.kind]
    length = len(path.value.rstrip("/")) if path.kind == "prefix" else len(path.value)
    return (rank, -length, 0 if method else 1, -headers, -query)


def _string_matches(items: Iterable[Any]) -> tuple[ir.HeaderMatch, ...]:
    return tuple(ir.HeaderMatch(h.name, "exact" if h.type == "Exact" else "regex", h.value) for h in items)


class RuleBuilder:
    """Turns HTTPRoute/GRPCRoute rules into ranked IR routes, resolving backends once per route."""

    def __init__(self, snapshot: InputSnapshot, route: KubeObject, grpc: bool = False, mesh: bool = False) -> None:
        self.snapshot = snapshot
        self.route = route
        self.grpc = grpc
        self.mesh = mesh
        self.protocol: ir.UpstreamProtocol | None = "http2" if grpc else None
        self._resolved: dict[BackendRef, ResolvedBackend] = {}
        self.problems: list[Problem] = []
        self.invalid_rules: dict[int, Problem] = {}
        self.clusters: dict[str, ir.Cluster] = {}
        self._complete = False  # every reference resolved (resolve_all ran)
        self._made: dict[tuple[ListenerContext, str], tuple[RankedRoute, ...]] = {}

    def backend(self, ref: BackendRef) -> ResolvedBackend:
        if ref not in self._resolved:
            res = resolve_ref(self.snapshot, self.route, ref, self.protocol, self.mesh)
            self._resolved[ref] = res
            if res.problem is not None:
                self.problems.append(res.problem)
            if res.cluster is not None:
                self.clusters[res.cluster.name] = res.cluster
        return self._resolved[ref]

    def resolve_all(self) -> None:
        """Resolve every reference now, so statuses do not depend on where the route attached; rules
        that ask for what cilia cannot do are set aside (`invalid_rules`) and left out of the IR."""
        for i, rule in enumerate(self.route.spec.rules):
            for ref in rule.backend_refs:
                self.backend(ref)
                for f in ref.filters:
                    if f.mirror is not None:
                        self.backend(f.mirror.backend)
            for f in rule.filters:
                if f.mirror is not None:
                    self.backend(f.mirror.backend)
                if f.type == "ExternalAuth":
                    self._invalid(i, f"filter type {f.type} is not supported")
                if f.type == "ExtensionRef" and f.extension is not None:
                    g, k, n = f.extension
                    self.problems.append(Problem("ResolvedRefs", "InvalidKind",
                                                 f"ExtensionRef {g}/{k} {n} is not supported: the rule answers 500"))
            for ref in rule.backend_refs:
                for f in ref.filters:
                    if f.type in ("URLRewrite", "RequestRedirect") and len(rule.backend_refs) > 1:
                        self._invalid(i, f"a {f.type} filter on a backendRef needs that backendRef to be the "
                                         "rule's only one")
                    elif f.type == "URLRewrite" and any(rf.type in ("URLRewrite", "RequestRedirect")
                                                        for rf in rule.filters):
                        self._invalid(i, "URLRewrite on a backendRef conflicts with the rule's own "
                                         "URLRewrite or RequestRedirect")
                    elif f.type not in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                                        "URLRewrite", "RequestRedirect"):
                        self._invalid(i, f"filter type {f.type} is not supported on a backendRef")
        self._complete = True

    def _invalid(self, index: int, message: str) -> None:
        if index not in self.invalid_rules:
            self.invalid_rules[index] = Problem("Accepted", "UnsupportedValue", f"spec.rules[{index}]: {message}")

    @property
    def accepted_problem(self) -> Problem | None:
        """Why the route is not accepted at all: every rule of it is invalid."""
        if self.invalid_rules and len(self.invalid_rules) == len(self.route.spec.rules):
            return self.invalid_rules[min(self.invalid_rules)]
        return None

    @property
    def partially_invalid(self) -> Problem | None:
        """Why some (not all) rules were left out: the route's PartiallyInvalid condition."""
        if self.invalid_rules and len(self.invalid_rules) < len(self.route.spec.rules):
            return self.invalid_rules[min(self.invalid_rules)]
        return None

    @property
    def refs_problem(self) -> Problem | None:
        return next((p for p in self.problems if p.condition == "ResolvedRefs"), None)

    # -- one rule ---------------------------------------------------------------------------------------
    def _backends(self, refs: Sequence[BackendRef]) -> tuple[tuple[ir.Backend, ...], bool]:
        """IR backends; the bool says an invalid ref keeps a share of traffic (answered with 500)."""
        out: list[ir.Backend] = []
        dangling = False
        for ref in refs:
            res = self.backend(ref)
            req = ir.HeaderMods()
            resp = ir.HeaderMods()
            for f in ref.filters:
                req = _merge_mods(req, _mods(f.request_headers))
                resp = _merge_mods(resp, _mods(f.response_headers))
            if res.cluster is None:
                if ref.weight > 0:
                    dangling = True
                    out.append(ir.Backend(INVALID_BACKEND, ref.weight))
                continue
            out.append(ir.Backend(res.cluster.name, ref.weight, req, resp))
        if dangling and not any(b.cluster != INVALID_BACKEND and b.weight > 0 for b in out):
            return (), False  # nothing valid: a plain 500
        return tuple(out), dangling

    def _common(self, filters: Sequence[Filter], refs: Sequence[BackendRef], ctx: ListenerContext,
                path: ir.PathMatch) -> dict[str, Any]:
        """Route fields from a rule's filters and backends (everything but the match)."""
        req = ir.HeaderMods()
        resp = ir.HeaderMods()
        redirect: ir.Redirect | None = None
        rewrite: ir.Rewrite | None = None
        mirrors: list[ir.Mirror] = []
        direct: ir.DirectResponse | None = None
        cors: ir.Cors | None = None
        # A URLRewrite or RequestRedirect on a rule's only backendRef acts as the rule's own.
        filters = [*filters, *(f for ref in refs for f in ref.filters if f.type in ("URLRewrite", "RequestRedirect"))]
        for f in filters:
            if f.request_headers is not None:
                req = _merge_mods(req, _mods(f.request_headers))
            elif f.response_headers is not None:
                resp = _merge_mods(resp, _mods(f.response_headers))
            elif f.redirect is not None:
                redirect = self._redirect(f, ctx, path)
            elif f.rewrite is not None:
                rw = f.rewrite
                rewrite = ir.Rewrite(
                    host=rw.hostname,
                    path_full=rw.path.value if rw.path is not None and rw.path.type == "ReplaceFullPath" else None,
                    path_prefix=rw.path.value if rw.path is not None and rw.path.type == "ReplacePrefixMatch"
                    else None)
            elif f.mirror is not None:
                res = self.backend(f.mirror.backend)
                if res.cluster is not None:
                    mirrors.append(ir.Mirror(res.cluster.name, f.mirror.percent))
            elif f.cors is not None:
                c = f.cors
                cors = ir.Cors(c.allow_origins, c.allow_methods, c.allow_headers, c.expose_headers,
                               c.allow_credentials, c.max_age_s)
            elif f.type == "ExtensionRef":
                direct = ir.DirectResponse(500)
        fields: dict[str, Any] = {"request_headers": req, "response_headers": resp, "cors": cors}
        if direct is not None:
            fields["direct"] = direct
            return fields
        if redirect is not None:
            fields["redirect"] = redirect
            return fields
        backends, dangling = self._backends(refs)
        fields.update(backends=backends, rewrite=rewrite, mirrors=tuple(mirrors))
        hashing = next((c.hash_policy for b in backends for c in [self.clusters.get(b.cluster)]
                        if c is not None and c.hash_policy), ())
        if hashing:  # a ring-hash Service among the backends: hash as it asks
            fields["hash_policy"] = hashing
        if dangling:
            fields["cluster_not_found_status"] = 500
        return fields

    @staticmethod
    def _redirect(f: Filter, ctx: ListenerContext, path: ir.PathMatch) -> ir.Redirect:
        rd = f.redirect
        assert rd is not None
        scheme = rd.scheme or ctx.scheme
        if rd.port is not None:
            port = rd.port
        elif rd.scheme:
            port = WELL_KNOWN_PORTS.get(rd.scheme, ctx.port)
        else:
            port = ctx.port
        # The Location carries no port when it is the scheme's own (the Host's port is stripped first).
        if WELL_KNOWN_PORTS.get(scheme) == port:
            port = 0
        full = prefix = matched = None
        if rd.path is not None and rd.path.type == "ReplaceFullPath":
            full = rd.path.value
        elif rd.path is not None:
            prefix = rd.path.value
            matched = path.value if path.kind in ("prefix", "raw_prefix") else "/"
        return ir.Redirect(scheme=rd.scheme, host=rd.hostname, port=port, path_full=full, path_prefix=prefix,
                           status_code=rd.status_code, matched_prefix=matched)

    def http_rule(self, index: int, rule: HTTPRule, ctx: ListenerContext, prefix: str) -> list[RankedRoute]:
        out = []
        age = route_age(self.route)
        for j, m in enumerate(rule.matches):
            path = _path_match(m)
            match = ir.RouteMatch(path=path, headers=_string_matches(m.headers),
                                  query=tuple(ir.QueryMatch(q.name, "exact" if q.type == "Exact" else "regex", q.value)
                                              for q in m.query), method=m.method)
            fields = self._common(rule.filters, rule.backend_refs, ctx, path)
            if "backends" in fields:
                fields["timeout_ms"] = rule.timeout_request_ms
                fields["per_try_timeout_ms"] = rule.timeout_backend_ms
                if rule.retry is not None and rule.retry.attempts != 0:
                    fields["retry"] = ir.RetryPolicy(1 if rule.retry.attempts is None else rule.retry.attempts,
                                                     rule.retry.codes, rule.retry.backoff_ms)
            name = f"{prefix}/HTTPRoute/{self.route.meta.namespace}/{self.route.meta.name}/{index}/{j}"
            route = ir.Route(name=name, match=match, sources=(str(self.route.ref),), **fields)
            key = (*_match_key(path, m.method, len(m.headers), len(m.query)), *age, index, j)
            out.append(RankedRoute(key, route))
        return out

    def grpc_rule(self, index: int, rule: GRPCRule, ctx: ListenerContext, prefix: str) -> list[RankedRoute]:
        out = []
        age = route_age(self.route)
        for j, m in enumerate(rule.matches):
            path = grpc_path(m)
            match = ir.RouteMatch(path=path, headers=_string_matches(m.headers), grpc=True)
            fields = self._common(rule.filters, rule.backend_refs, ctx, path)
            name = f"{prefix}/GRPCRoute/{self.route.meta.namespace}/{self.route.meta.name}/{index}/{j}"
            route = ir.Route(name=name, match=match, sources=(str(self.route.ref),), **fields)
            key = (*_grpc_key(m), *age, index, j)
            out.append(RankedRoute(key, route))
        return out

    def routes(self, ctx: ListenerContext, prefix: str) -> list[RankedRoute]:
        """Every rule of the route, for one listener. Once every reference is resolved the rules are a
        function of the listener alone, so a builder reused across translations makes them once."""
        if self._complete:
            made = self._made.get((ctx, prefix))
            if made is None:
                made = self._made[(ctx, prefix)] = tuple(self._routes(ctx, prefix))
            return list(made)
        return self._routes(ctx, prefix)

    def _routes(self, ctx: ListenerContext, prefix: str) -> list[RankedRoute]:
        out: list[RankedRoute] = []
        for i, rule in enumerate(self.route.spec.rules):
            if i in self.invalid_rules:
                continue
            if self.grpc:
                out.extend(self.grpc_rule(i, rule, ctx, prefix))
            else:
                out.extend(self.http_rule(i, rule, ctx, prefix))
        return out


def _grpc_key(m: GRPCMatch) -> tuple[int, int, int, int, int]:
    """GRPCRoute precedence: Exact before RegularExpression, then the longer service, then the longer
    method, then more header matches. Same shape as HTTP keys, so both kinds order on one host."""
    mm = m.method
    if mm is None:
        return (3, 0, 0, 1, -len(m.headers))
    rank = 0 if mm.type == "Exact" else 1
    return (rank, -len(mm.service), -len(mm.method), 1, -len(m.headers))


def grpc_path(m: GRPCMatch) -> ir.PathMatch:
    """A gRPC method match as a path match on `/SERVICE/METHOD`."""
    mm = m.method
    if mm is None:
        return ir.PathMatch("prefix", "/")
    if mm.type == "Exact":
        if mm.service and mm.method:
            return ir.PathMatch("exact", f"/{mm.service}/{mm.method}")
        if mm.service:
            return ir.PathMatch("raw_prefix", f"/{mm.service}/")
        return ir.PathMatch("regex", f"/[^/]+/{re.escape(mm.method)}")
    return ir.PathMatch("regex", f"/{mm.service or '[^/]+'}/{mm.method or '[^/]+'}")


def parent_ref_stanza(ref: ParentRef) -> dict[str, Any]:
    """The parentRef as echoed in status.parents[]: what was written, with group and kind filled in."""
    out: dict[str, Any] = {"group": ref.group, "kind": ref.kind}
    raw = ref.raw or {}
    if "namespace" in raw:
        out["namespace"] = raw["namespace"]
    out["name"] = ref.name
    if ref.section_name:
        out["sectionName"] = ref.section_name
    if ref.port is not None:
        out["port"] = ref.port
    return out


def same_parent(a: Mapping[str, Any], ref: ParentRef, route_ns: str) -> bool:
    """Whether a status.parents[].parentRef names the same parent as `ref`."""
    return (a.get("group", GROUP) == ref.group and a.get("kind", "Gateway") == ref.kind
            and (a.get("namespace") or route_ns) == ref.namespace and a.get("name") == ref.name
            and (a.get("sectionName") or "") == ref.section_name and a.get("port") == ref.port)


def route_parent_status(route: KubeObject, ref: ParentRef, conds: Sequence[Cond], status_time: str,
                        controller: str = CONTROLLER) -> dict[str, Any]:
    """One `status.parents` entry, written as `controller` (the parent Gateway's class's controller)."""
    prev_conds: Any = None
    for p in previous_status(route).get("parents") or []:
        if isinstance(p, Mapping) and p.get("controllerName") == controller \
                and isinstance(p.get("parentRef"), Mapping) and same_parent(p["parentRef"], ref, route.meta.namespace):
            prev_conds = p.get("conditions")
    return {"parentRef": parent_ref_stanza(ref), "controllerName": controller,
            "conditions": conditions(conds, route.meta.generation, prev_conds, fallback_time(route, status_time))}


def rule_conditions(builder: RuleBuilder) -> list[Cond]:
    """ResolvedRefs, and PartiallyInvalid when some rules were left out (GEP-1364)."""
    out = [refs_condition(builder)]
    p = builder.partially_invalid
    if p is not None:
        out.append(Cond("PartiallyInvalid", True, p.reason, p.message + " (the rule is left out)"))
    return out


def refs_condition(builder: RuleBuilder) -> Cond:
    p = builder.refs_problem
    if p is None:
        return Cond("ResolvedRefs", True, "ResolvedRefs", "all references resolved")
    return Cond("ResolvedRefs", False, p.reason, p.message)


def sort_routes(routes: Iterable[RankedRoute]) -> tuple[ir.Route, ...]:
    return tuple(r.route for r in sorted(routes, key=lambda r: r.key))
