"""Gateway API -> listeners, routes, clusters and secrets for Gateway proxies, plus status conditions.

Who serves a Gateway: its dedicated proxy `gateway~NAMESPACE/NAME`, and (shared mode, as Cilium) every
`node~` proxy. Listeners bind every address assigned to the Gateway (translate/gateway_addresses.py:
its `spec.addresses` IP addresses, within `TranslateOptions.gateway_address_pool` when one is set, else
`TranslateOptions.gateway_address`), and one Envoy listener serves each port:

- HTTP port: one filter chain, one RouteConfig `gateway/NS/NAME/PORT`; a virtual host per hostname
  routes served on that port. A hostname is served only by the Gateway listener that matches it most
  specifically (listener isolation), and each virtual host holds every route whose hostnames match it,
  the more specific hostname first, then in the HTTPRoute precedence order (see gateway_common).
- HTTPS / TLS port: a filter chain per SNI (tls_inspector): HTTPS listeners terminate TLS with their
  certificates and have a RouteConfig each (`gateway/NS/NAME/PORT/LISTENER`); TLS listeners pass the
  stream through (or terminate and proxy TCP) to the TLSRoute backends chosen by SNI.
- TCP port: the TCPRoute's backends.

GAMMA routes (parentRef a Service) are translated in translate/gamma.py; their parent statuses are
merged here so that every route gets one status stanza.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from cilia.diagnostics import Issue
from cilia.ir import model as ir
from cilia.k8s.gateway import GROUP, GatewayListener, ObjectReference, ParentRef
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.translate.backendclientcert import client_cert_clusters, retarget_listener, retarget_routes
from cilia.translate.backendtls import referenced_secrets
from cilia.translate.backendtls_status import Ancestor, policy_statuses
from cilia.translate.context import Memo, ObjectStatus, Partial, TranslateOptions
from cilia.translate.gamma import GammaResult, translate_gamma
from cilia.translate.gateway_addresses import gateway_addresses
from cilia.translate.gateway_common import (
    CONTROLLER,
    GATEWAY_API_VERSION,
    SUPPORTED_FEATURES,
    Cond,
    ListenerContext,
    RankedRoute,
    RuleBuilder,
    conditions,
    covers,
    fallback_time,
    host_rank,
    intersect,
    namespace_labels,
    norm_group,
    previous_status,
    ref_permitted,
    resolve_ref,
    route_age,
    route_parent_status,
    rule_conditions,
    same_parent,
)
from cilia.translate.gateway_frontend import (
    INSECURE_CONDITION,
    ClientValidation,
    frontend_validations,
    insecure_condition,
)
from cilia.translate.incremental import Ident, UnitMemo, memo_enabled, root_snapshot
from cilia.translate.listenerset import (
    ListenerSetResult,
    listener_set_status,
    translate_listener_sets,
    with_attached,
)
from cilia.translate.tls import secret_not_found

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute")
PROTOCOL_KINDS = {"HTTP": ("HTTPRoute", "GRPCRoute"), "HTTPS": ("HTTPRoute", "GRPCRoute"), "TLS": ("TLSRoute",),
                  "TCP": ("TCPRoute",)}
PORT_FAMILY = {"HTTP": "http", "HTTPS": "tls", "TLS": "tls", "TCP": "tcp"}
GATEWAY_ROLES = frozenset({"gateway"})
SHARED_ROLES = frozenset({"node"})
# Per-unit memos (translate/incremental.py): a route's resolved rules, a Gateway's IR, its bundles.
_BUILDERS: UnitMemo[RuleBuilder] = UnitMemo()
_GATEWAY_IR: UnitMemo[tuple[GatewayIR, tuple[Issue, ...]]] = UnitMemo()
_BUNDLES: UnitMemo[tuple[ir.Bundle, ...]] = UnitMemo()
_ROUTES: UnitMemo[RouteOutcome] = UnitMemo()


@dataclass(eq=False)
class Attachment:
    route: KubeObject
    builder: RuleBuilder | None  # HTTPRoute/GRPCRoute
    hosts: tuple[str, ...]


@dataclass(eq=False)
class ListenerState:
    spec: GatewayListener
    supported: list[str]
    conds: dict[str, Cond] = field(default_factory=dict)
    secrets: list[ir.Secret] = field(default_factory=list)
    attached: int = 0
    routes: list[Attachment] = field(default_factory=list)
    programmable: bool = True
    owner: KubeObject | None = None  # the ListenerSet the listener comes from; None: the Gateway's own
    client: ClientValidation | None = None  # spec.tls.frontend validation of an HTTPS listener

    @property
    def key(self) -> str:
        """Unique among the Gateway's listeners (a ListenerSet may reuse a Gateway listener's name)."""
        if self.owner is None:
            return self.spec.name
        return f"{self.owner.meta.namespace}/{self.owner.meta.name}/{self.spec.name}"

    def fail(self, cond: Cond) -> None:
        self.conds[cond.type] = cond


@dataclass(eq=False)
class GatewayState:
    obj: KubeObject
    addresses: tuple[str, ...]  # what its listeners bind; empty when refused or its addresses are unusable
    listeners: list[ListenerState]
    accepted: Cond | None = None  # set when the whole Gateway is refused
    controller: str = CONTROLLER  # the controller name of the Gateway's class (one cilia claims)
    issues: list[Issue] = field(default_factory=list)
    client_cert: ir.Secret | None = None  # spec.tls.backend.clientCertificateRef, resolved
    refs: Cond | None = None  # the Gateway's own ResolvedRefs (set when it references a client certificate)
    unusable: Cond | None = None  # Programmed=False: accepted, but a requested address cannot be used

    @property
    def key(self) -> str:
        return f"{self.obj.meta.namespace}/{self.obj.meta.name}"


# -- GatewayClass and Gateway ------------------------------------------------------------------------------
def _class_statuses(snapshot: InputSnapshot, opts: TranslateOptions) -> tuple[dict[str, str], list[ObjectStatus]]:
    """GatewayClasses whose controller is one cilia claims (its own, or one given with
    --gateway-controller-name): class name -> that controller name, and their statuses."""
    claimed = {CONTROLLER, *opts.gateway_controllers}
    ours: dict[str, str] = {}
    out = []
    for obj in snapshot.list("GatewayClass"):
        controller = obj.spec.controller_name
        if controller not in claimed:
            continue
        ours[obj.meta.name] = controller
        conds = conditions([Cond("Accepted", True, "Accepted", f"handled by {controller}"),
                            Cond("SupportedVersion", True, "SupportedVersion",
                                 f"Gateway API {GATEWAY_API_VERSION} is supported")],
                           obj.meta.generation, previous_status(obj).get("conditions"),
                           fallback_time(obj, opts.status_time))
        out.append(ObjectStatus(obj.api_version, obj.kind, "", obj.meta.name, obj.meta.generation,
                                {"conditions": conds,
                                 "supportedFeatures": [{"name": f} for f in sorted(SUPPORTED_FEATURES)]}))
    return ours, out


def _parameters_problem(obj: KubeObject) -> Cond | None:
    """cilia takes no parameters object: a Gateway naming one is not accepted (GEP-1867)."""
    ref = obj.spec.infrastructure.parameters_ref
    if ref is None:
        return None
    return Cond("Accepted", False, "InvalidParameters",
                f"spec.infrastructure.parametersRef: {ref.group or 'core'}/{ref.kind} {ref.name} is not a "
                "parameters kind cilia supports (it takes none)")


def _secret(snapshot: InputSnapshot, gw: KubeObject, ref: ObjectReference,
            readable: tuple[str, ...] | None = None, path: str = "certificateRef",
            invalid: str = "InvalidCertificateRef") -> tuple[ir.Secret | None, Cond | None]:
    """A TLS Secret a Gateway references (`path`), or the ResolvedRefs condition saying why not
    (`invalid`: the reason for a missing, malformed or non-Secret reference)."""
    what = f"{path} {ref.namespace}/{ref.name}"
    if norm_group(ref.group) != "" or ref.kind != "Secret":
        return None, Cond("ResolvedRefs", False, invalid,
                          f"{what}: {ref.group or 'core'}/{ref.kind} is not supported (only core Secrets)")
    if not ref_permitted(snapshot, gw.kind, gw.meta.namespace, "", "Secret", ref.namespace, ref.name):
        return None, Cond("ResolvedRefs", False, "RefNotPermitted",
                          f"{what}: no ReferenceGrant in {ref.namespace} allows {gw.kind}s in "
                          f"{gw.meta.namespace} to use it")
    obj = snapshot.get("Secret", ref.namespace, ref.name)
    if obj is None:
        text = "Secret not found" if readable is None or ref.namespace in readable else \
            secret_not_found(ref.namespace, ref.name, readable)
        return None, Cond("ResolvedRefs", False, invalid, f"{what}: {text}")
    crt = obj.spec.data.get("tls.crt", b"")
    key = obj.spec.data.get("tls.key", b"")
    if b"-----BEGIN CERTIFICATE-----" not in crt or b"PRIVATE KEY-----" not in key:
        return None, Cond("ResolvedRefs", False, invalid,
                          f"{what}: tls.crt and tls.key must hold a PEM certificate and private key")
    return ir.Secret(f"{ref.namespace}/{ref.name}", crt, key, sources=(str(obj.ref),)), None


def _listener_state(snapshot: InputSnapshot, gw: KubeObject, li: GatewayListener,
                    readable: tuple[str, ...] | None = None) -> ListenerState:
    kinds = PROTOCOL_KINDS.get(li.protocol, ())
    if li.allowed_routes.kinds:
        wanted = [k for k in li.allowed_routes.kinds if k.group == GROUP and k.kind in kinds]
        supported = list(dict.fromkeys(k.kind for k in wanted))
    else:
        supported = list(kinds)
    st = ListenerState(li, supported)
    if li.protocol not in PROTOCOL_KINDS:
        st.fail(Cond("Accepted", False, "UnsupportedProtocol", f"protocol {li.protocol} is not supported"))
        st.programmable = False
    invalid = [k for k in li.allowed_routes.kinds if not (k.group == GROUP and k.kind in kinds)]
    if invalid:
        names = ", ".join(f"{k.group}/{k.kind}" for k in invalid)
        st.fail(Cond("ResolvedRefs", False, "InvalidRouteKinds",
                     f"route kinds not supported on a {li.protocol} listener: {names}"))
    if li.tls is not None and li.tls.mode == "Terminate":
        for ref in li.tls.certificate_refs:
            secret, problem = _secret(snapshot, gw, ref, readable)
            if secret is not None:
                st.secrets.append(secret)
            elif problem is not None and "ResolvedRefs" not in st.conds:
                st.fail(problem)
        if not st.secrets:
            st.programmable = False
    return st


def _apply_frontend_validation(snapshot: InputSnapshot, gw: KubeObject, listeners: list[ListenerState]
                               ) -> list[Issue]:
    """spec.tls.frontend on the HTTPS listeners (translate/gateway_frontend.py); returns its issues."""
    https = [st for st in listeners if st.spec.protocol == "HTTPS"]
    by_port = frontend_validations(snapshot, gw, {st.spec.port for st in https})
    for st in https:
        cv = by_port.get(st.spec.port)
        if cv is None:
            continue
        st.client = cv
        if cv.problem is not None and "ResolvedRefs" not in st.conds:
            st.fail(cv.problem)
        refused = cv.refused
        if refused is not None:
            st.fail(refused)
            st.programmable = False
    return [i for cv in by_port.values() for i in cv.issues]


def _detect_conflicts(listeners: list[ListenerState]) -> None:
    """Per port: protocols must be compatible and hostnames distinct; the first listener wins."""
    by_port: dict[int, list[ListenerState]] = defaultdict(list)
    for st in listeners:
        if st.spec.protocol in PROTOCOL_KINDS:
            by_port[st.spec.port].append(st)
    for group in by_port.values():
        family = PORT_FAMILY[group[0].spec.protocol]
        hosts: set[str] = set()
        for st in group:
            if PORT_FAMILY[st.spec.protocol] != family:
                st.fail(Cond("Conflicted", True, "ProtocolConflict",
                             f"port {st.spec.port} is already used by a listener of another protocol"))
                continue
            host = st.spec.hostname if family != "tcp" else ""
            if host in hosts:
                st.fail(Cond("Conflicted", True, "HostnameConflict",
                             f"another listener on port {st.spec.port} has hostname {host or '(none)'!r}"))
                continue
            hosts.add(host)
        terminating = [st for st in group if "Conflicted" not in st.conds and st.spec.tls is not None
                       and st.spec.tls.mode == "Terminate"]
        for st in terminating:
            others = [o for o in terminating if o is not st and (
                covers(o.spec.hostname, st.spec.hostname) or covers(st.spec.hostname, o.spec.hostname))]
            if others:
                st.fail(Cond("OverlappingTLSConfig", True, "OverlappingHostnames",
                             "hostname overlaps listener(s) " + ", ".join(o.spec.name for o in others)))
    for st in listeners:
        if "Conflicted" in st.conds:
            st.programmable = False


def _gateway_states(snapshot: InputSnapshot, opts: TranslateOptions, classes: Mapping[str, str]
                    ) -> dict[str, GatewayState]:
    out = {}
    for obj in snapshot.list("Gateway"):
        if obj.spec.gateway_class_name not in classes:
            continue
        addrs = gateway_addresses(obj, opts.gateway_address, opts.gateway_address_pool)
        refused = _parameters_problem(obj) or addrs.refused
        listeners = [_listener_state(snapshot, obj, li, opts.secret_namespaces) for li in obj.spec.listeners]
        frontend_issues = _apply_frontend_validation(snapshot, obj, listeners)
        _detect_conflicts(listeners)
        gs = GatewayState(obj, addrs.bound if refused is None else (), listeners, refused,
                          classes[obj.spec.gateway_class_name], [*addrs.issues, *frontend_issues],
                          unusable=addrs.unusable)
        ref = obj.spec.backend_client_cert
        if ref is not None:
            gs.client_cert, gs.refs = _secret(snapshot, obj, ref, opts.secret_namespaces,
                                              "spec.tls.backend.clientCertificateRef", "InvalidClientCertificateRef")
            gs.refs = gs.refs or Cond("ResolvedRefs", True, "ResolvedRefs", "all references resolved")
        if refused is not None:
            for st in listeners:
                st.programmable = False
        out[gs.key] = gs
    return out


def _merge_listener_sets(snapshot: InputSnapshot, gateways: Mapping[str, GatewayState],
                        admitted: Mapping[str, Sequence[KubeObject]], opts: TranslateOptions) -> None:
    """Add the listeners of each Gateway's admitted ListenerSets (in precedence order) after its own, so
    that on a conflict the Gateway's listener, then the older ListenerSet's, wins (GEP-1713)."""
    for gkey, sets in admitted.items():
        gs = gateways[gkey]
        for ls in sets:
            for li in ls.spec.listeners:
                st = _listener_state(snapshot, ls, li, opts.secret_namespaces)
                st.owner = ls
                if gs.accepted is not None:
                    st.programmable = False
                gs.listeners.append(st)
        if sets:
            _detect_conflicts(gs.listeners)


def _listener_set_statuses(gs: GatewayState, sets: Iterable[KubeObject], opts: TranslateOptions
                           ) -> list[ObjectStatus]:
    out = []
    for ls in sets:
        prev = previous_status(ls)
        when = fallback_time(ls, opts.status_time)
        prev_listeners: dict[str, Any] = {str(li.get("name")): li.get("conditions")
                                          for li in prev.get("listeners") or [] if isinstance(li, dict)}
        mine = [st for st in gs.listeners if st.owner is ls]
        stanzas = [_listener_status(gs, st, prev_listeners, when) for st in mine]
        out.append(listener_set_status(ls, stanzas, sum(st.programmable for st in mine), gs.accepted is None,
                                       gs.key, opts, unprogrammed=gs.unusable))
    return out


# -- routes ------------------------------------------------------------------------------------------------
def _allowed(st: ListenerState, gw: KubeObject, route: KubeObject, snapshot: InputSnapshot) -> bool:
    if route.kind not in st.supported:
        return False
    ar = st.spec.allowed_routes
    if ar.namespaces_from == "All":
        return True
    if ar.namespaces_from == "Same":
        return route.meta.namespace == gw.meta.namespace
    assert ar.selector is not None
    return ar.selector.matches(namespace_labels(snapshot, route.meta.namespace))


def _match(snapshot: InputSnapshot, gs: GatewayState, route: KubeObject, ref: ParentRef,
           builder: RuleBuilder | None, owner: KubeObject | None = None
           ) -> tuple[Cond, tuple[tuple[int, tuple[str, ...]], ...]]:
    """Where `route` attaches among the listeners `ref` selects (of ListenerSet `owner`, else the Gateway's
    own): the route's Accepted condition there, and (listener index, hostnames) of each listener it
    attaches to. Reads `gs` only; `_route_outcome` applies the attachments."""
    candidates = [st for st in gs.listeners if st.owner is owner
                  and (not ref.section_name or st.spec.name == ref.section_name)
                  and (ref.port is None or st.spec.port == ref.port)]
    if not candidates:
        return Cond("Accepted", False, "NoMatchingParent",
                    f"Gateway {gs.key} has no listener matching sectionName {ref.section_name!r}"
                    + (f" and port {ref.port}" if ref.port is not None else "")), ()
    # A listener that names the route's kind in allowedRoutes but whose protocol cannot carry it is no
    # parent for the route at all (conformance TLSRouteInvalidNoMatchingListener); one whose allowedRoutes
    # leave the kind out refuses it (NotAllowedByListeners, conformance HTTPRouteDisallowedKind).
    def wrong_protocol(st: ListenerState) -> bool:
        return route.kind not in PROTOCOL_KINDS.get(st.spec.protocol, ()) and any(
            k.kind == route.kind and k.group == GROUP for k in st.spec.allowed_routes.kinds)

    if all(wrong_protocol(st) for st in candidates):
        return Cond("Accepted", False, "NoMatchingParent",
                    f"no listener of Gateway {gs.key} selected by the parentRef has a protocol that carries "
                    f"{route.kind}s"), ()
    allowed = [st for st in candidates if _allowed(st, st.owner or gs.obj, route, snapshot)]
    if not allowed:
        return Cond("Accepted", False, "NotAllowedByListeners",
                    f"no listener of Gateway {gs.key} allows {route.kind}s from namespace {route.meta.namespace}"
                    ), ()
    matched = []
    for st in allowed:
        hosts = ("*",) if route.kind == "TCPRoute" else intersect(st.spec.hostname, route.spec.hostnames)
        if hosts:
            matched.append((st, hosts))
    if not matched:
        return Cond("Accepted", False, "NoMatchingListenerHostname",
                    "no hostname of the route matches a listener hostname of Gateway " + gs.key), ()
    if builder is not None and builder.accepted_problem is not None:
        p = builder.accepted_problem
        return Cond("Accepted", False, p.reason, p.message), ()
    # attachedRoutes counts the routes accepted on a listener: allowed there, and sharing a hostname with it
    # (conformance HTTPRouteHostnameIntersection).
    index = {id(st): i for i, st in enumerate(gs.listeners)}
    return (Cond("Accepted", True, "Accepted", "attached to Gateway " + gs.key),
            tuple((index[id(st)], hosts) for st, hosts in matched))


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    """What one route contributes: its builder, the listeners it attaches to (Gateway key, listener
    index, hostnames), its status.parents entries for cilia's Gateways and ListenerSets, the Services it
    sends to per Gateway (BackendTLSPolicy ancestors), and issues."""

    builder: RuleBuilder | None
    attachments: tuple[tuple[str, int, Attachment], ...]  # the same Attachment objects while reused
    stanzas: tuple[dict[str, Any], ...]
    used_by: tuple[tuple[tuple[str, str], Ancestor], ...]
    issues: tuple[Issue, ...]


def _route_outcome(snapshot: InputSnapshot, gateways: Mapping[str, GatewayState],
                   listener_sets: ListenerSetResult, route: KubeObject, opts: TranslateOptions) -> RouteOutcome:
    builder = None
    if route.kind in ("HTTPRoute", "GRPCRoute"):
        builder = _rule_builder(snapshot, route)
    attachments: list[tuple[str, int, Attachment]] = []
    stanzas: list[dict[str, Any]] = []
    used_by: list[tuple[tuple[str, str], Ancestor]] = []
    issues: list[Issue] = []
    for i, ref in enumerate(route.spec.parent_refs):
        if ref.group == GROUP and ref.kind == "ListenerSet":
            found = listener_sets.parent_of(ref.namespace, ref.name)
            if found is None:
                issues.append(Issue(str(route.ref), f"spec.parentRefs[{i}]",
                                    f"ListenerSet {ref.namespace}/{ref.name} not found or not attached to a "
                                    "Gateway", severity="warning"))
                continue
            gs = gateways[found[0]]
            accepted, matched = _match(snapshot, gs, route, ref, builder, found[1])
            attachments.extend((gs.key, j, Attachment(route, builder, hosts)) for j, hosts in matched)
        elif not ref.is_gateway:
            continue
        else:
            found_gs = gateways.get(f"{ref.namespace}/{ref.name}")
            if found_gs is None:
                if snapshot.get("Gateway", ref.namespace, ref.name) is None:
                    issues.append(Issue(str(route.ref), f"spec.parentRefs[{i}]",
                                        f"Gateway {ref.namespace}/{ref.name} not found", severity="warning"))
                continue
            gs = found_gs
            accepted, matched = _match(snapshot, gs, route, ref, builder)
            attachments.extend((gs.key, j, Attachment(route, builder, hosts)) for j, hosts in matched)
            if accepted.ok:
                for rule in route.spec.rules:
                    for bref in getattr(rule, "backend_refs", ()):
                        if norm_group(bref.group) == "" and bref.kind == "Service":
                            used_by.append(((bref.namespace, bref.name),
                                            (gs.obj.meta.namespace, gs.obj.meta.name, gs.controller)))
        refs = rule_conditions(builder) if builder is not None else [_stream_refs_condition(snapshot, route)]
        stanzas.append(route_parent_status(route, ref, [accepted, *refs], opts.status_time, gs.controller))
    return RouteOutcome(builder, tuple(attachments), tuple(stanzas), tuple(used_by), tuple(issues))


def _attach_signature(gs: GatewayState | None) -> tuple[Any, ...] | None:
    """What `_match` reads of a Gateway's state; objects by identity."""
    if gs is None:
        return None
    return (Ident(gs.obj), gs.controller, tuple((Ident(st.spec), Ident(st.owner)) for st in gs.listeners))


