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

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

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
from cilia.translate.context import ObjectStatus, Partial, TranslateOptions
from cilia.translate.incremental import Ident, UnitMemo
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
    addr = opts.ingress_status_address or opts.ingress_address
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return {"hostname": addr}
    if ip.is_unspecified:
        return {"ip": "::1" if ip.version == 6 else "127.0.0.1"}
    return {"ip": str(ip)}


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


# -- one served configuration (a class, or the shared one) --------------------------------------------
@dataclass(slots=True)
class _Group:
    snapshot: InputSnapshot
    opts: TranslateOptions
    prefix: str
    secret_cache: dict[tuple[str, str], TlsSecret]
    issues: list[Issue] = field(default_factory=list)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    routes: dict[str, list[Route]] = field(default_factory=lambda: defaultdict(list))
    contributors: dict[str, list[KubeObject]] = field(default_factory=lambda: defaultdict(list))
    defaults: dict[str, Route] = field(default_factory=dict)  # by Ingress ref
    global_default: Route | None = None
    tls_hosts: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # host -> (sds, ref, field)
    default_tls: tuple[str, str, str] | None = None
    default_tls_hosts: set[str] = field(default_factory=set)
    secrets: dict[str, Secret] = field(default_factory=dict)
    force: set[str] = field(default_factory=set)

    def backend_route(self, obj: KubeObject, backend: IngressBackend, where: str, name: str,
                      match: PathMatch) -> Route:
        ref = str(obj.ref)
        rmatch = RouteMatch(path=match)
        if backend.resource is not None:
            r = backend.resource
            self.issues.append(Issue(ref, f"{where}.resource", (
                f"resource backends ({r.kind} {r.name}) are not supported; requests here get 503")))
            return Route(name, rmatch, direct=UNAVAILABLE, sources=(ref,))
        assert backend.service is not None
        svc = backend.service
        look = resolve_backend(self.snapshot, obj.meta.namespace, svc.name, svc.port)
        if look.cluster is None:
            sub = "name" if look.reason == "BackendNotFound" else (
                "port.number" if isinstance(svc.port, int) else "port.name")
            self.issues.append(Issue(ref, f"{where}.service.{sub}", f"{look.message}; requests here get 503"))
            return Route(name, rmatch, direct=UNAVAILABLE, sources=(ref,))
        self.clusters.setdefault(look.cluster.name, look.cluster)
        return Route(name, rmatch, backends=(Backend(look.cluster.name),), sources=(ref,))

    # -- rules -------------------------------------------------------------------------------------
    def add_rules(self, members: list[KubeObject]) -> None:
        seen: dict[tuple[str, str, str], tuple[str, str]] = {}
        entries: dict[str, list[tuple[tuple[int, int], Route]]] = defaultdict(list)
        for obj in members:
            spec: IngressSpec = obj.spec
            ref = str(obj.ref)
            base = f"{obj.meta.namespace}/{obj.meta.name}"
            if spec.default_backend is not None:
                route = self.backend_route(obj, spec.default_backend, "spec.defaultBackend",
                                           f"{base}/defaultBackend", PathMatch("prefix", "/"))
                self.defaults[ref] = route
                if self.global_default is None:
                    self.global_default = route
            for i, rule in enumerate(spec.rules):
                host = rule.host
                if obj not in self.contributors[host]:
                    self.contributors[host].append(obj)
                for j, p in enumerate(rule.paths):
                    where = f"spec.rules[{i}].http.paths[{j}]"
                    match, problem = path_match(p)
                    if match is None:
                        self.issues.append(Issue(ref, f"{where}.path", f"{problem}; this path is ignored"))
                        continue
                    key = (host, match.kind, match.value)
                    owner = seen.get(key)
                    if owner is not None:
                        self.issues.append(Issue(ref, where, _duplicate_message(host, p, ref, owner)))
                        continue
                    seen[key] = (ref, where)
                    route = self.backend_route(obj, p.backend, f"{where}.backend", f"{base}/rules/{i}/paths/{j}",
                                               match)
                    entries[host].append((_precedence(match), route))
        for host, items in entries.items():
            items.sort(key=lambda e: e[0])  # stable: the older Ingress first at equal precedence
            self.routes[host] = [r for _, r in items]
        self._report_default_conflicts(members)

    def _report_default_conflicts(self, members: list[KubeObject]) -> None:
        g = self.global_default
        if g is None:
            return
        for obj in members:
            mine = self.defaults.get(str(obj.ref))
            if mine is not None and mine is not g and (mine.backends, mine.direct) != (g.backends, g.direct):
                scope = "applies to the hosts of this Ingress only" if any(r.host for r in obj.spec.rules) \
                    else "is not used"
                self.issues.append(Issue(str(obj.ref), "spec.defaultBackend", (
                    f"{scope}: {', '.join(g.sources)} is older and its defaultBackend serves requests that "
                    "match no host"), severity="warning"))

    # -- TLS ---------------------------------------------------------------------------------------
    def add_tls(self, members: list[KubeObject]) -> None:
        for obj in members:
            spec: IngressSpec = obj.spec
            ref = str(obj.ref)
            force = obj.meta.annotations.get(FORCE_HTTPS_ANNOTATION, "").strip().lower() in ("true", "enabled")
            own_hosts = {r.host for r in spec.rules}
            if spec.default_backend is not None:
                own_hosts.add(CATCH_ALL)
            for k, t in enumerate(spec.tls):
                where = f"spec.tls[{k}]"
                hosts_text = ", ".join(t.hosts) if t.hosts else "the hosts of this Ingress"
                if not t.secret_name:
                    self.issues.append(Issue(ref, f"{where}.secretName", (
                        f"is required: cilia terminates TLS and does not route by SNI alone; {hosts_text} "
                        "not served over TLS")))
                    continue
                ns = obj.meta.namespace
                cached = self.secret_cache.get((ns, t.secret_name))
                if cached is None:
                    cached = self.secret_cache[(ns, t.secret_name)] = load_tls_secret(
                        self.snapshot, ns, t.secret_name, self.opts.secret_namespaces)
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
                        self.default_tls_hosts |= own_hosts
                        covered |= own_hosts
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
                            f"the certificate in Secret {ns}/{t.secret_name} is not valid for {host} (it names "
                            f"{', '.join(cached.dns_names)}); clients that verify it will refuse"),
                            severity="warning"))
                    covered.add(host)
                    covered |= {r for r in own_hosts if r and _tls_covers(host, r)}
                    used = True
                if used:
                    self.secrets[sds] = cached.secret
                    if force:
                        self.force |= covered

    def tls_served(self, host: str) -> bool:
        """Whether a usable certificate covers `host` (exactly, by a one-label wildcard, or as default)."""
        if host in self.default_tls_hosts or host in self.tls_hosts:
            return True
        return bool(host) and not host.startswith("*.") and "*." + host.partition(".")[2] in self.tls_hosts

    # -- output ------------------------------------------------------------------------------------
    def vhost_default(self, host: str) -> Route | None:
        for obj in self.contributors.get(host, []):  # oldest first
            route = self.defaults.get(str(obj.ref))
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

    def bundle(self, key: str, scope: ProxyScope, members: list[KubeObject]) -> Bundle:
        sources = tuple(str(o.ref) for o in members)
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


