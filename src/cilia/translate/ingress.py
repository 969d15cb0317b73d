"""Kubernetes Ingress (networking.k8s.io/v1) -> listeners, routes, clusters and SDS secrets.

Which Ingresses are ours: those whose class (`spec.ingressClassName`, else the legacy
`kubernetes.io/ingress.class` annotation, else the one IngressClass annotated
`ingressclass.kubernetes.io/is-default-class: "true"`) is an IngressClass with controller
`cilia.io/ingress-controller` (or another controller name cilia claims: `--ingress-controller-name`,
e.g. Cilium's `cilium.io/ingress-controller`). The class name `cilia` is ours even without an
IngressClass object (unless one by that name names another controller), so plain manifest directories
work; so is `cilium` while cilia claims Cilium's controller name.

Who serves them: every Ingress of class C goes to the `ingress~C` proxies (dedicated mode). Ingresses
in shared mode (annotation `ingress.cilia.io/loadbalancer-mode: shared`, or `--ingress-default-mode
shared`) are also merged, across classes, into one configuration for every `node~NAME` proxy, as
Cilium's shared ingress does. Listeners bind `ingress_address` on `ingress_http_port` and, when some
host has a usable certificate, `ingress_https_port`.

Matching, per the Ingress specification:
- Hosts: `foo.example.com` exactly; `*.example.com` exactly one label more (`a.example.com`, not
  `a.b.example.com` nor `example.com`: requests that fail that check fall through to the host-less
  rules); no host = every host. A port in the Host header is ignored for matching.
- Paths: `Exact` is the whole path; `Prefix` is element-wise with trailing slashes ignored (`/foo` and
  `/foo/` both match `/foo`, `/foo/` and `/foo/bar`, never `/foobar`); `ImplementationSpecific` is a
  plain string prefix here (`/foo` matches `/foobar`), and an empty path matches everything.
- Precedence: the rules of all Ingresses for one host are merged; the longest path wins, and at equal
  length Exact beats Prefix, which beats ImplementationSpecific. The same host + path in two Ingresses
  is a conflict: the oldest Ingress (creationTimestamp, then namespace/name) keeps it and the other
  gets an issue.
- Default backend: a request that matches a host but none of its paths goes to the `defaultBackend`
  of the oldest Ingress with rules for that host that has one; a request that matches no host at all
  (and no host-less rule) goes to the oldest Ingress's `defaultBackend`. Without one: 404.
- A backend that cannot be used (missing Service or port, or a `resource` backend, which cilia does
  not support) keeps its path but answers 503, so the request is not silently sent elsewhere; the
  Ingress gets an issue naming the field.

TLS: each `spec.tls` entry's Secret (`kubernetes.io/tls`, keys tls.crt and tls.key) becomes an SDS
secret and a filter chain on the HTTPS listener matching its hosts by SNI; an entry without hosts
is the certificate for every SNI not matched otherwise (for the hosts of that Ingress). A host is
served over HTTPS only when a usable certificate covers it; a missing or unusable Secret means its
hosts are not served over TLS and the Ingress gets an issue. With `ingress.cilia.io/force-https:
"true"` (or "enabled"), plain-HTTP requests for the hosts that Ingress serves over TLS get a 301 to
https (naming the HTTPS port unless the ports are the standard 80/443).

Status: every Ingress we own gets `status.loadBalancer.ingress` = `ingress_status_address`, else
`ingress_address`; a wildcard address (0.0.0.0, ::) is reported as the loopback address of its
family, which is where a file-mode proxy on the same machine answers. A non-IP value is reported as
`hostname`. Ports are listed when they are not 80/443.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from cilia.diagnostics import Issue
from cilia.ir.model import (
    Backend,
    Bundle,
    Cluster,
    DirectResponse,
    FilterChain,
    HeaderMatch,
    HttpApp,
    Listener,
    PathMatch,
    ProxyScope,
    Redirect,
    Route,
    RouteConfig,
    RouteMatch,
    Secret,
    TlsTermination,
    VirtualHost,
)
from cilia.k8s.ingress import CONTROLLER, LEGACY_CLASS_ANNOTATION, IngressBackend, IngressPath, IngressSpec
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import Memo, ObjectStatus, Partial, TranslateOptions
from cilia.translate.incremental import Ident, UnitMemo, memo_enabled
from cilia.translate.services import resolve_backend
from cilia.translate.tls import TlsSecret, host_covered, load_tls_secret

IMPLICIT_CLASS = "cilia"
# Class names that are ours without an IngressClass object, while cilia claims their controller.
IMPLICIT_CLASSES = {CONTROLLER: IMPLICIT_CLASS, "cilium.io/ingress-controller": "cilium"}
FORCE_HTTPS_ANNOTATION = "ingress.cilia.io/force-https"
MODE_ANNOTATION = "ingress.cilia.io/loadbalancer-mode"
MODES = ("dedicated", "shared")
SHARED_PREFIX = "ingress-shared"
INGRESS_API = "networking.k8s.io/v1"
UNAVAILABLE = DirectResponse(503, "backend not available\n")
KIND_RANK = {"exact": 0, "prefix": 1, "raw_prefix": 2}
CATCH_ALL = ""  # the host of host-less rules


# -- which Ingresses are ours -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClassView:
    """The IngressClasses cilia serves, and the cluster's default class (if exactly one is marked)."""

    owned: frozenset[str]
    default: str | None
    issues: tuple[Issue, ...] = ()