class _Token:
    """Stands for a signature in route signatures: the same token while the signature is equal, so
    comparing a route's signature compares its Gateways' by identity."""

    __slots__ = ("signature",)

    def __init__(self, signature: Any) -> None:
        self.signature = signature


_TOKENS: dict[str, _Token] = {}


def _signature_token(gkey: str, signature: Any) -> _Token:
    token = _TOKENS.get(gkey)
    if token is None or token.signature != signature:
        if len(_TOKENS) >= _TOKENS_MAX:  # Gateways come and go: forget them all now and then
            _TOKENS.clear()
        token = _TOKENS[gkey] = _Token(signature)
    return token


_TOKENS_MAX = 16384


def _route_memo(snapshot: InputSnapshot, gateways: Mapping[str, GatewayState], listener_sets: ListenerSetResult,
                route: KubeObject, opts: TranslateOptions, signatures: dict[str, Any],
                root: InputSnapshot | None) -> RouteOutcome:
    """A route's outcome, reused while the route, the Gateways (and ListenerSets) it names and what it
    read are unchanged."""
    parents: list[Any] = []
    for ref in route.spec.parent_refs:
        if ref.group == GROUP and ref.kind == "ListenerSet":
            found = listener_sets.parent_of(ref.namespace, ref.name)
            gkey = found[0] if found is not None else ""
            parents.append(None if found is None else (gkey, Ident(found[1])))
        elif ref.is_gateway:
            gkey = f"{ref.namespace}/{ref.name}"
        else:
            continue
        token = signatures.get(gkey)
        if token is None:
            token = signatures[gkey] = _signature_token(gkey, _attach_signature(gateways.get(gkey)))
        parents.append(token)
    key = (route.kind, route.meta.namespace, route.meta.name)
    outcome = _ROUTES.compute(key, (Ident(route), opts.status_time, tuple(parents)), snapshot,
                              lambda view: _route_outcome(view, gateways, listener_sets, route, opts), root)
    if outcome.builder is not None:
        _BUILDERS.keep(key)
    return outcome


