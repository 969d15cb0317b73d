"""Gateway API kinds (standard channel, plus TLSRoute/TCPRoute): GatewayClass, Gateway, HTTPRoute,
GRPCRoute, TLSRoute, TCPRoute, ReferenceGrant.

Parsing checks what the Gateway API CRDs check at admission (types, enums, the CEL rules that keep a
route meaningful), so a document the API server would refuse is refused here too, naming the field.
What the API server would accept but a controller must judge (a backend that does not exist, a
filter cilia does not support, a reference not permitted) is left to translation, which reports it
in the object's status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.errors import ValidationError
from cilia.k8s.fields import as_list, as_map, get_int, get_str
from cilia.k8s.objects import Meta
from cilia.k8s.registry import register_kind
from cilia.k8s.selector import LabelSelector, parse_label_selector

GROUP = "gateway.networking.k8s.io"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP", "UDP")
REDIRECT_CODES = (301, 302, 303, 307, 308)
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


# -- shared pieces ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ParentRef:
    """A route's parent: a Gateway (optionally one listener by sectionName/port) or, for GAMMA, a Service."""

    group: str
    kind: str
    namespace: str  # resolved: the route's namespace when left out
    name: str
    section_name: str = ""
    port: int | None = None
    raw: Mapping[str, Any] | None = None  # as written, echoed back in status.parents[].parentRef

    @property
    def is_gateway(self) -> bool:
        return self.group == GROUP and self.kind == "Gateway"

    @property
    def is_service(self) -> bool:
        return self.group in ("", "core") and self.kind == "Service"


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: str  # ReplaceFullPath | ReplacePrefixMatch
    value: str


@dataclass(frozen=True, slots=True)
class RequestRedirect:
    scheme: str = ""
    hostname: str = ""
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class URLRewrite:
    hostname: str = ""
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class RequestMirror:
    backend: BackendRef
    percent: float | None = None  # 0-100


@dataclass(frozen=True, slots=True)
class CORSFilter:
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age_s: int = 5


@dataclass(frozen=True, slots=True)
class Filter:
    """One HTTPRoute/GRPCRoute filter; exactly the field named by `type` is set."""

    type: str
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None
    mirror: RequestMirror | None = None
    extension: tuple[str, str, str] | None = None  # (group, kind, name)
    cors: CORSFilter | None = None


@dataclass(frozen=True, slots=True)
class BackendRef:
    group: str
    kind: str
    namespace: str  # resolved: the route's namespace when left out
    name: str
    port: int | None
    weight: int = 1
    filters: tuple[Filter, ...] = ()
    namespace_given: bool = False


@dataclass(frozen=True, slots=True)
class StringMatch:
    type: str  # Exact | RegularExpression (| PathPrefix for paths)
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    path: StringMatch | None = None  # name unused; None = PathPrefix "/"
    headers: tuple[StringMatch, ...] = ()
    query: tuple[StringMatch, ...] = ()
    method: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    """HTTPRoute `rules[].retry` (GEP-1731): retry a backend request on these HTTP status codes."""

    codes: tuple[int, ...] = ()
    attempts: int | None = None
    backoff_ms: int | None = None


@dataclass(frozen=True, slots=True)
class HTTPRule:
    name: str
    matches: tuple[HTTPMatch, ...]
    filters: tuple[Filter, ...]
    backend_refs: tuple[BackendRef, ...]
    timeout_request_ms: int | None = None
    timeout_backend_ms: int | None = None
    retry: Retry | None = None


@dataclass(frozen=True, slots=True)
class HTTPRouteSpec:
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[HTTPRule, ...]


@dataclass(frozen=True, slots=True)
class GRPCMethod:
    type: str  # Exact | RegularExpression
    service: str = ""
    method: str = ""