def ingress_classes(snapshot: InputSnapshot, controllers: Iterable[str] = (CONTROLLER,)) -> ClassView:
    claimed = {CONTROLLER, *controllers}
    owned: set[str] = set()
    names: set[str] = set()
    defaults: list[str] = []
    for obj in snapshot.list("IngressClass"):
        names.add(obj.meta.name)
        if obj.spec.controller in claimed:
            owned.add(obj.meta.name)
        if obj.spec.is_default:
            defaults.append(obj.meta.name)
    for controller, implicit in IMPLICIT_CLASSES.items():
        if controller in claimed and implicit not in names:
            owned.add(implicit)
    issues: list[Issue] = []
    default = defaults[0] if len(defaults) == 1 else None
    if len(defaults) > 1:
        for name in defaults:
            issues.append(Issue(f"IngressClass {name}", "metadata.annotations", (
                f"{len(defaults)} IngressClasses are marked default ({', '.join(defaults)}); Ingresses "
                "without a class are not served until only one is"), severity="warning"))
    return ClassView(frozenset(owned), default, tuple(issues))


def class_of(obj: KubeObject, view: ClassView) -> tuple[str | None, list[Issue]]:
    """The Ingress's class if cilia serves it, else None."""
    spec: IngressSpec = obj.spec
    legacy = obj.meta.annotations.get(LEGACY_CLASS_ANNOTATION, "")
    issues: list[Issue] = []
    if spec.class_name:
        cls = spec.class_name
        if legacy and legacy != cls and cls in view.owned:
            issues.append(Issue(str(obj.ref), f"metadata.annotations.{LEGACY_CLASS_ANNOTATION}", (
                f"ignored: spec.ingressClassName {cls!r} takes precedence over the annotation {legacy!r}"),
                severity="warning"))
    elif legacy:
        cls = legacy
    elif view.default is not None:
        cls = view.default
    else:
        return None, []
    return (cls if cls in view.owned else None), issues


def _mode(obj: KubeObject, opts: TranslateOptions) -> tuple[str, list[Issue]]:
    value = obj.meta.annotations.get(MODE_ANNOTATION, "").strip().lower()
    default = opts.ingress_default_mode if opts.ingress_default_mode in MODES else "dedicated"
    if not value:
        return default, []
    if value not in MODES:
        return default, [Issue(str(obj.ref), f"metadata.annotations.{MODE_ANNOTATION}",
                               f"must be dedicated or shared, got {value!r}; using {default}", severity="warning")]
    return value, []


def _age_key(obj: KubeObject) -> tuple[bool, float, str, str]:
    created = obj.spec.created
    return (created is None, created or 0.0, obj.meta.namespace, obj.meta.name)


# -- status -----------------------------------------------------------------------------------------
def status_address(opts: TranslateOptions) -> dict[str, str]:
    return dict(_address_entry(opts.ingress_status_address or opts.ingress_address))