RouteKey = tuple[str, str, str]


class _Tally:
    """What the routes contribute, by their position in listing order: attachments per Gateway listener,
    the Services they send to per Gateway, issues and statuses. Kept with the route pass, so a run that
    revisits a few routes patches their contributions instead of summing every route's again."""

    __slots__ = ("_issues_at", "_used", "attach", "keys", "outcomes", "pos", "routes", "status_at", "used_sets")

    def __init__(self) -> None:
        self.keys: list[RouteKey] = []
        self.pos: dict[RouteKey, int] = {}
        self.routes: list[KubeObject] = []
        self.outcomes: list[RouteOutcome] = []
        self.status_at: list[ObjectStatus | None] = []
        self.attach: dict[tuple[str, int], list[tuple[int, Attachment]]] = {}  # (Gateway, listener) -> by position
        self._issues_at: dict[int, tuple[Issue, ...]] = {}
        self._used: dict[tuple[tuple[str, str], Ancestor], int] = {}
        self.used_sets: dict[tuple[str, str], set[Ancestor]] = {}  # Service -> Gateways (BackendTLSPolicy)

    def add(self, key: RouteKey, route: KubeObject, outcome: RouteOutcome, status: ObjectStatus | None) -> None:
        p = len(self.keys)
        self.keys.append(key)
        self.pos[key] = p
        self.routes.append(route)
        self.outcomes.append(outcome)
        self.status_at.append(status)
        self._count(p, outcome, 1)

    def replace(self, p: int, route: KubeObject, outcome: RouteOutcome, status: ObjectStatus | None,
                touched: set[tuple[str, int]]) -> None:
        old = self.outcomes[p]
        if old is not outcome:
            self._count(p, old, -1, touched)
            self._count(p, outcome, 1, touched)
        self.routes[p] = route
        self.outcomes[p] = outcome
        self.status_at[p] = status

    def _count(self, p: int, outcome: RouteOutcome, n: int, touched: set[tuple[str, int]] | None = None) -> None:
        for gkey, index, attachment in outcome.attachments:
            entries = self.attach.setdefault((gkey, index), [])
            if n > 0:
                entries.append((p, attachment))
            else:
                entries.remove((p, attachment))
            if touched is not None:
                touched.add((gkey, index))
        for used in outcome.used_by:
            count = self._used.get(used, 0) + n
            svc, ancestor = used
            if count:
                self._used[used] = count
                self.used_sets.setdefault(svc, set()).add(ancestor)
            else:
                del self._used[used]
                users = self.used_sets[svc]
                users.discard(ancestor)
                if not users:
                    del self.used_sets[svc]
        if n > 0 and outcome.issues:
            self._issues_at[p] = outcome.issues
        elif n < 0:
            self._issues_at.pop(p, None)

    def sort(self, touched: set[tuple[str, int]]) -> None:
        for where in touched:
            self.attach[where].sort(key=lambda e: e[0])

    def apply(self, gateways: Mapping[str, GatewayState]) -> None:
        """Attach the routes to fresh Gateway states."""
        for (gkey, index), entries in self.attach.items():
            if entries:
                st = gateways[gkey].listeners[index]
                st.routes = [a for _, a in entries]
                st.attached = len(entries)

    def issues(self) -> list[Issue]:
        return [i for p in sorted(self._issues_at) for i in self._issues_at[p]]

    def statuses(self) -> list[ObjectStatus]:
        return [s for s in self.status_at if s is not None]