def _duplicate_message(host: str, p: IngressPath, ref: str, owner: tuple[str, str]) -> str:
    what = f"host {host or '*'} path {p.path or '/'!r} ({p.path_type})"
    if owner[0] == ref:
        return f"{what} duplicates {owner[1]}; this path is ignored"
    return f"{what} is already served by {owner[0]} ({owner[1]}), which is older; this path is ignored"


def _build(snapshot: InputSnapshot, opts: TranslateOptions, prefix: str, key: str, scope: ProxyScope,
           members: list[KubeObject], secret_cache: dict[tuple[str, str], TlsSecret]) -> tuple[Bundle, list[Issue]]:
    group = _Group(snapshot, opts, prefix, secret_cache)
    group.add_rules(members)
    group.add_tls(members)
    return group.bundle(key, scope, members), group.issues


# Per listener group (ingress class, or the shared node listeners): its bundle and issues, reused while its
# Ingresses (by identity), the options and what building it read are unchanged (translate/incremental.py).
_GROUPS: UnitMemo[tuple[Bundle, tuple[Issue, ...]]] = UnitMemo()


def _build_memo(snapshot: InputSnapshot, opts: TranslateOptions, prefix: str, key: str, scope: ProxyScope,
                members: list[KubeObject]) -> tuple[Bundle, tuple[Issue, ...]]:
    def build(view: InputSnapshot) -> tuple[Bundle, tuple[Issue, ...]]:
        # A secret cache of the group's own, so that every Secret the group uses is a read of its own.
        bundle, found = _build(view, opts, prefix, key, scope, members, {})
        return bundle, tuple(found)

    signature = (prefix, scope, opts, tuple(Ident(m) for m in members))
    return _GROUPS.compute(key, signature, snapshot, build)


def translate_ingresses(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    view = ingress_classes(snapshot, opts.ingress_controllers)
    issues: list[Issue] = list(view.issues)
    by_class: dict[str, list[KubeObject]] = defaultdict(list)
    shared: list[KubeObject] = []
    statuses: list[ObjectStatus] = []
    for obj in snapshot.list("Ingress"):
        cls, more = class_of(obj, view)
        if cls is None:
            continue
        issues.extend(more)
        mode, more = _mode(obj, opts)
        issues.extend(more)
        by_class[cls].append(obj)
        if mode == "shared":
            shared.append(obj)
        statuses.append(ingress_status(obj, opts))
    bundles: list[Bundle] = []
    groups: list[tuple[str, str, ProxyScope, list[KubeObject]]] = [
        (f"ingress/{cls}", f"ingress:{cls}", ProxyScope(frozenset({"ingress"}), frozenset({cls})), members)
        for cls, members in sorted(by_class.items())]
    if shared:
        groups.append((SHARED_PREFIX, "ingress:shared", ProxyScope(frozenset({"node"})), shared))
    for prefix, key, scope, members in groups:
        bundle, found = _build_memo(snapshot, opts, prefix, key, scope, sorted(members, key=_age_key))
        bundles.append(bundle)
        issues.extend(found)
    _GROUPS.rotate()
    return Partial(bundles=tuple(bundles), statuses=tuple(statuses), issues=_unique(issues))


def _unique(issues: Iterable[Issue]) -> tuple[Issue, ...]:
    return tuple(dict.fromkeys(issues))