@functools.lru_cache(maxsize=32)
def _address_entry(addr: str) -> tuple[tuple[str, str], ...]:
    """Parsed once per address, not once per Ingress."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return (("hostname", addr),)
    if ip.is_unspecified:
        return (("ip", "::1" if ip.version == 6 else "127.0.0.1"),)
    return (("ip", str(ip)),)


def ingress_status(obj: KubeObject, opts: TranslateOptions) -> ObjectStatus:
    entry: dict[str, object] = dict(status_address(opts))
    if (opts.ingress_http_port, opts.ingress_https_port) != (80, 443):
        ports = [{"port": opts.ingress_http_port, "protocol": "TCP"}]
        if obj.spec.tls:
            ports.append({"port": opts.ingress_https_port, "protocol": "TCP"})
        entry["ports"] = ports
    return ObjectStatus(INGRESS_API, "Ingress", obj.meta.namespace, obj.meta.name, obj.meta.generation,
                        {"loadBalancer": {"ingress": [entry]}})


# -- paths --------------------------------------------------------------------------------------------
def path_match(p: IngressPath) -> tuple[PathMatch | None, str]:
    """The IR match for one Ingress path (normalised, so equal matches compare equal), or why none."""
    value = p.path
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None, "contains control characters"
    if p.path_type == "Exact":
        if "?" in value or "#" in value:
            return None, f"{value!r} can never match: paths are matched without the query string and fragment"
        return PathMatch("exact", value), ""
    if p.path_type == "Prefix":
        if "?" in value or "#" in value:
            return None, f"{value!r}: a Prefix path cannot contain '?' or '#'"
        return PathMatch("prefix", value.rstrip("/") or "/"), ""
    # ImplementationSpecific: a plain string prefix; "" and "/" match everything.
    if not value or value == "/":
        return PathMatch("prefix", "/"), ""
    return PathMatch("raw_prefix", value), ""


def _precedence(m: PathMatch) -> tuple[int, int]:
    return (-len(m.value), KIND_RANK[m.kind])


def wildcard_guard(host: str) -> HeaderMatch:
    """`*.example.com` must cover exactly one label; Envoy's wildcard domains cover any number."""
    suffix = host[1:].replace(".", r"\.")
    return HeaderMatch(":authority", "regex", rf"(?i)^[^.]+{suffix}(:[0-9]+)?$")


# -- one Ingress, resolved on its own ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Resolved:
    """One backend as a route: forwarding to `cluster`, or answering 503 with `issues` saying why."""

    route: Route
    cluster: Cluster | None = None
    issues: tuple[Issue, ...] = ()


@dataclass(frozen=True, slots=True)
class _PathUnit:
    """One `spec.rules[i].http.paths[j]`: its match and backend, or (`match` None) why it is ignored."""

    host: str
    where: str
    path: str
    path_type: str
    match: PathMatch | None
    resolved: _Resolved | None = None
    problem: Issue | None = None


@dataclass(frozen=True, slots=True)
class _TlsUnit:
    """One `spec.tls[k]` entry and its Secret as loaded (None: the entry names none)."""

    where: str
    hosts: tuple[str, ...]
    secret_name: str
    loaded: TlsSecret | None


@dataclass(frozen=True, slots=True)
class IngressUnit:
    """One Ingress with its backends and Secrets resolved: everything merging it into a listener group
    needs, and nothing that depends on the other Ingresses there. Reused (the very same object, and so the
    very same routes and clusters) while the Ingress and the Services and Secrets it read are unchanged."""

    ref: str
    namespace: str
    hosts: tuple[str, ...]  # its rule hosts, each once, in order
    default: _Resolved | None
    paths: tuple[_PathUnit, ...]
    tls: tuple[_TlsUnit, ...]
    force: bool  # force-https
    own_hosts: frozenset[str]  # what a TLS entry without hosts covers

    def resolved(self) -> dict[str, _Resolved]:
        """Its resolved backends by route name."""
        out = {p.resolved.route.name: p.resolved for p in self.paths if p.resolved is not None}
        if self.default is not None:
            out[self.default.route.name] = self.default
        return out


def _resolve(snapshot: InputSnapshot, ref: str, namespace: str, backend: IngressBackend, where: str, name: str,
             match: PathMatch) -> _Resolved:
    rmatch = RouteMatch(path=match)
    if backend.resource is not None:
        r = backend.resource
        return _Resolved(Route(name, rmatch, direct=UNAVAILABLE, sources=(ref,)), None, (Issue(
            ref, f"{where}.resource", (
                f"resource backends ({r.kind} {r.name}) are not supported; requests here get 503")),))
    assert backend.service is not None
    svc = backend.service
    look = resolve_backend(snapshot, namespace, svc.name, svc.port)
    if look.cluster is None:
        sub = "name" if look.reason == "BackendNotFound" else (
            "port.number" if isinstance(svc.port, int) else "port.name")
        return _Resolved(Route(name, rmatch, direct=UNAVAILABLE, sources=(ref,)), None, (
            Issue(ref, f"{where}.service.{sub}", f"{look.message}; requests here get 503"),))
    return _Resolved(Route(name, rmatch, backends=(Backend(look.cluster.name),), sources=(ref,)), look.cluster)