class _RoutePass:
    """The route loop's last results, so that a run after a small edit revisits only the routes the edit
    can affect: those edited, those that read an edited object, and none else while the Gateways' attach
    signatures, the options and ListenerSets are as they were. Every other route's outcome is the one the
    last run held valid, as its memo entry would say, without checking each route's memo entry. Which
    objects each route read comes from its memo entry, so a route whose reads are not recorded (opaque)
    makes the next run a full one."""

    __slots__ = ("_affected", "_new", "_seen", "fast", "kind_names", "kinds", "mesh_keys", "opts", "outcomes",
                 "pending", "readers", "reads", "stamp", "tally", "tokens")

    _last: _RoutePass | None = None

    def __init__(self, root: InputSnapshot, opts: TranslateOptions, tokens: dict[str, Any]) -> None:
        assert root.stamp is not None
        self.stamp = root.stamp  # every outcome held is valid at this revision
        self.pending = self.stamp
        self.opts = opts
        self.tokens = tokens
        self.outcomes: dict[RouteKey, tuple[KubeObject, RouteOutcome]] = {}
        self.reads: dict[RouteKey, frozenset[RouteKey]] = {}
        self.readers: dict[RouteKey, set[RouteKey]] = {}
        self.kinds: set[str] = set()  # kinds some route listed (read whole)
        self.kind_names: set[str] = set()  # kinds some route read anything of
        self.fast = False
        self._affected: set[RouteKey] = set()
        self._seen: set[RouteKey] = set()
        self._new = True  # every route is recorded afresh (not a fast run)
        self.tally: _Tally | None = None  # the last run's, when every route was seen
        self.mesh_keys: frozenset[RouteKey] = frozenset()  # routes with GAMMA parents in the last run

    @classmethod
    def begin(cls, snapshot: InputSnapshot, root: InputSnapshot | None, gateways: Mapping[str, GatewayState],
              listener_sets: ListenerSetResult, opts: TranslateOptions,
              signatures: dict[str, Any]) -> _RoutePass | None:
        now = root.stamp if root is not None else None
        if not memo_enabled() or root is None or now is None:
            return None
        if listener_sets.admitted:
            cls._last = None
            return None
        for gkey, gs in gateways.items():
            signatures[gkey] = _signature_token(gkey, _attach_signature(gs))
        tokens = dict(signatures)
        last = cls._last
        changes = root.changes_after(last.stamp) if last is not None else None
        if (last is not None and changes is not None and last.opts == opts and last.tokens == tokens
                and not (last.kinds & changes[0])):
            last.pending = now  # the stamp once this run has gone through
            last.fast = True
            last._new = False
            last._seen = set()
            affected = {k for k in changes[1] if k[0] in ROUTE_KINDS}
            for k in changes[1]:
                affected.update(last.readers.get(k, ()))
            last._affected = affected
            for kind in sorted(last.kind_names):  # the routes reused unseen depend on these kinds
                snapshot.count(kind)
            return last
        cls._last = fresh = cls(root, opts, tokens)
        return fresh

    def reuse(self, key: RouteKey, route: KubeObject) -> RouteOutcome | None:
        """The last outcome of the route when this run need not revisit it."""
        self._seen.add(key)
        if self._new or key in self._affected:
            return None
        held = self.outcomes.get(key)
        return held[1] if held is not None and held[0] is route else None

    def recomputed(self, key: RouteKey, route: KubeObject, outcome: RouteOutcome) -> None:
        reads = _ROUTES.reads_of(key, outcome)
        if reads is None:  # not recorded: the next run must check every route
            _RoutePass._last = None
            self._new = True
            return
        self._unindex(key)
        self.outcomes[key] = (route, outcome)
        self.reads[key] = reads.keys
        for k in reads.keys:
            self.readers.setdefault(k, set()).add(key)
        self.kinds.update(kind for kind, _ in reads.kinds)
        self.kind_names |= reads.kind_names

    def patch(self, snapshot: InputSnapshot, root: InputSnapshot | None, gateways: Mapping[str, GatewayState],
              listener_sets: ListenerSetResult, mesh: GammaResult, controllers: tuple[str, ...]) -> _Tally | None:
        """The last run's tally with the affected routes' contributions replaced; None when routes came or
        went (their positions move: the caller goes over every route)."""
        tally = self.tally
        if not self.fast or tally is None or root is None:
            return None
        for kind in ROUTE_KINDS:
            snapshot.count(kind)  # what listing the routes would have recorded
        if sum(len(root.objects.get(kind) or ()) for kind in ROUTE_KINDS) != len(tally.keys):
            return None
        now: dict[RouteKey, KubeObject] = {}
        for key in self._affected | self.mesh_keys | set(mesh.parents):
            route = root.objects.get(key[0], {}).get((key[1], key[2]))
            if (route is None) != (key not in tally.pos):
                return None  # added or removed
            if route is not None:
                now[key] = route
        self.tally = None  # half patched if this raises: the next run starts afresh
        touched: set[tuple[str, int]] = set()
        signatures: dict[str, Any] = dict(self.tokens)
        for key in sorted(now, key=tally.pos.__getitem__):
            route, p = now[key], tally.pos[key]
            outcome = tally.outcomes[p]
            if key in self._affected or tally.routes[p] is not route:
                outcome = _route_memo(snapshot, gateways, listener_sets, route, self.opts, signatures, root)
                self.recomputed(key, route, outcome)
            in_mesh = mesh.parents.get(key)
            status = (_route_status_memo(key, route, outcome.stanzas, in_mesh or (), controllers)
                      if outcome.stanzas or in_mesh else None)
            tally.replace(p, route, outcome, status, touched)
        tally.sort(touched)
        if _RoutePass._last is self:
            self.tally = tally
            self.mesh_keys = frozenset(mesh.parents)
            self.stamp = self.pending
        return tally

    def finish(self, tally: _Tally, mesh: GammaResult) -> None:
        if _RoutePass._last is not self:
            return
        self.tally = tally
        self.mesh_keys = frozenset(mesh.parents)
        self.stamp = self.pending
        for key in [k for k in self.outcomes if k not in self._seen]:  # routes gone
            self._unindex(key)
            del self.outcomes[key]
            if self.fast:
                _ROUTES.forget(key)
                _BUILDERS.forget(key)
                _ROUTE_STATUSES.forget(key)

    def _unindex(self, key: RouteKey) -> None:
        for k in self.reads.pop(key, ()):
            users = self.readers.get(k)
            if users is not None:
                users.discard(key)
                if not users:
                    del self.readers[k]