@dataclass(frozen=True, slots=True)
class GRPCMatch:
    method: GRPCMethod | None = None
    headers: tuple[StringMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class GRPCRule:
    name: str
    matches: tuple[GRPCMatch, ...]
    filters: tuple[Filter, ...]
    backend_refs: tuple[BackendRef, ...]


@dataclass(frozen=True, slots=True)
class GRPCRouteSpec:
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[GRPCRule, ...]


@dataclass(frozen=True, slots=True)
class StreamRule:
    name: str
    backend_refs: tuple[BackendRef, ...]


@dataclass(frozen=True, slots=True)
class TLSRouteSpec:
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[StreamRule, ...]


@dataclass(frozen=True, slots=True)
class TCPRouteSpec:
    parent_refs: tuple[ParentRef, ...]
    rules: tuple[StreamRule, ...]

    @property
    def hostnames(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class GatewayClassSpec:
    controller_name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class ObjectReference:
    group: str
    kind: str
    namespace: str  # resolved
    name: str
    namespace_given: bool = False


@dataclass(frozen=True, slots=True)
class RouteGroupKind:
    group: str
    kind: str


@dataclass(frozen=True, slots=True)
class AllowedRoutes:
    namespaces_from: str = "Same"  # Same | All | Selector
    selector: LabelSelector | None = None
    kinds: tuple[RouteGroupKind, ...] = ()  # empty: every kind the protocol supports


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    mode: str = "Terminate"  # Terminate | Passthrough
    certificate_refs: tuple[ObjectReference, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayListener:
    name: str
    hostname: str
    port: int
    protocol: str
    tls: ListenerTLS | None
    allowed_routes: AllowedRoutes


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    type: str  # IPAddress | Hostname | NamedAddress | domain-prefixed custom
    value: str


@dataclass(frozen=True, slots=True)
class LocalObjectReference:
    group: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class GatewayInfrastructure:
    """`spec.infrastructure`: labels and annotations for what the Gateway is served by, and parameters."""

    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    parameters_ref: LocalObjectReference | None = None


FRONTEND_MODES = ("AllowValidOnly", "AllowInsecureFallback")


@dataclass(frozen=True, slots=True)
class FrontendValidation:
    """`validation` of a frontend TLS config: the CA bundles client certificates must chain to, and
    whether a client without a valid one is still let in (AllowInsecureFallback)."""

    ca_certificate_refs: tuple[ObjectReference, ...]
    mode: str = "AllowValidOnly"
    path: str = ""  # where it was given, e.g. spec.tls.frontend.perPort[0].tls.validation


@dataclass(frozen=True, slots=True)
class FrontendTLS:
    """`spec.tls.frontend`: client certificate validation for the Gateway's HTTPS listeners."""

    default: FrontendValidation | None = None
    per_port: tuple[tuple[int, FrontendValidation | None], ...] = ()

    def for_port(self, port: int) -> FrontendValidation | None:
        """The validation that applies on `port`: its perPort entry's (which may have none), else the default."""
        for p, v in self.per_port:
            if p == port:
                return v
        return self.default


@dataclass(frozen=True, slots=True)
class AllowedListeners:
    """`spec.allowedListeners`: which namespaces' ListenerSets may attach (None: none may)."""

    namespaces_from: str = "None"  # None | Same | All | Selector
    selector: LabelSelector | None = None


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    gateway_class_name: str
    listeners: tuple[GatewayListener, ...]
    addresses: tuple[GatewayAddress, ...] = ()
    infrastructure: GatewayInfrastructure = GatewayInfrastructure()
    frontend_tls: FrontendTLS | None = None
    allowed_listeners: AllowedListeners = AllowedListeners()
    # spec.tls.backend.clientCertificateRef: the certificate the Gateway presents to TLS backends
    backend_client_cert: ObjectReference | None = None


@dataclass(frozen=True, slots=True)
class GatewayParentRef:
    """A ListenerSet's `spec.parentRef` (namespace resolved to the ListenerSet's when omitted)."""

    group: str
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class ListenerSetSpec:
    parent_ref: GatewayParentRef
    listeners: tuple[GatewayListener, ...]


@dataclass(frozen=True, slots=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    group: str
    kind: str
    name: str = ""  # empty: every object of that kind in the namespace


@dataclass(frozen=True, slots=True)
class ReferenceGrantSpec:
    from_: tuple[GrantFrom, ...]
    to: tuple[GrantTo, ...]


# -- field helpers ------------------------------------------------------------------------------------
def parse_duration_ms(value: str, path: str) -> int:
    """A Gateway API Duration (GEP-2257: e.g. `10s`, `1h30m`, `500ms`) in milliseconds."""
    if not _DURATION.match(value):
        raise ValidationError(path, f"{value!r} is not a duration like 10s, 500ms or 1h30m")
    units = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
    return sum(int(n) * units[u] for n, u in _DURATION_PART.findall(value))


def _hostname(value: Any, path: str, *, wildcard: bool = True) -> str:
    if not isinstance(value, str):
        raise ValidationError(path, "must be a string")
    if not value or len(value) > 253 or not _HOSTNAME.match(value) or (not wildcard and value.startswith("*")):
        raise ValidationError(path, f"{value!r} is not a valid hostname"
                              + ("" if wildcard else " (no wildcard allowed)"))
    return value


def _hostnames(raw: Mapping[str, Any], path: str) -> tuple[str, ...]:
    items = as_list(raw.get("hostnames"), f"{path}.hostnames")
    return tuple(_hostname(h, f"{path}.hostnames[{i}]") for i, h in enumerate(items))


def _parent_ref(raw: Any, path: str, route_ns: str) -> ParentRef:
    m = as_map(raw, path)
    name = get_str(m, "name", path, required=True)
    group = get_str(m, "group", path, default=GROUP)
    kind = get_str(m, "kind", path, default="Gateway")
    port = get_int(m, "port", path, minimum=1, maximum=65535)
    return ParentRef(group, kind, get_str(m, "namespace", path) or route_ns, name,
                     get_str(m, "sectionName", path), port, dict(m))


def _parent_refs(spec: Mapping[str, Any], route_ns: str) -> tuple[ParentRef, ...]:
    refs = tuple(_parent_ref(p, f"spec.parentRefs[{i}]", route_ns)
                 for i, p in enumerate(as_list(spec.get("parentRefs"), "spec.parentRefs")))
    seen: set[tuple[str, str, str, str, str, int | None]] = set()
    for i, r in enumerate(refs):
        key = (r.group, r.kind, r.namespace, r.name, r.section_name, r.port)
        if key in seen:
            raise ValidationError(f"spec.parentRefs[{i}]", "duplicate parentRef")
        seen.add(key)
    return refs


def _header_modifier(raw: Any, path: str) -> HeaderModifier:
    m = as_map(raw, path, required=True)

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        names: set[str] = set()
        for i, h in enumerate(as_list(m.get(key), f"{path}.{key}")):
            hp = f"{path}.{key}[{i}]"
            h = as_map(h, hp)
            name = _header_name(get_str(h, "name", hp, required=True), f"{hp}.name")
            if name.lower() in names:
                raise ValidationError(f"{hp}.name", f"header {name!r} appears twice")
            names.add(name.lower())
            out.append((name, get_str(h, "value", hp, required=True)))
        return tuple(out)

    remove = []
    for i, h in enumerate(as_list(m.get("remove"), f"{path}.remove")):
        remove.append(_header_name(h, f"{path}.remove[{i}]"))
    return HeaderModifier(pairs("set"), pairs("add"), tuple(remove))


def _header_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.match(value):
        raise ValidationError(path, f"{value!r} is not a valid header name")
    return value


def _path_modifier(raw: Any, path: str) -> PathModifier | None:
    if raw is None:
        return None
    m = as_map(raw, path)
    ptype = get_str(m, "type", path, required=True)
    if ptype == "ReplaceFullPath":
        value = get_str(m, "replaceFullPath", path, required=True)
    elif ptype == "ReplacePrefixMatch":
        value = get_str(m, "replacePrefixMatch", path, required=True)
    else:
        raise ValidationError(f"{path}.type", f"must be ReplaceFullPath or ReplacePrefixMatch, got {ptype!r}")
    if not value.startswith("/"):
        raise ValidationError(path, f"path {value!r} must start with '/'")
    return PathModifier(ptype, value)


def _backend_ref(raw: Any, path: str, route_ns: str, *, weighted: bool, http: bool) -> BackendRef:
    m = as_map(raw, path)
    name = get_str(m, "name", path, required=True)
    group = get_str(m, "group", path, default="")
    kind = get_str(m, "kind", path, default="Service")
    port = get_int(m, "port", path, minimum=1, maximum=65535)
    if group in ("", "core") and kind == "Service" and port is None:
        raise ValidationError(f"{path}.port", "is required when the backend is a Service")
    weight = get_int(m, "weight", path, default=1, minimum=0, maximum=1_000_000) if weighted else 1
    filters: tuple[Filter, ...] = ()
    if http and m.get("filters") is not None:
        filters = _filters(m.get("filters"), f"{path}.filters", route_ns, backend_level=True)
    ns = get_str(m, "namespace", path)
    return BackendRef(group, kind, ns or route_ns, name, port, weight if weight is not None else 1, filters,
                      bool(ns))


def _backend_refs(raw: Any, path: str, route_ns: str, *, http: bool = False) -> tuple[BackendRef, ...]:
    return tuple(_backend_ref(b, f"{path}[{i}]", route_ns, weighted=True, http=http)
                 for i, b in enumerate(as_list(raw, path)))


def _filters(raw: Any, path: str, route_ns: str, *, backend_level: bool = False,
             grpc: bool = False) -> tuple[Filter, ...]:
    out = []
    counts: dict[str, int] = {}
    for i, f in enumerate(as_list(raw, path)):
        fp = f"{path}[{i}]"
        f = as_map(f, fp)
        ftype = get_str(f, "type", fp, required=True)
        counts[ftype] = counts.get(ftype, 0) + 1
        if ftype == "RequestHeaderModifier":
            out.append(Filter(ftype, request_headers=_header_modifier(f.get("requestHeaderModifier"),
                                                                      f"{fp}.requestHeaderModifier")))
        elif ftype == "ResponseHeaderModifier":
            out.append(Filter(ftype, response_headers=_header_modifier(f.get("responseHeaderModifier"),
                                                                       f"{fp}.responseHeaderModifier")))
        elif ftype == "RequestRedirect" and not grpc:
            rp = f"{fp}.requestRedirect"
            r = as_map(f.get("requestRedirect"), rp, required=True)
            scheme = get_str(r, "scheme", rp)
            if scheme and scheme not in ("http", "https"):
                raise ValidationError(f"{rp}.scheme", f"must be http or https, got {scheme!r}")
            host = get_str(r, "hostname", rp)
            if host:
                _hostname(host, f"{rp}.hostname", wildcard=False)
            code = get_int(r, "statusCode", rp, default=302)
            if code not in REDIRECT_CODES:
                raise ValidationError(f"{rp}.statusCode", f"must be one of 301, 302, 303, 307, 308, got {code}")
            assert code is not None
            out.append(Filter(ftype, redirect=RequestRedirect(
                scheme, host, _path_modifier(r.get("path"), f"{rp}.path"),
                get_int(r, "port", rp, minimum=1, maximum=65535), code)))
        elif ftype == "URLRewrite" and not grpc:
            rp = f"{fp}.urlRewrite"
            r = as_map(f.get("urlRewrite"), rp, required=True)
            host = get_str(r, "hostname", rp)
            if host:
                _hostname(host, f"{rp}.hostname", wildcard=False)
            out.append(Filter(ftype, rewrite=URLRewrite(host, _path_modifier(r.get("path"), f"{rp}.path"))))
        elif ftype == "RequestMirror":
            mp = f"{fp}.requestMirror"
            mm = as_map(f.get("requestMirror"), mp, required=True)
            backend = _backend_ref(mm.get("backendRef"), f"{mp}.backendRef", route_ns, weighted=False, http=False)
            percent: float | None = None
            if mm.get("percent") is not None:
                p = get_int(mm, "percent", mp, minimum=0, maximum=100)
                percent = float(p) if p is not None else None
            if mm.get("fraction") is not None:
                if percent is not None:
                    raise ValidationError(mp, "only one of percent and fraction may be set")
                frac = as_map(mm.get("fraction"), f"{mp}.fraction")
                num = get_int(frac, "numerator", f"{mp}.fraction", required=True, minimum=0)
                den = get_int(frac, "denominator", f"{mp}.fraction", default=100, minimum=1)
                assert num is not None and den is not None
                if num > den:
                    raise ValidationError(f"{mp}.fraction", "numerator must not exceed denominator")
                percent = 100.0 * num / den
            out.append(Filter(ftype, mirror=RequestMirror(backend, percent)))
        elif ftype == "ExtensionRef":
            ep = f"{fp}.extensionRef"
            e = as_map(f.get("extensionRef"), ep, required=True)
            out.append(Filter(ftype, extension=(get_str(e, "group", ep, required=True),
                                                get_str(e, "kind", ep, required=True),
                                                get_str(e, "name", ep, required=True))))
        else:
            allowed = ("RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, ExtensionRef" if grpc else
                       "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, "
                       "RequestMirror, ExtensionRef")
            if ftype == "CORS":
                out.append(Filter(ftype, cors=_cors(f.get("cors"), f"{fp}.cors")))
                continue
            if ftype == "ExternalAuth":
                out.append(Filter(ftype))  # experimental: accepted by the API, reported as unsupported
                continue
            raise ValidationError(f"{fp}.type", f"must be one of {allowed}, got {ftype!r}")
    # CEL rules of the CRDs.
    for t in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "CORS"):
        if counts.get(t, 0) > 1:
            raise ValidationError(path, f"{t} may appear at most once")
    if counts.get("RequestRedirect") and counts.get("URLRewrite"):
        raise ValidationError(path, "RequestRedirect and URLRewrite cannot be used together")
    return tuple(out)


def _strings(raw: Any, path: str) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(as_list(raw, path)):
        if not isinstance(v, str) or not v:
            raise ValidationError(f"{path}[{i}]", "must be a non-empty string")
        out.append(v)
    return tuple(out)


def _cors(raw: Any, path: str) -> CORSFilter:
    m = as_map(raw, path, required=True)
    methods = _strings(m.get("allowMethods"), f"{path}.allowMethods")
    for i, meth in enumerate(methods):
        if meth != "*" and meth not in HTTP_METHODS:
            raise ValidationError(f"{path}.allowMethods[{i}]", f"must be * or an HTTP method, got {meth!r}")
    if "*" in methods and len(methods) > 1:
        raise ValidationError(f"{path}.allowMethods", "* must be the only entry")
    creds = m.get("allowCredentials", False)
    if not isinstance(creds, bool):
        raise ValidationError(f"{path}.allowCredentials", "must be a boolean")
    max_age = get_int(m, "maxAge", path, default=5, minimum=1)
    assert max_age is not None
    return CORSFilter(_strings(m.get("allowOrigins"), f"{path}.allowOrigins"), methods,
                      _strings(m.get("allowHeaders"), f"{path}.allowHeaders"),
                      _strings(m.get("exposeHeaders"), f"{path}.exposeHeaders"), creds, max_age)


def _string_match(raw: Any, path: str, what: str) -> StringMatch:
    m = as_map(raw, path)
    mtype = get_str(m, "type", path, default="Exact")
    if mtype not in ("Exact", "RegularExpression"):
        raise ValidationError(f"{path}.type", f"must be Exact or RegularExpression, got {mtype!r}")
    name = get_str(m, "name", path, required=True)
    if what == "header":
        _header_name(name, f"{path}.name")
    elif not name:
        raise ValidationError(f"{path}.name", "must not be empty")
    value = get_str(m, "value", path, required=True)
    if mtype == "RegularExpression":
        _check_regex(value, f"{path}.value")
    return StringMatch(mtype, name, value)


def _check_regex(value: str, path: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValidationError(path, f"invalid regular expression: {exc}") from None


def _unique_names(matches: tuple[StringMatch, ...], path: str, fold: bool) -> None:
    seen: set[str] = set()
    for m in matches:
        key = m.name.lower() if fold else m.name
        if key in seen:
            raise ValidationError(path, f"{m.name!r} is matched more than once")
        seen.add(key)


def _http_match(raw: Any, path: str) -> HTTPMatch:
    m = as_map(raw, path)
    pm: StringMatch | None = None
    if m.get("path") is not None:
        pp = f"{path}.path"
        p = as_map(m.get("path"), pp)
        ptype = get_str(p, "type", pp, default="PathPrefix")
        value = get_str(p, "value", pp, default="/")
        if ptype not in ("Exact", "PathPrefix", "RegularExpression"):
            raise ValidationError(f"{pp}.type", f"must be Exact, PathPrefix or RegularExpression, got {ptype!r}")
        if ptype in ("Exact", "PathPrefix"):
            if not value.startswith("/"):
                raise ValidationError(f"{pp}.value", "must be an absolute path starting with '/'")
            if "//" in value or "/./" in value or "/../" in value or value.endswith(("/..", "/.")) or "#" in value:
                raise ValidationError(f"{pp}.value", f"{value!r} must not contain '//', '/./', '/../' or '#'")
        else:
            _check_regex(value, f"{pp}.value")
        pm = StringMatch(ptype, "", value)
    headers = tuple(_string_match(h, f"{path}.headers[{i}]", "header")
                    for i, h in enumerate(as_list(m.get("headers"), f"{path}.headers")))
    _unique_names(headers, f"{path}.headers", fold=True)
    query = tuple(_string_match(q, f"{path}.queryParams[{i}]", "query")
                  for i, q in enumerate(as_list(m.get("queryParams"), f"{path}.queryParams")))
    _unique_names(query, f"{path}.queryParams", fold=False)
    method = get_str(m, "method", path)
    if method and method not in HTTP_METHODS:
        raise ValidationError(f"{path}.method", f"must be one of {', '.join(HTTP_METHODS)}, got {method!r}")
    return HTTPMatch(pm, headers, query, method)


def _timeouts(rule: Mapping[str, Any], path: str) -> tuple[int | None, int | None]:
    t = as_map(rule.get("timeouts"), f"{path}.timeouts")
    req = get_str(t, "request", f"{path}.timeouts")
    back = get_str(t, "backendRequest", f"{path}.timeouts")
    req_ms = parse_duration_ms(req, f"{path}.timeouts.request") if req else None
    back_ms = parse_duration_ms(back, f"{path}.timeouts.backendRequest") if back else None
    if req_ms and back_ms and back_ms > req_ms:
        raise ValidationError(f"{path}.timeouts.backendRequest", "must not be longer than timeouts.request")
    return req_ms, back_ms


def _retry(rule: Mapping[str, Any], path: str) -> Retry | None:
    if rule.get("retry") is None:
        return None
    rp = f"{path}.retry"
    r = as_map(rule.get("retry"), rp)
    codes = []
    for i, code in enumerate(as_list(r.get("codes"), f"{rp}.codes")):
        if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 599:
            raise ValidationError(f"{rp}.codes[{i}]", f"must be an HTTP status code 400-599, got {code!r}")
        codes.append(code)
    attempts = r.get("attempts")
    if attempts is not None and (not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0):
        raise ValidationError(f"{rp}.attempts", f"must be a whole number >= 0, got {attempts!r}")
    backoff = get_str(r, "backoff", rp)
    return Retry(tuple(dict.fromkeys(codes)), attempts,
                 parse_duration_ms(backoff, f"{rp}.backoff") if backoff else None)


def _rule_name(rule: Mapping[str, Any], path: str, seen: set[str]) -> str:
    name = get_str(rule, "name", path)
    if name:
        if name in seen:
            raise ValidationError(f"{path}.name", f"rule name {name!r} is used twice")
        seen.add(name)
    return name


# -- kinds --------------------------------------------------------------------------------------------
def _parse_gateway_class(raw: Mapping[str, Any], meta: Meta) -> GatewayClassSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    return GatewayClassSpec(get_str(spec, "controllerName", "spec", required=True),
                            get_str(spec, "description", "spec"))


def _allowed_routes(raw: Any, path: str) -> AllowedRoutes:
    m = as_map(raw, path)
    ns = as_map(m.get("namespaces"), f"{path}.namespaces")
    frm = get_str(ns, "from", f"{path}.namespaces", default="Same")
    if frm not in ("Same", "All", "Selector"):
        raise ValidationError(f"{path}.namespaces.from", f"must be Same, All or Selector, got {frm!r}")
    selector = None
    if frm == "Selector":
        if ns.get("selector") is None:
            raise ValidationError(f"{path}.namespaces.selector", "is required when from is Selector")
        selector = parse_label_selector(ns.get("selector"), f"{path}.namespaces.selector")
    kinds = []
    for i, k in enumerate(as_list(m.get("kinds"), f"{path}.kinds")):
        kp = f"{path}.kinds[{i}]"
        k = as_map(k, kp)
        kinds.append(RouteGroupKind(get_str(k, "group", kp, default=GROUP), get_str(k, "kind", kp, required=True)))
    return AllowedRoutes(frm, selector, tuple(kinds))


def _listener(raw: Any, path: str, gw_ns: str) -> GatewayListener:
    m = as_map(raw, path)
    name = get_str(m, "name", path, required=True)
    port = get_int(m, "port", path, required=True, minimum=1, maximum=65535)
    assert port is not None
    protocol = get_str(m, "protocol", path, required=True)
    hostname = get_str(m, "hostname", path)
    if hostname:
        _hostname(hostname, f"{path}.hostname")
    tls: ListenerTLS | None = None
    if m.get("tls") is not None:
        tp = f"{path}.tls"
        t = as_map(m.get("tls"), tp)
        mode = get_str(t, "mode", tp, default="Terminate")
        if mode not in ("Terminate", "Passthrough"):
            raise ValidationError(f"{tp}.mode", f"must be Terminate or Passthrough, got {mode!r}")
        refs = []
        for i, r in enumerate(as_list(t.get("certificateRefs"), f"{tp}.certificateRefs")):
            rp = f"{tp}.certificateRefs[{i}]"
            r = as_map(r, rp)
            ns = get_str(r, "namespace", rp)
            refs.append(ObjectReference(get_str(r, "group", rp, default=""), get_str(r, "kind", rp, default="Secret"),
                                        ns or gw_ns, get_str(r, "name", rp, required=True), bool(ns)))
        tls = ListenerTLS(mode, tuple(refs))
    # CEL rules of the Gateway CRD.
    if protocol in ("HTTP", "TCP", "UDP") and tls is not None:
        raise ValidationError(f"{path}.tls", f"must not be set for protocol {protocol}")
    if protocol in ("HTTPS", "TLS") and tls is None:
        raise ValidationError(f"{path}.tls", f"is required for protocol {protocol}")
    if protocol == "HTTPS" and tls is not None and tls.mode != "Terminate":
        raise ValidationError(f"{path}.tls.mode", "must be Terminate for protocol HTTPS")
    if tls is not None and tls.mode == "Terminate" and not tls.certificate_refs:
        raise ValidationError(f"{path}.tls.certificateRefs", "at least one is required when mode is Terminate")
    if protocol in ("TCP", "UDP") and hostname:
        raise ValidationError(f"{path}.hostname", f"must not be set for protocol {protocol}")
    return GatewayListener(name, hostname, port, protocol, tls, _allowed_routes(m.get("allowedRoutes"),
                                                                                f"{path}.allowedRoutes"))


def _listeners(spec: Mapping[str, Any], namespace: str) -> tuple[GatewayListener, ...]:
    """`spec.listeners` of a Gateway or ListenerSet: at least one, names unique."""
    listeners = tuple(_listener(item, f"spec.listeners[{i}]", namespace)
                      for i, item in enumerate(as_list(spec.get("listeners"), "spec.listeners", required=True)))
    if not listeners:
        raise ValidationError("spec.listeners", "at least one listener is required")
    names: set[str] = set()
    for i, li in enumerate(listeners):
        if li.name in names:
            raise ValidationError(f"spec.listeners[{i}].name", f"listener name {li.name!r} is used twice")
        names.add(li.name)
    return listeners


def _parse_gateway(raw: Mapping[str, Any], meta: Meta) -> GatewaySpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    cls = get_str(spec, "gatewayClassName", "spec", required=True)
    listeners = _listeners(spec, meta.namespace)
    addrs = []
    for i, a in enumerate(as_list(spec.get("addresses"), "spec.addresses")):
        ap = f"spec.addresses[{i}]"
        a = as_map(a, ap)
        addrs.append(GatewayAddress(get_str(a, "type", ap, default="IPAddress"), get_str(a, "value", ap)))
    return GatewaySpec(cls, listeners, tuple(addrs), _infrastructure(spec.get("infrastructure")),
                       allowed_listeners=_allowed_listeners(spec.get("allowedListeners")),
                       frontend_tls=_frontend_tls(spec, meta.namespace),
                       backend_client_cert=_backend_client_cert(spec.get("tls"), meta.namespace))


def _backend_client_cert(raw: Any, gw_ns: str) -> ObjectReference | None:
    """`spec.tls.backend.clientCertificateRef` (its namespace resolved to the Gateway's when omitted)."""
    tls = as_map(raw, "spec.tls")
    backend = as_map(tls.get("backend"), "spec.tls.backend")
    if backend.get("clientCertificateRef") is None:
        return None
    rp = "spec.tls.backend.clientCertificateRef"
    r = as_map(backend.get("clientCertificateRef"), rp)
    ns = get_str(r, "namespace", rp)
    return ObjectReference(get_str(r, "group", rp, default=""), get_str(r, "kind", rp, default="Secret"),
                           ns or gw_ns, get_str(r, "name", rp, required=True), bool(ns))


def _allowed_listeners(raw: Any) -> AllowedListeners:
    path = "spec.allowedListeners"
    m = as_map(raw, path)
    ns = as_map(m.get("namespaces"), f"{path}.namespaces")
    frm = get_str(ns, "from", f"{path}.namespaces", default="None")
    if frm not in ("None", "Same", "All", "Selector"):
        raise ValidationError(f"{path}.namespaces.from", f"must be None, Same, All or Selector, got {frm!r}")
    selector = None
    if frm == "Selector":
        if ns.get("selector") is None:
            raise ValidationError(f"{path}.namespaces.selector", "is required when from is Selector")
        selector = parse_label_selector(ns.get("selector"), f"{path}.namespaces.selector")
    return AllowedListeners(frm, selector)


def _parse_listener_set(raw: Mapping[str, Any], meta: Meta) -> ListenerSetSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    pr = as_map(spec.get("parentRef"), "spec.parentRef", required=True)
    parent = GatewayParentRef(get_str(pr, "group", "spec.parentRef", default=GROUP),
                              get_str(pr, "kind", "spec.parentRef", default="Gateway"),
                              get_str(pr, "namespace", "spec.parentRef") or meta.namespace,
                              get_str(pr, "name", "spec.parentRef", required=True))
    listeners = _listeners(spec, meta.namespace)
    return ListenerSetSpec(parent, listeners)


def _frontend_validation(raw: Any, path: str, gw_ns: str) -> FrontendValidation | None:
    """A TLSConfig (`{validation: ...}`) at `path`; None when it has no validation."""
    m = as_map(raw, path)
    if m.get("validation") is None:
        return None
    vp = f"{path}.validation"
    v = as_map(m.get("validation"), vp)
    mode = get_str(v, "mode", vp, default="AllowValidOnly")
    if mode not in FRONTEND_MODES:
        raise ValidationError(f"{vp}.mode", f"must be one of {', '.join(FRONTEND_MODES)}, got {mode!r}")
    items = as_list(v.get("caCertificateRefs"), f"{vp}.caCertificateRefs", required=True)
    if not 1 <= len(items) <= 8:
        raise ValidationError(f"{vp}.caCertificateRefs", f"must hold 1 to 8 references, got {len(items)}")
    refs = []
    for i, r in enumerate(items):
        rp = f"{vp}.caCertificateRefs[{i}]"
        r = as_map(r, rp)
        ns = get_str(r, "namespace", rp)
        refs.append(ObjectReference(get_str(r, "group", rp, default=""), get_str(r, "kind", rp, required=True),
                                    ns or gw_ns, get_str(r, "name", rp, required=True), bool(ns)))
    return FrontendValidation(tuple(refs), mode, vp)


def _frontend_tls(spec: Mapping[str, Any], gw_ns: str) -> FrontendTLS | None:
    tls = as_map(spec.get("tls"), "spec.tls")
    if tls.get("frontend") is None:
        return None
    path = "spec.tls.frontend"
    f = as_map(tls.get("frontend"), path)
    default = _frontend_validation(as_map(f.get("default"), f"{path}.default", required=True), f"{path}.default",
                                   gw_ns)
    per_port: list[tuple[int, FrontendValidation | None]] = []
    items = as_list(f.get("perPort"), f"{path}.perPort")
    if len(items) > 64:
        raise ValidationError(f"{path}.perPort", f"must hold at most 64 entries, got {len(items)}")
    for i, item in enumerate(items):
        ip = f"{path}.perPort[{i}]"
        m = as_map(item, ip)
        port = get_int(m, "port", ip, required=True, minimum=1, maximum=65535)
        assert port is not None
        if any(p == port for p, _ in per_port):
            raise ValidationError(f"{ip}.port", f"port {port} is given twice (each port takes one TLS configuration)")
        per_port.append((port, _frontend_validation(as_map(m.get("tls"), f"{ip}.tls", required=True), f"{ip}.tls",
                                                    gw_ns)))
    return FrontendTLS(default, tuple(per_port))


def _string_map(raw: Any, path: str) -> tuple[tuple[str, str], ...]:
    m = as_map(raw, path)
    out = []
    for k, v in m.items():
        if not isinstance(v, str):
            raise ValidationError(f"{path}.{k}", "must be a string")
        out.append((str(k), v))
    return tuple(sorted(out))


def _infrastructure(raw: Any) -> GatewayInfrastructure:
    path = "spec.infrastructure"
    m = as_map(raw, path)
    ref: LocalObjectReference | None = None
    if m.get("parametersRef") is not None:
        rp = f"{path}.parametersRef"
        r = as_map(m.get("parametersRef"), rp)
        ref = LocalObjectReference(get_str(r, "group", rp, default=""), get_str(r, "kind", rp, required=True),
                                   get_str(r, "name", rp, required=True))
    return GatewayInfrastructure(_string_map(m.get("labels"), f"{path}.labels"),
                                 _string_map(m.get("annotations"), f"{path}.annotations"), ref)


def _parse_http_route(raw: Mapping[str, Any], meta: Meta) -> HTTPRouteSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    ns = meta.namespace
    rules = []
    names: set[str] = set()
    for i, r in enumerate(as_list(spec.get("rules"), "spec.rules") or [{}]):
        rp = f"spec.rules[{i}]"
        r = as_map(r, rp)
        matches = tuple(_http_match(m, f"{rp}.matches[{j}]")
                        for j, m in enumerate(as_list(r.get("matches"), f"{rp}.matches")))
        filters = _filters(r.get("filters"), f"{rp}.filters", ns)
        for f in filters:
            path_mod = (f.redirect.path if f.redirect else None) or (f.rewrite.path if f.rewrite else None)
            if path_mod is not None and path_mod.type == "ReplacePrefixMatch":
                if len(matches) > 1 or (matches and matches[0].path is not None
                                        and matches[0].path.type != "PathPrefix"):
                    raise ValidationError(f"{rp}.filters", "ReplacePrefixMatch needs exactly one match, "
                                                           "with a PathPrefix path")
        req, back = _timeouts(r, rp)
        rules.append(HTTPRule(_rule_name(r, rp, names), matches or (HTTPMatch(),), filters,
                              _backend_refs(r.get("backendRefs"), f"{rp}.backendRefs", ns, http=True), req, back,
                              _retry(r, rp)))
    return HTTPRouteSpec(_parent_refs(spec, ns), _hostnames(spec, "spec"), tuple(rules))


def _grpc_match(raw: Any, path: str) -> GRPCMatch:
    m = as_map(raw, path)
    method: GRPCMethod | None = None
    if m.get("method") is not None:
        mp = f"{path}.method"
        mm = as_map(m.get("method"), mp)
        mtype = get_str(mm, "type", mp, default="Exact")
        if mtype not in ("Exact", "RegularExpression"):
            raise ValidationError(f"{mp}.type", f"must be Exact or RegularExpression, got {mtype!r}")
        service = get_str(mm, "service", mp)
        meth = get_str(mm, "method", mp)
        if not service and not meth:
            raise ValidationError(mp, "one or both of service and method must be set")
        if mtype == "Exact":
            if service and not re.match(r"^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$", service, re.IGNORECASE):
                raise ValidationError(f"{mp}.service", f"{service!r} is not a valid gRPC service name")
            if meth and not re.match(r"^[A-Za-z_][A-Za-z_0-9]*$", meth):
                raise ValidationError(f"{mp}.method", f"{meth!r} is not a valid gRPC method name")
        else:
            for v, f in ((service, "service"), (meth, "method")):
                if v:
                    _check_regex(v, f"{mp}.{f}")
        method = GRPCMethod(mtype, service, meth)
    headers = tuple(_string_match(h, f"{path}.headers[{i}]", "header")
                    for i, h in enumerate(as_list(m.get("headers"), f"{path}.headers")))
    _unique_names(headers, f"{path}.headers", fold=True)
    return GRPCMatch(method, headers)


def _parse_grpc_route(raw: Mapping[str, Any], meta: Meta) -> GRPCRouteSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    ns = meta.namespace
    rules = []
    names: set[str] = set()
    for i, r in enumerate(as_list(spec.get("rules"), "spec.rules") or [{}]):
        rp = f"spec.rules[{i}]"
        r = as_map(r, rp)
        matches = tuple(_grpc_match(m, f"{rp}.matches[{j}]")
                        for j, m in enumerate(as_list(r.get("matches"), f"{rp}.matches")))
        rules.append(GRPCRule(_rule_name(r, rp, names), matches or (GRPCMatch(),),
                              _filters(r.get("filters"), f"{rp}.filters", ns, grpc=True),
                              _backend_refs(r.get("backendRefs"), f"{rp}.backendRefs", ns, http=True)))
    return GRPCRouteSpec(_parent_refs(spec, ns), _hostnames(spec, "spec"), tuple(rules))


def _stream_rules(spec: Mapping[str, Any], ns: str) -> tuple[StreamRule, ...]:
    rules = []
    names: set[str] = set()
    items = as_list(spec.get("rules"), "spec.rules", required=True)
    if not items:
        raise ValidationError("spec.rules", "at least one rule is required")
    for i, r in enumerate(items):
        rp = f"spec.rules[{i}]"
        r = as_map(r, rp)
        refs = _backend_refs(r.get("backendRefs"), f"{rp}.backendRefs", ns)
        if not refs:
            raise ValidationError(f"{rp}.backendRefs", "at least one backendRef is required")
        rules.append(StreamRule(_rule_name(r, rp, names), refs))
    return tuple(rules)


def _parse_tls_route(raw: Mapping[str, Any], meta: Meta) -> TLSRouteSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    return TLSRouteSpec(_parent_refs(spec, meta.namespace), _hostnames(spec, "spec"),
                        _stream_rules(spec, meta.namespace))


def _parse_tcp_route(raw: Mapping[str, Any], meta: Meta) -> TCPRouteSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    return TCPRouteSpec(_parent_refs(spec, meta.namespace), _stream_rules(spec, meta.namespace))


def _parse_reference_grant(raw: Mapping[str, Any], meta: Meta) -> ReferenceGrantSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    froms = []
    for i, f in enumerate(as_list(spec.get("from"), "spec.from", required=True)):
        fp = f"spec.from[{i}]"
        f = as_map(f, fp)
        froms.append(GrantFrom(get_str(f, "group", fp, required=True), get_str(f, "kind", fp, required=True),
                               get_str(f, "namespace", fp, required=True)))
    tos = []
    for i, t in enumerate(as_list(spec.get("to"), "spec.to", required=True)):
        tp = f"spec.to[{i}]"
        t = as_map(t, tp)
        tos.append(GrantTo(get_str(t, "group", tp, required=True), get_str(t, "kind", tp, required=True),
                           get_str(t, "name", tp)))
    if not froms or not tos:
        raise ValidationError("spec", "from and to must each have at least one entry")
    return ReferenceGrantSpec(tuple(froms), tuple(tos))


register_kind("GatewayClass", GROUP, ("v1", "v1beta1"), False, _parse_gateway_class, plural="gatewayclasses")
register_kind("Gateway", GROUP, ("v1", "v1beta1"), True, _parse_gateway)
register_kind("HTTPRoute", GROUP, ("v1", "v1beta1"), True, _parse_http_route)
register_kind("GRPCRoute", GROUP, ("v1", "v1alpha2"), True, _parse_grpc_route)
register_kind("TLSRoute", GROUP, ("v1alpha2", "v1alpha3", "v1"), True, _parse_tls_route)
register_kind("TCPRoute", GROUP, ("v1alpha2", "v1alpha3", "v1"), True, _parse_tcp_route)
register_kind("ReferenceGrant", GROUP, ("v1beta1", "v1"), True, _parse_reference_grant)
register_kind("ListenerSet", GROUP, ("v1",), True, _parse_listener_set)