def ingress_unit(snapshot: InputSnapshot, obj: KubeObject, readable: tuple[str, ...] | None,
                 old: IngressUnit | None = None) -> IngressUnit:
    """`obj` resolved on its own. Parts equal to `old`'s (its previous unit) are `old`'s very objects, and
    `old` itself is returned when the whole is equal."""
    spec: IngressSpec = obj.spec
    ref = str(obj.ref)
    ns = obj.meta.namespace
    base = f"{ns}/{obj.meta.name}"
    before = old.resolved() if old is not None else {}

    def resolve(backend: IngressBackend, where: str, name: str, match: PathMatch) -> _Resolved:
        new = _resolve(snapshot, ref, ns, backend, where, name, match)
        prev = before.get(name)
        return prev if prev is not None and prev == new else new

    default = None
    if spec.default_backend is not None:
        default = resolve(spec.default_backend, "spec.defaultBackend", f"{base}/defaultBackend",
                          PathMatch("prefix", "/"))
    hosts: dict[str, None] = {}
    paths: list[_PathUnit] = []
    for i, rule in enumerate(spec.rules):
        hosts.setdefault(rule.host)
        for j, p in enumerate(rule.paths):
            where = f"spec.rules[{i}].http.paths[{j}]"
            match, problem = path_match(p)
            if match is None:
                paths.append(_PathUnit(rule.host, where, p.path, p.path_type, None, problem=Issue(
                    ref, f"{where}.path", f"{problem}; this path is ignored")))
            else:
                paths.append(_PathUnit(rule.host, where, p.path, p.path_type, match, resolve(
                    p.backend, f"{where}.backend", f"{base}/rules/{i}/paths/{j}", match)))
    loaded: dict[str, TlsSecret] = {}
    tls: list[_TlsUnit] = []
    for k, t in enumerate(spec.tls):
        secret = None
        if t.secret_name:
            secret = loaded.get(t.secret_name)
            if secret is None:
                secret = loaded[t.secret_name] = load_tls_secret(snapshot, ns, t.secret_name, readable)
        tls.append(_TlsUnit(f"spec.tls[{k}]", tuple(t.hosts), t.secret_name, secret))
    own = set(hosts)
    if default is not None:
        own.add(CATCH_ALL)
    force = obj.meta.annotations.get(FORCE_HTTPS_ANNOTATION, "").strip().lower() in ("true", "enabled")
    unit = IngressUnit(ref, ns, tuple(hosts), default, tuple(paths), tuple(tls), force, frozenset(own))
    return old if old is not None and old == unit else unit