def _stream_refs_condition(snapshot: InputSnapshot, route: KubeObject) -> Cond:
    for rule in route.spec.rules:
        for ref in rule.backend_refs:
            res = resolve_ref(snapshot, route, ref, "tcp")
            if res.problem is not None:
                return Cond("ResolvedRefs", False, res.problem.reason, res.problem.message)
    return Cond("ResolvedRefs", True, "ResolvedRefs", "all references resolved")


# -- IR --------------------------------------------------------------------------------------------------
def _covering_hosts(d: str) -> list[str]:
    """Every hostname that covers `d`: itself, its wildcard suffixes, and `*`."""
    if d == "*":
        return ["*"]
    labels = d.split(".")
    first = 2 if d.startswith("*.") else 1
    return [d, *("*." + ".".join(labels[i:]) for i in range(first, len(labels))), "*"]


def _virtual_hosts(listeners: list[ListenerState], ctx: ListenerContext, prefix: str,
                   peers: list[ListenerState] | None = None) -> tuple[ir.VirtualHost, ...]:
    """Virtual hosts for the HTTP listeners sharing one RouteConfig (see module docstring).

    `peers`: the other HTTPS listeners on the port, each with a certificate and filter chain of its own.
    A Host that one of them serves more specifically than `listeners` (the TLS connection was made for
    another listener) is answered 421 Misdirected Request, so that the client opens a connection
    with the right SNI."""
    domains: set[str] = set()
    by_host: dict[str, list[tuple[ListenerState, list[RankedRoute]]]] = defaultdict(list)
    for st in listeners:
        if st.spec.hostname:
            domains.add(st.spec.hostname)
        for att in st.routes:
            assert att.builder is not None
            domains.update(att.hosts)
            routes = att.builder.routes(ctx, prefix)
            for h in att.hosts:
                by_host[h].append((st, routes))
    out = []
    for d in sorted(domains, key=lambda h: (-host_rank(h)[0], -host_rank(h)[1], h)):
        owners = [st for st in listeners if covers(st.spec.hostname, d)]
        if not owners:
            continue
        owner = max(owners, key=lambda st: host_rank(st.spec.hostname))
        if any(covers(p.spec.hostname, d) and host_rank(p.spec.hostname) > host_rank(owner.spec.hostname)
               for p in peers or ()):
            continue  # served by a more specific peer: answered 421 below
        ranked: dict[str, RankedRoute] = {}
        # Hosts are visited most specific first, so a route listed under several keeps its best rank.
        for h in _covering_hosts(d):
            rank = host_rank(h)
            for st, routes in by_host.get(h, ()):
                if st is not owner:
                    continue
                for r in routes:
                    if r.route.name not in ranked:
                        ranked[r.route.name] = RankedRoute((-rank[0], -rank[1], *r.key), r.route)
        ordered = tuple(r.route for r in sorted(ranked.values(), key=lambda r: r.key))
        out.append(ir.VirtualHost(name=f"{prefix}/{d}", domains=(d,), routes=ordered))
    served = {v.domains[0] for v in out}
    misdirected = sorted({p.spec.hostname or "*" for p in peers or ()} - served,
                         key=lambda h: (-host_rank(h)[0], -host_rank(h)[1], h))
    for h in misdirected:
        route = ir.Route(name=f"{prefix}/misdirected/{h}", match=ir.RouteMatch(),
                         direct=ir.DirectResponse(421, "misdirected request: the Host belongs to another listener"))
        out.append(ir.VirtualHost(name=f"{prefix}/misdirected/{h}", domains=(h,), routes=(route,)))
    return tuple(out)


def _stream_backends(snapshot: InputSnapshot, route: KubeObject,
                     clusters: dict[str, ir.Cluster]) -> tuple[ir.Backend, ...]:
    out = []
    for rule in route.spec.rules:
        for ref in rule.backend_refs:
            res = resolve_ref(snapshot, route, ref, "tcp")
            if res.cluster is not None and ref.weight > 0:
                clusters[res.cluster.name] = res.cluster
                out.append(ir.Backend(res.cluster.name, ref.weight))
    return tuple(out)


def _uses_cors(rc: ir.RouteConfig) -> bool:
    return any(r.cors is not None for vh in rc.virtual_hosts for r in vh.routes)


@dataclass
class GatewayIR:
    listeners: list[ir.Listener] = field(default_factory=list)
    routes: list[ir.RouteConfig] = field(default_factory=list)
    clusters: dict[str, ir.Cluster] = field(default_factory=dict)
    secrets: dict[str, ir.Secret] = field(default_factory=dict)


def _gateway_ir(snapshot: InputSnapshot, gs: GatewayState, issues: list[Issue]) -> GatewayIR:
    out = GatewayIR()
    ns, name = gs.obj.meta.namespace, gs.obj.meta.name
    src = (str(gs.obj.ref),)
    by_port: dict[int, list[ListenerState]] = defaultdict(list)
    for st in gs.listeners:
        if st.programmable:
            by_port[st.spec.port].append(st)
    for port, group in sorted(by_port.items()):
        base = f"gateway/{ns}/{name}/{port}"
        family = PORT_FAMILY[group[0].spec.protocol]
        chains: list[ir.FilterChain] = []
        filters: tuple[Any, ...] = ()
        for st in group:
            for att in st.routes:
                if att.builder is not None:
                    out.clusters.update(att.builder.clusters)
        if family == "http":
            ctx = ListenerContext(port, "http")
            rconf = ir.RouteConfig(base, _virtual_hosts(group, ctx, base), src, ignore_port_in_host_matching=True)
            out.routes.append(rconf)
            chains.append(ir.FilterChain(base, ir.HttpApp(base, cors=_uses_cors(rconf))))
        elif family == "tcp":
            st = group[0]
            atts = sorted(st.routes, key=lambda a: route_age(a.route))
            if atts:
                backends = _stream_backends(snapshot, atts[0].route, out.clusters)
                if backends:
                    chains.append(ir.FilterChain(base, ir.TcpApp(backends)))
                for extra in atts[1:]:
                    issues.append(Issue(str(extra.route.ref), "spec.parentRefs",
                                        f"listener {st.key} of Gateway {gs.key} already serves "
                                        f"{atts[0].route.ref}; only one TCPRoute is used per listener",
                                        severity="warning"))
        else:
            filters = ("tls_inspector",)
            used: set[str] = set()
            for st in group:
                assert st.spec.tls is not None
                if st.spec.protocol == "HTTPS":
                    rc = f"{base}/{st.key}"
                    peers = [o for o in group if o is not st and o.spec.protocol == "HTTPS"]
                    rconf = ir.RouteConfig(rc, _virtual_hosts([st], ListenerContext(port, "https"), rc, peers), src,
                                           ignore_port_in_host_matching=True)
                    out.routes.append(rconf)
                    for s in st.secrets:
                        out.secrets[s.name] = s
                    sni = st.spec.hostname
                    used.add(sni)
                    chains.append(ir.FilterChain(rc, ir.HttpApp(rc, cors=_uses_cors(rconf)),
                                                 server_names=(sni,) if sni else (),
                                                 tls=_https_termination(st, out)))
                    continue
                terminate = st.spec.tls.mode == "Terminate"
                for s in st.secrets:
                    out.secrets[s.name] = s
                for att in sorted(st.routes, key=lambda a: route_age(a.route)):
                    names = tuple(h for h in att.hosts if h != "*" and h not in used)
                    catch_all = "*" in att.hosts and "" not in used
                    if not names and not catch_all:
                        continue
                    backends = _stream_backends(snapshot, att.route, out.clusters)
                    if not backends:
                        continue
                    used.update(names or ("",))
                    tls = ir.TlsTermination(tuple(s.name for s in st.secrets), alpn=()) if terminate else None
                    chain_name = f"{base}/{st.key}/{att.route.meta.namespace}/{att.route.meta.name}"
                    chains.append(ir.FilterChain(chain_name, ir.TcpApp(backends), server_names=names, tls=tls))
        if chains and gs.addresses:
            out.listeners.append(ir.Listener(base, gs.addresses[0], port, tuple(chains), listener_filters=filters,
                                             sources=src, additional_addresses=gs.addresses[1:]))
    if gs.client_cert is not None:  # TLS backends see the Gateway's client certificate
        out.clusters, renamed = client_cert_clusters(out.clusters, gs.client_cert.name)
        if renamed:
            out.secrets[gs.client_cert.name] = gs.client_cert
        out.routes = [retarget_routes(rc, renamed) for rc in out.routes]
        out.listeners = [retarget_listener(li, renamed) for li in out.listeners]
    return out


def _https_termination(st: ListenerState, out: GatewayIR) -> ir.TlsTermination:
    """An HTTPS listener's TLS: its certificates, and the client validation of spec.tls.frontend."""
    names = tuple(s.name for s in st.secrets)
    ca = st.client.secret if st.client is not None else None
    if ca is None:
        return ir.TlsTermination(names)
    out.secrets[ca.name] = ca
    assert st.client is not None
    return ir.TlsTermination(names, client_ca_secret=ca.name, client_cert_optional=st.client.insecure_fallback)