# -- one served configuration (a class, or the shared one), merged from its Ingresses' units ----------
@dataclass(slots=True)
class _Group:
    opts: TranslateOptions
    prefix: str
    issues: list[Issue] = field(default_factory=list)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    routes: dict[str, list[Route]] = field(default_factory=lambda: defaultdict(list))
    contributors: dict[str, list[IngressUnit]] = field(default_factory=lambda: defaultdict(list))
    defaults: dict[str, Route] = field(default_factory=dict)  # by Ingress ref
    global_default: Route | None = None
    tls_hosts: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # host -> (sds, ref, field)
    default_tls: tuple[str, str, str] | None = None
    default_tls_hosts: set[str] = field(default_factory=set)
    secrets: dict[str, Secret] = field(default_factory=dict)
    force: set[str] = field(default_factory=set)

    def use(self, resolved: _Resolved) -> Route:
        self.issues.extend(resolved.issues)
        if resolved.cluster is not None:
            self.clusters.setdefault(resolved.cluster.name, resolved.cluster)
        return resolved.route

    # -- rules -------------------------------------------------------------------------------------
    def add_rules(self, members: list[IngressUnit]) -> None:
        seen: dict[tuple[str, str, str], tuple[str, str]] = {}
        entries: dict[str, list[tuple[tuple[int, int], Route]]] = defaultdict(list)
        for u in members:
            ref = u.ref
            if u.default is not None:
                route = self.use(u.default)
                self.defaults[ref] = route
                if self.global_default is None:
                    self.global_default = route
            for host in u.hosts:
                self.contributors[host].append(u)
            for p in u.paths:
                match = p.match
                if match is None:
                    assert p.problem is not None
                    self.issues.append(p.problem)
                    continue
                key = (p.host, match.kind, match.value)
                owner = seen.get(key)
                if owner is not None:
                    self.issues.append(Issue(ref, p.where, _duplicate_message(p, ref, owner)))
                    continue
                seen[key] = (ref, p.where)
                assert p.resolved is not None
                entries[p.host].append((_precedence(match), self.use(p.resolved)))
        for host, items in entries.items():
            items.sort(key=lambda e: e[0])  # stable: the older Ingress first at equal precedence
            self.routes[host] = [r for _, r in items]
        self._report_default_conflicts(members)

    def _report_default_conflicts(self, members: list[IngressUnit]) -> None:
        g = self.global_default
        if g is None:
            return
        for u in members:
            mine = self.defaults.get(u.ref)
            if mine is not None and mine is not g and (mine.backends, mine.direct) != (g.backends, g.direct):
                scope = "applies to the hosts of this Ingress only" if any(u.hosts) else "is not used"
                self.issues.append(Issue(u.ref, "spec.defaultBackend", (
                    f"{scope}: {', '.join(g.sources)} is older and its defaultBackend serves requests that "
                    "match no host"), severity="warning"))

    # -- TLS ---------------------------------------------------------------------------------------
    def add_tls(self, members: list[IngressUnit]) -> None:
        for u in members:
            ref = u.ref
            for t in u.tls:
                where = t.where
                hosts_text = ", ".join(t.hosts) if t.hosts else "the hosts of this Ingress"
                if t.loaded is None:
                    self.issues.append(Issue(ref, f"{where}.secretName", (
                        f"is required: cilia terminates TLS and does not route by SNI alone; {hosts_text} "
                        "not served over TLS")))
                    continue
                cached = t.loaded
                for w in cached.warnings:
                    self.issues.append(Issue(ref, f"{where}.secretName", w, severity="warning"))
                if cached.secret is None:
                    self.issues.append(Issue(ref, f"{where}.secretName",
                                             f"{cached.error}; {hosts_text} not served over TLS"))
                    continue
                sds = cached.secret.name
                used = False
                covered: set[str] = set()
                if not t.hosts:
                    if self.default_tls is not None and self.default_tls[0] != sds:
                        self.issues.append(Issue(ref, where, (
                            f"a TLS entry without hosts sets the certificate for every SNI name; "
                            f"{self.default_tls[1]} ({self.default_tls[2]}) is older and sets "
                            f"{self.default_tls[0]}; this entry is ignored")))
                    else:
                        self.default_tls = self.default_tls or (sds, ref, where)
                        self.default_tls_hosts |= u.own_hosts
                        covered |= u.own_hosts
                        used = True
                for h, host in enumerate(t.hosts):
                    prev = self.tls_hosts.get(host)
                    if prev is not None and prev[0] != sds:
                        self.issues.append(Issue(ref, f"{where}.hosts[{h}]", (
                            f"host {host} already uses Secret {prev[0]} from {prev[1]} ({prev[2]}), which is "
                            "older; this entry is ignored for it")))
                        continue
                    if prev is None:
                        self.tls_hosts[host] = (sds, ref, where)
                    if cached.dns_names and not host_covered(host, cached.dns_names):
                        self.issues.append(Issue(ref, f"{where}.hosts[{h}]", (
                            f"the certificate in Secret {u.namespace}/{t.secret_name} is not valid for {host} "
                            f"(it names {', '.join(cached.dns_names)}); clients that verify it will refuse"),
                            severity="warning"))
                    covered.add(host)
                    covered |= {r for r in u.own_hosts if r and _tls_covers(host, r)}
                    used = True
                if used:
                    self.secrets[sds] = cached.secret
                    if u.force:
                        self.force |= covered

    def tls_served(self, host: str) -> bool:
        """Whether a usable certificate covers `host` (exactly, by a one-label wildcard, or as default)."""
        if host in self.default_tls_hosts or host in self.tls_hosts:
            return True
        return bool(host) and not host.startswith("*.") and "*." + host.partition(".")[2] in self.tls_hosts

    # -- output ------------------------------------------------------------------------------------
    def vhost_default(self, host: str) -> Route | None:
        for u in self.contributors.get(host, []):  # oldest first
            route = self.defaults.get(u.ref)
            if route is not None:
                return route
        return self.global_default

    def catch_all(self) -> list[Route]:
        """What a request for a host no rule names gets: the host-less rules, then the default backend."""
        routes = list(self.routes.get(CATCH_ALL, []))
        if self.global_default is not None:
            routes.append(self.global_default)
        return routes

    def https_redirect(self, name: str) -> Route:
        """301 to https. On the standard ports the port is left out (Envoy drops an explicit :80) so the
        URL stays clean; otherwise it is set, since the client's port is the HTTP one."""
        o = self.opts
        port = 0 if (o.ingress_http_port, o.ingress_https_port) == (80, 443) else o.ingress_https_port
        return Route(name, RouteMatch(), redirect=Redirect(scheme="https", port=port, status_code=301))

    def route_config(self, scheme: str) -> RouteConfig:
        name = f"{self.prefix}/{scheme}"
        rule_hosts = {h for h in self.routes if h != CATCH_ALL}
        catch_all = self.catch_all()
        redirect = scheme == "http"
        if scheme == "http":
            hosts = rule_hosts | {h for h in self.force if h and self.tls_served(h)}
            with_catch_all = bool(catch_all)
        else:
            hosts = {h for h in rule_hosts if self.tls_served(h)} | (set(self.tls_hosts) - rule_hosts)
            with_catch_all = bool(catch_all) and CATCH_ALL in self.default_tls_hosts
        vhosts = []
        for host in sorted(hosts):
            if redirect and host in self.force and self.tls_served(host):
                routes = [self.https_redirect(f"{name}/{host}/force-https")]
            elif host in rule_hosts:
                routes = list(self.routes[host])
                default = self.vhost_default(host)
                if default is not None:
                    routes.append(default)
            else:  # a TLS host without rules of its own: served like any unnamed host
                vhosts.append(VirtualHost(host, (host,), tuple(catch_all)))
                continue
            if host.startswith("*."):
                guard = wildcard_guard(host)
                routes = [replace(r, match=replace(r.match, headers=(*r.match.headers, guard))) for r in routes]
                routes += catch_all  # a name the wildcard does not cover is treated as unnamed
            vhosts.append(VirtualHost(host, (host,), tuple(routes)))
        if with_catch_all:
            if redirect and CATCH_ALL in self.force and self.tls_served(CATCH_ALL):
                catch_all = [self.https_redirect(f"{name}/*/force-https")]
            vhosts.append(VirtualHost("*", ("*",), tuple(catch_all)))
        return RouteConfig(name, tuple(v for v in vhosts if v.routes), ignore_port_in_host_matching=True)

    def listeners(self, sources: tuple[str, ...]) -> list[Listener]:
        o = self.opts
        http = Listener(f"{self.prefix}/http", o.ingress_address, o.ingress_http_port, (
            FilterChain(f"{self.prefix}/http", HttpApp(f"{self.prefix}/http", use_remote_address=True)),),
            sources=sources)
        by_secret: dict[str, list[str]] = defaultdict(list)
        for host, (sds, _, _) in self.tls_hosts.items():
            by_secret[sds].append(host)
        app = HttpApp(f"{self.prefix}/https", use_remote_address=True)
        chains = [FilterChain(f"{self.prefix}/https/{sds}", app, server_names=tuple(sorted(hosts)),
                              tls=TlsTermination((sds,))) for sds, hosts in sorted(by_secret.items())]
        if self.default_tls is not None:
            chains.append(FilterChain(f"{self.prefix}/https/default", app, tls=TlsTermination((self.default_tls[0],))))
        if not chains:
            return [http]
        https = Listener(f"{self.prefix}/https", o.ingress_address, o.ingress_https_port, tuple(chains),
                         listener_filters=("tls_inspector",), sources=sources)
        return [http, https]

    def bundle(self, key: str, scope: ProxyScope, members: list[IngressUnit]) -> Bundle:
        sources = tuple(u.ref for u in members)
        listeners = self.listeners(sources)
        routes = [self.route_config("http")]
        if len(listeners) > 1:
            routes.append(self.route_config("https"))
        used = {b.cluster for rc in routes for vh in rc.virtual_hosts for r in vh.routes for b in r.backends}
        return Bundle(key=key, scope=scope, listeners=tuple(listeners), routes=tuple(routes),
                      clusters=tuple(self.clusters[n] for n in sorted(self.clusters) if n in used),
                      secrets=tuple(self.secrets[n] for n in sorted(self.secrets)), sources=sources)