# -- statuses --------------------------------------------------------------------------------------------
def _listener_status(gs: GatewayState, st: ListenerState, previous: dict[str, Any], when: str) -> dict[str, Any]:
    conds = dict(st.conds)
    conflicted = conds.get("Conflicted")
    if conflicted is None:
        conds["Conflicted"] = Cond("Conflicted", False, "NoConflicts", "no conflicts")
    if "Accepted" not in conds:
        if conflicted is not None:
            conds["Accepted"] = Cond("Accepted", False, conflicted.reason, conflicted.message)
        elif gs.accepted is not None:
            conds["Accepted"] = Cond("Accepted", False, "Pending", "the Gateway is not accepted")
        else:
            conds["Accepted"] = Cond("Accepted", True, "Accepted", "listener accepted")
    conds.setdefault("ResolvedRefs", Cond("ResolvedRefs", True, "ResolvedRefs", "all references resolved"))
    if st.programmable and gs.unusable is not None:
        conds["Programmed"] = Cond("Programmed", False, "Pending", "the Gateway's addresses are not usable: "
                                   "nothing is bound")
    elif st.programmable:
        conds["Programmed"] = Cond("Programmed", True, "Programmed", "listener programmed")
    elif st.owner is not None and conflicted is not None:  # a ListenerSet's listener names why (GEP-1713)
        conds["Programmed"] = Cond("Programmed", False, conflicted.reason, conflicted.message)
    else:
        conds["Programmed"] = Cond("Programmed", False, "Invalid", "listener is not valid: nothing programmed")
    order = ["Accepted", "Conflicted", "ResolvedRefs", "Programmed", "OverlappingTLSConfig"]
    generation = (st.owner or gs.obj).meta.generation
    return {
        "name": st.spec.name,
        "supportedKinds": [{"group": GROUP, "kind": k} for k in st.supported],
        "attachedRoutes": st.attached,
        "conditions": conditions([conds[t] for t in order if t in conds], generation,
                                 previous.get(st.spec.name), when, owned=order),
    }


def _gateway_status(gs: GatewayState, opts: TranslateOptions) -> ObjectStatus:
    obj = gs.obj
    prev = previous_status(obj)
    when = fallback_time(obj, opts.status_time)
    prev_listeners: dict[str, Any] = {str(li.get("name")): li.get("conditions")
                                      for li in prev.get("listeners") or [] if isinstance(li, dict)}
    own = [st for st in gs.listeners if st.owner is None]
    valid = [st for st in own if st.programmable]
    if gs.accepted is not None:
        accepted = gs.accepted
        programmed = Cond("Programmed", False, "Invalid", "the Gateway is not accepted")
    else:
        if len(valid) == len(own):
            accepted = Cond("Accepted", True, "Accepted", f"handled by {gs.controller}")
        else:
            bad = ", ".join(st.spec.name for st in own if not st.programmable)
            accepted = Cond("Accepted", bool(valid), "ListenersNotValid", f"listener(s) not valid: {bad}")
        programmed = (gs.unusable if gs.unusable is not None else
                      Cond("Programmed", True, "Programmed", f"listening on {', '.join(gs.addresses)}") if valid else
                      Cond("Programmed", False, "Invalid", "no valid listener"))
    insecure = insecure_condition(obj)
    status = {
        **({"addresses": [{"type": "IPAddress", "value": a} for a in gs.addresses]} if gs.addresses else {}),
        "conditions": conditions([accepted, programmed, *([insecure] if insecure else []),
                                  *([gs.refs] if gs.refs else [])],
                                 obj.meta.generation, prev.get("conditions"), when,
                                 owned=("Accepted", "Programmed", INSECURE_CONDITION, "ResolvedRefs")),
        "listeners": [_listener_status(gs, st, prev_listeners, when) for st in own],
    }
    return ObjectStatus(obj.api_version, obj.kind, obj.meta.namespace, obj.meta.name, obj.meta.generation, status)


def _route_status(route: KubeObject, ours: list[dict[str, Any]], controllers: Iterable[str] = (CONTROLLER,)
                  ) -> ObjectStatus:
    claimed = {CONTROLLER, *controllers}
    foreign = [p for p in previous_status(route).get("parents") or []
               if isinstance(p, dict) and p.get("controllerName") not in claimed]
    return ObjectStatus(route.api_version, route.kind, route.meta.namespace, route.meta.name,
                        route.meta.generation, {"parents": [*ours, *foreign]})


_ROUTE_STATUSES: Memo[tuple[KubeObject, tuple[dict[str, Any], ...], tuple[dict[str, Any], ...], tuple[str, ...],
                            ObjectStatus]] = Memo()


def _route_status_memo(key: tuple[str, str, str], route: KubeObject, stanzas: tuple[dict[str, Any], ...],
                       in_mesh: Sequence[dict[str, Any]], controllers: tuple[str, ...]) -> ObjectStatus:
    """The route's status (its Gateway parents' stanzas, then its GAMMA ones), the same object while the
    route and the stanzas (from reused outcomes) are the very same objects."""
    if not memo_enabled():
        return _route_status(route, [*stanzas, *in_mesh], controllers)
    hit = _ROUTE_STATUSES.get(key)
    if (hit is not None and hit[0] is route and hit[1] is stanzas and hit[3] == controllers
            and len(hit[2]) == len(in_mesh) and all(a is b for a, b in zip(hit[2], in_mesh, strict=True))):
        return hit[4]
    status = _route_status(route, [*stanzas, *in_mesh], controllers)
    _ROUTE_STATUSES.put(key, (route, stanzas, tuple(in_mesh), controllers, status))
    return status


# -- the translator --------------------------------------------------------------------------------------
def _bundles(snapshot: InputSnapshot, gs: GatewayState, gir: GatewayIR,
             shared_taken: dict[int, list[tuple[str, str]]], issues: list[Issue]) -> tuple[ir.Bundle, ...]:
    shared = []
    for li in gir.listeners:
        mine = (li.address, *li.additional_addresses)
        clash = [(a, addr, owner) for addr, owner in shared_taken.get(li.port, []) for a in mine
                 if addr == a or "0.0.0.0" in (addr, a) or "::" in (addr, a)]
        if clash:
            issues.append(Issue(str(gs.obj.ref), "spec.listeners",
                                f"port {li.port} on {clash[0][0]} is already bound by Gateway {clash[0][2]} on "
                                "shared node proxies; this Gateway is served there only by its dedicated proxy",
                                severity="warning"))
            continue
        shared_taken.setdefault(li.port, []).extend((a, gs.key) for a in mine)
        shared.append(li)
    # The very same Bundle objects while the Gateway's IR is unchanged, so rendering reuses them.
    return _BUNDLES.compute(gs.key, (Ident(gs.obj), Ident(gir), tuple(Ident(li) for li in shared)), snapshot,
                            lambda _: _make_bundles(gs, gir, shared))


def _make_bundles(gs: GatewayState, gir: GatewayIR, shared: list[ir.Listener]) -> tuple[ir.Bundle, ...]:
    src = (str(gs.obj.ref),)
    clusters = tuple(sorted(gir.clusters.values(), key=lambda c: c.name))
    secrets = tuple(sorted(gir.secrets.values(), key=lambda s: s.name))
    out = [ir.Bundle(key=f"gateway:{gs.key}", scope=ir.ProxyScope(GATEWAY_ROLES, frozenset({gs.key})),
                     listeners=tuple(gir.listeners), routes=tuple(gir.routes), clusters=clusters, secrets=secrets,
                     sources=src)]
    if shared:
        out.append(ir.Bundle(key=f"gateway-shared:{gs.key}", scope=ir.ProxyScope(SHARED_ROLES),
                             listeners=tuple(shared), routes=tuple(gir.routes), clusters=clusters, secrets=secrets,
                             sources=src))
    return tuple(out)


_BY_IDENTITY = frozenset({"obj", "spec", "owner"})  # Kubernetes objects and their parsed parts