def _tls_covers(tls_host: str, host: str) -> bool:
    """Whether a TLS entry for `tls_host` serves rule host `host` (a wildcard covers one label)."""
    if tls_host == host:
        return True
    return tls_host.startswith("*.") and bool(host) and not host.startswith("*.") and \
        host.partition(".")[2] == tls_host[2:]


def _duplicate_message(p: _PathUnit, ref: str, owner: tuple[str, str]) -> str:
    what = f"host {p.host or '*'} path {p.path or '/'!r} ({p.path_type})"
    if owner[0] == ref:
        return f"{what} duplicates {owner[1]}; this path is ignored"
    return f"{what} is already served by {owner[0]} ({owner[1]}), which is older; this path is ignored"


def build_group(opts: TranslateOptions, prefix: str, key: str, scope: ProxyScope,
                members: list[IngressUnit]) -> tuple[Bundle, tuple[Issue, ...]]:
    """A listener group's bundle and issues from its Ingresses' units, oldest first."""
    group = _Group(opts, prefix)
    group.add_rules(members)
    group.add_tls(members)
    return group.bundle(key, scope, members), tuple(group.issues)


# -- reuse across translations ------------------------------------------------------------------------
N = TypeVar("N", Listener, Cluster, Secret, VirtualHost)


def _same_nodes(new: tuple[N, ...], old: tuple[N, ...]) -> tuple[N, ...]:
    """`new` with each node equal to `old`'s node of that name replaced by that very object; `old` itself
    when that makes them the same."""
    by_name = {n.name: n for n in old}
    out = tuple(p if (p := by_name.get(n.name)) is not None and (p is n or p == n) else n for n in new)
    if len(out) == len(old) and all(a is b for a, b in zip(out, old, strict=True)):
        return old
    return out