def _fields_signature(state: Any, special: Mapping[str, Any]) -> tuple[Any, ...]:
    """Every field of a state dataclass: Kubernetes objects by identity, lists and dicts as tuples, the rest
    by value, `special` fields as given. Field by field, so that a field added later is compared too (one
    that compares by identity only is never equal across runs: never reused, never stale)."""
    out: list[Any] = []
    for f in fields(state):
        if f.name in special:
            out.append(special[f.name])
            continue
        value = getattr(state, f.name)
        if f.name in _BY_IDENTITY:
            value = Ident(value)
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, dict):
            value = tuple(value.items())
        out.append(value)
    return tuple(out)


def _state_signature(gs: GatewayState) -> tuple[Any, ...]:
    """Everything `_gateway_ir` may take from a Gateway's state; objects by identity."""
    listeners = tuple(_fields_signature(st, {"routes": tuple(st.routes)})  # Attachments compare by identity
                      for st in gs.listeners)
    return _fields_signature(gs, {"listeners": listeners})


def _gateway_ir_memo(snapshot: InputSnapshot, gs: GatewayState) -> tuple[GatewayIR, tuple[Issue, ...]]:
    """A Gateway's IR (and the issues found making it), reused while its state and reads are unchanged."""

    def build(view: InputSnapshot) -> tuple[GatewayIR, tuple[Issue, ...]]:
        found: list[Issue] = []
        gir = _gateway_ir(view, gs, found)
        for sec in referenced_secrets(view, gir.clusters.values()):
            gir.secrets[sec.name] = sec
        return gir, tuple(found)

    return _GATEWAY_IR.compute(gs.key, _state_signature(gs), snapshot, build)


def _rule_builder(snapshot: InputSnapshot, route: KubeObject) -> RuleBuilder:
    """An HTTPRoute's/GRPCRoute's builder with every reference resolved, reused while the route and what
    resolving it read are unchanged."""

    def build(view: InputSnapshot) -> RuleBuilder:
        builder = RuleBuilder(view, route, grpc=route.kind == "GRPCRoute")
        builder.resolve_all()
        return builder

    return _BUILDERS.compute((route.kind, route.meta.namespace, route.meta.name), Ident(route), snapshot, build)


def _route_objects(snapshot: InputSnapshot) -> Iterable[KubeObject]:
    for kind in ROUTE_KINDS:
        yield from snapshot.list(kind)


def translate_gateway(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    """Gateway API (Gateways and GAMMA) -> bundles for gateway~/node~ (and mesh) proxies, and statuses."""
    issues: list[Issue] = []
    classes, statuses = _class_statuses(snapshot, opts)
    gateways = _gateway_states(snapshot, opts, classes)
    listener_sets = translate_listener_sets(snapshot, {k: g.obj for k, g in gateways.items()}, opts)
    statuses.extend(listener_sets.statuses)
    issues.extend(listener_sets.issues)
    _merge_listener_sets(snapshot, gateways, listener_sets.admitted, opts)
    signatures: dict[str, Any] = {}
    root = root_snapshot(snapshot)
    mesh = translate_gamma(snapshot, opts)
    controllers = tuple(opts.gateway_controllers)
    routes = _RoutePass.begin(snapshot, root, gateways, listener_sets, opts, signatures)
    tally = routes.patch(snapshot, root, gateways, listener_sets, mesh, controllers) if routes is not None else None
    if tally is None:
        tally = _Tally()
        for route in _route_objects(snapshot):
            key = (route.kind, route.meta.namespace, route.meta.name)
            outcome = routes.reuse(key, route) if routes is not None else None
            if outcome is None:
                outcome = _route_memo(snapshot, gateways, listener_sets, route, opts, signatures, root)
                if routes is not None:
                    routes.recomputed(key, route, outcome)
            in_mesh = mesh.parents.get(key)
            status = (_route_status_memo(key, route, outcome.stanzas, in_mesh or (), controllers)
                      if outcome.stanzas or in_mesh else None)
            tally.add(key, route, outcome, status)
        if routes is not None:
            routes.finish(tally, mesh)
    tally.apply(gateways)
    issues.extend(tally.issues())
    used_by = tally.used_sets
    bundles: list[ir.Bundle] = []
    shared_taken: dict[int, list[tuple[str, str]]] = {}
    for gkey in sorted(gateways):
        gs = gateways[gkey]
        issues.extend(gs.issues)
        gir, gir_issues = _gateway_ir_memo(snapshot, gs)
        issues.extend(gir_issues)
        bundles.extend(_bundles(snapshot, gs, gir, shared_taken, issues))
        ls_statuses = _listener_set_statuses(gs, listener_sets.admitted.get(gkey, ()), opts)
        accepted_sets = sum(any(c["type"] == "Accepted" and c["status"] == "True" for c in st.status["conditions"])
                            for st in ls_statuses)
        statuses.append(with_attached(_gateway_status(gs, opts), listener_sets, accepted_sets))
        statuses.extend(ls_statuses)
    tls_statuses, tls_issues = policy_statuses(snapshot, used_by, opts.status_time)
    statuses.extend(tls_statuses)
    issues.extend(tls_issues)
    bundles.extend(mesh.bundles)
    issues.extend(mesh.issues)
    statuses.extend(tally.statuses())
    fast = routes is not None and routes.fast  # reused routes' entries were not looked at: keep them all
    for memo in (_GATEWAY_IR, _BUNDLES) if fast else (_BUILDERS, _ROUTES, _GATEWAY_IR, _BUNDLES):
        memo.rotate()
    if memo_enabled() and not fast:
        _ROUTE_STATUSES.rotate()
    return Partial(bundles=tuple(bundles), statuses=tuple(statuses), issues=tuple(issues))


def describe_statuses(stanzas: Iterable[Mapping[str, Any]]) -> list[str]:
    """Human-readable lines for Gateway API status stanzas (the `/debug/status` JSON), for `cilia status`:
    one line per object, listener and route parent, with each condition as TYPE=STATUS(REASON)."""

    def conds(items: Any) -> str:
        return " ".join(f"{c.get('type')}={c.get('status')}({c.get('reason')})" for c in items or [])

    lines = []
    for st in stanzas:
        kind = st.get("kind", "")
        if kind not in ("GatewayClass", "Gateway", *ROUTE_KINDS):
            continue
        md = st.get("metadata") or {}
        name = f"{md['namespace']}/{md.get('name')}" if md.get("namespace") else str(md.get("name"))
        status = st.get("status") or {}
        head = f"{kind} {name}"
        if status.get("addresses"):
            head += " [" + ", ".join(str(a.get("value")) for a in status["addresses"]) + "]"
        lines.append(f"{head}: {conds(status.get('conditions'))}".rstrip(": "))
        for li in status.get("listeners") or []:
            routes = li.get("attachedRoutes")
            lines.append(f"  listener {li.get('name')} routes={routes}: {conds(li.get('conditions'))}")
        for p in status.get("parents") or []:
            ref = p.get("parentRef") or {}
            where = f"{ref.get('kind')} {ref.get('namespace') or md.get('namespace', '')}/{ref.get('name')}"
            if ref.get("sectionName"):
                where += f"#{ref['sectionName']}"
            if ref.get("port"):
                where += f":{ref['port']}"
            lines.append(f"  parent {where}: {conds(p.get('conditions'))}")
    return lines


__all__ = ["CONTROLLER", "describe_statuses", "same_parent", "translate_gateway"]