def _same_route_config(new: RouteConfig, old: RouteConfig | None) -> RouteConfig:
    if old is None:
        return new
    vhosts = _same_nodes(new.virtual_hosts, old.virtual_hosts)
    if vhosts is old.virtual_hosts and replace(new, virtual_hosts=vhosts) == old:
        return old
    return replace(new, virtual_hosts=vhosts)


def reuse_nodes(new: Bundle, old: Bundle | None) -> Bundle:
    """`new` with every listener, route configuration, virtual host, cluster and secret that equals the
    one of that name in `old` replaced by `old`'s very object (render reuses those by identity), and `old`
    itself when all of it is equal."""
    if old is None:
        return new
    old_routes = {rc.name: rc for rc in old.routes}
    routes = tuple(_same_route_config(rc, old_routes.get(rc.name)) for rc in new.routes)
    if len(routes) == len(old.routes) and all(a is b for a, b in zip(routes, old.routes, strict=True)):
        routes = old.routes
    same = replace(new, listeners=_same_nodes(new.listeners, old.listeners), routes=routes,
                   clusters=_same_nodes(new.clusters, old.clusters), secrets=_same_nodes(new.secrets, old.secrets))
    return old if same == old else same


@dataclass(frozen=True, slots=True)
class _GroupEntry:
    signature: tuple[Any, ...]
    members: tuple[IngressUnit, ...]
    bundle: Bundle
    issues: tuple[Issue, ...]


@dataclass(frozen=True, slots=True)
class _Placement:
    """Where one Ingress goes (its class, whether shared), its status and the issues deciding that gave."""

    obj: KubeObject
    view: ClassView
    options: tuple[object, ...]  # _placement_options
    cls: str | None
    shared: bool
    issues: tuple[Issue, ...]
    status: ObjectStatus | None


# Per Ingress (by namespace/name): its unit, reused while the Ingress (by identity), the Secret namespaces
# and the Services and Secrets it read are unchanged (translate/incremental.py); and its last unit, which a
# recomputed unit keeps the equal parts of. Per listener group (by bundle key): its bundle and issues,
# reused while its units are the very same objects and the options it uses are unchanged. Per Ingress: where
# it goes. A value is a pure function of what it is checked against, so sharing these between control planes
# in one process is safe.
_UNITS: UnitMemo[IngressUnit] = UnitMemo()
_LAST_UNITS: Memo[IngressUnit] = Memo()
_GROUPS: Memo[_GroupEntry] = Memo()
_PLACEMENTS: Memo[_Placement] = Memo()
_VIEWS: Memo[ClassView] = Memo()


def _unit(snapshot: InputSnapshot, obj: KubeObject, opts: TranslateOptions) -> IngressUnit:
    readable = opts.secret_namespaces
    if not memo_enabled():
        return ingress_unit(snapshot, obj, readable)
    key = (obj.meta.namespace, obj.meta.name)
    unit = _UNITS.compute(key, (Ident(obj), readable), snapshot,
                          lambda view: ingress_unit(view, obj, readable, _LAST_UNITS.get(key)))
    return _LAST_UNITS.put(key, unit)


def _group_options(o: TranslateOptions) -> tuple[object, ...]:
    """The options a listener group's bundle depends on (any other option may change without rebuilding it)."""
    return (o.ingress_address, o.ingress_http_port, o.ingress_https_port)


def _placement_options(o: TranslateOptions) -> tuple[object, ...]:
    """The options where an Ingress goes and its status depend on."""
    return (o.ingress_default_mode, o.ingress_status_address, o.ingress_address, o.ingress_http_port,
            o.ingress_https_port)


def _group(opts: TranslateOptions, prefix: str, key: str, scope: ProxyScope,
           members: list[IngressUnit]) -> tuple[Bundle, tuple[Issue, ...]]:
    if not memo_enabled():
        return build_group(opts, prefix, key, scope, members)
    signature = (prefix, scope, *_group_options(opts))
    entry = _GROUPS.get(key)
    if entry is not None and entry.signature == signature and len(entry.members) == len(members) and \
            all(a is b for a, b in zip(entry.members, members, strict=True)):
        return entry.bundle, entry.issues
    bundle, issues = build_group(opts, prefix, key, scope, members)
    if entry is not None:
        bundle = reuse_nodes(bundle, entry.bundle)
    _GROUPS.put(key, _GroupEntry(signature, tuple(members), bundle, issues))
    return bundle, issues


def _place(obj: KubeObject, view: ClassView, opts: TranslateOptions, options: tuple[object, ...]) -> _Placement:
    cls, issues = class_of(obj, view)
    if cls is None:
        return _Placement(obj, view, options, None, False, (), None)
    mode, more = _mode(obj, opts)
    return _Placement(obj, view, options, cls, mode == "shared", (*issues, *more), ingress_status(obj, opts))


def _placement(obj: KubeObject, view: ClassView, opts: TranslateOptions, options: tuple[object, ...]) -> _Placement:
    if not memo_enabled():
        return _place(obj, view, opts, options)
    key = (obj.meta.namespace, obj.meta.name)
    hit = _PLACEMENTS.get(key)
    if hit is None or hit.obj is not obj or hit.view is not view or hit.options != options:
        hit = _place(obj, view, opts, options)
    return _PLACEMENTS.put(key, hit)


def _same_view(view: ClassView) -> ClassView:
    """The last run's equal view, so that placements can compare views by identity."""
    if not memo_enabled():
        return view
    last = _VIEWS.get("")
    return _VIEWS.put("", last if last is not None and last == view else view)


def translate_ingresses(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    view = _same_view(ingress_classes(snapshot, opts.ingress_controllers))
    issues: list[Issue] = list(view.issues)
    by_class: dict[str, list[tuple[KubeObject, IngressUnit]]] = defaultdict(list)
    shared: list[tuple[KubeObject, IngressUnit]] = []
    statuses: list[ObjectStatus] = []
    options = _placement_options(opts)
    for obj in snapshot.list("Ingress"):
        place = _placement(obj, view, opts, options)
        if place.cls is None:
            continue
        issues.extend(place.issues)
        member = (obj, _unit(snapshot, obj, opts))
        by_class[place.cls].append(member)
        if place.shared:
            shared.append(member)
        assert place.status is not None
        statuses.append(place.status)
    bundles: list[Bundle] = []
    groups: list[tuple[str, str, ProxyScope, list[tuple[KubeObject, IngressUnit]]]] = [
        (f"ingress/{cls}", f"ingress:{cls}", ProxyScope(frozenset({"ingress"}), frozenset({cls})), members)
        for cls, members in sorted(by_class.items())]
    if shared:
        groups.append((SHARED_PREFIX, "ingress:shared", ProxyScope(frozenset({"node"})), shared))
    for prefix, key, scope, members in groups:
        oldest_first = [u for _, u in sorted(members, key=lambda m: _age_key(m[0]))]
        bundle, found = _group(opts, prefix, key, scope, oldest_first)
        bundles.append(bundle)
        issues.extend(found)
    for memo in (_UNITS, _LAST_UNITS, _GROUPS, _PLACEMENTS, _VIEWS):
        if memo_enabled():
            memo.rotate()
    return Partial(bundles=tuple(bundles), statuses=tuple(statuses), issues=_unique(issues))


def _unique(issues: Iterable[Issue]) -> tuple[Issue, ...]:
    return tuple(dict.fromkeys(issues))
