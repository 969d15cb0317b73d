"""CiliumEnvoyConfig / CiliumClusterwideEnvoyConfig -> bundles of user-written Envoy resources.

Cilium's rules: a resource name without '/' is qualified as `namespace/cec-name/name` (clusterwide:
`/ccec-name/name`), and so are the references between resources of the same config (RDS route
config names, route and TCP proxy clusters, EDS service names, SDS secret names). Config sources left
out are filled in with ADS, since the proxy gets everything from cilia. The resources stay JSON here;
rendering parses them into Envoy messages and reports what does not parse.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from typing import Any

from cilia.diagnostics import Issue
from cilia.ir.model import Bundle, LabelRequirement, NodeSelector, ProxyScope, RawResource, ServiceRedirect
from cilia.k8s.cilium import EnvoyConfigSpec
from cilia.k8s.objects import KubeObject
from cilia.k8s.selector import LabelSelector
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import Memo, Partial, TranslateOptions

T_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
T_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
T_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
T_ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
T_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SUPPORTED_TYPES = (T_LISTENER, T_ROUTE, T_CLUSTER, T_ENDPOINT, T_SECRET)
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ADS_SOURCE: dict[str, Any] = {"ads": {}, "resource_api_version": "V3"}
CEC_SCOPE_ROLES = frozenset({"node"})
# Where listeners without an address bind (Cilium's proxy port range).
LISTENER_PORT_BASE = 10000
LISTENER_PORT_SPAN = 10000


def qualify(namespace: str, cec: str, name: str) -> str:
    if not name or "/" in name:
        return name
    return f"{namespace}/{cec}/{name}"


def _key(m: MutableMapping[str, Any], snake: str) -> str | None:
    """Proto JSON accepts snake_case and lowerCamelCase; return whichever spelling is present."""
    if snake in m:
        return snake
    parts = snake.split("_")
    camel = parts[0] + "".join(p.title() for p in parts[1:])
    return camel if camel in m else None


def _rename(m: Any, field: str, q: Callable[[str], str]) -> None:
    if isinstance(m, MutableMapping):
        k = _key(m, field)
        if k is not None and isinstance(m[k], str):
            m[k] = q(m[k])


def _child(m: Any, field: str) -> Any:
    if isinstance(m, MutableMapping):
        k = _key(m, field)
        if k is not None:
            return m[k]
    return None


def _children(m: Any, field: str) -> list[Any]:
    v = _child(m, field)
    return v if isinstance(v, list) else []


def _qualify_route_action(route: Any, q: Callable[[str], str]) -> None:
    action = _child(route, "route")
    _rename(action, "cluster", q)
    for wc in _children(_child(action, "weighted_clusters"), "clusters"):
        _rename(wc, "name", q)
    for mirror in _children(action, "request_mirror_policies"):
        _rename(mirror, "cluster", q)


def _qualify_route_config(rc: Any, q: Callable[[str], str]) -> None:
    for vh in _children(rc, "virtual_hosts"):
        for route in _children(vh, "routes"):
            _qualify_route_action(route, q)


def _qualify_tls(ts: Any, q: Callable[[str], str]) -> None:
    """SDS secret names inside a transport socket's TLS context."""
    cfg = _child(ts, "typed_config")
    common = _child(cfg, "common_tls_context")
    for sds in _children(common, "tls_certificate_sds_secret_configs"):
        _rename(sds, "name", q)
        _fill_source(sds, "sds_config")
    vsds = _child(common, "validation_context_sds_secret_config")
    _rename(vsds, "name", q)
    _fill_source(vsds, "sds_config")


def _fill_source(m: Any, field: str) -> None:
    if isinstance(m, MutableMapping) and _key(m, field) is None:
        m[field] = copy.deepcopy(ADS_SOURCE)


def _qualify_filter(f: Any, q: Callable[[str], str]) -> None:
    cfg = _child(f, "typed_config")
    if not isinstance(cfg, MutableMapping):
        return
    if cfg.get("@type") == HCM:
        rds = _child(cfg, "rds")
        _rename(rds, "route_config_name", q)
        _fill_source(rds, "config_source")
        _qualify_route_config(_child(cfg, "route_config"), q)
    elif cfg.get("@type") == TCP_PROXY:
        _rename(cfg, "cluster", q)
        for wc in _children(_child(cfg, "weighted_clusters"), "clusters"):
            _rename(wc, "name", q)


def qualify_resource(type_url: str, body: MutableMapping[str, Any], q: Callable[[str], str]) -> None:
    """Qualify names and references in place (on a private copy)."""
    if type_url == T_ENDPOINT:
        _rename(body, "cluster_name", q)
        return
    _rename(body, "name", q)
    if type_url == T_LISTENER:
        chains = list(_children(body, "filter_chains"))
        default = _child(body, "default_filter_chain")
        if default is not None:
            chains.append(default)
        for chain in chains:
            for f in _children(chain, "filters"):
                _qualify_filter(f, q)
            _qualify_tls(_child(chain, "transport_socket"), q)
    elif type_url == T_ROUTE:
        _qualify_route_config(body, q)
    elif type_url == T_CLUSTER:
        ctype = _child(body, "type")
        eds = _child(body, "eds_cluster_config")
        if ctype == "EDS":
            if eds is None:
                body["eds_cluster_config"] = {}
                eds = body["eds_cluster_config"]
            _fill_source(eds, "eds_config")
        _rename(eds, "service_name", q)
        _qualify_tls(_child(body, "transport_socket"), q)


def resource_name(type_url: str, body: MutableMapping[str, Any]) -> str:
    field = "cluster_name" if type_url == T_ENDPOINT else "name"
    value = _child(body, field)
    return value if isinstance(value, str) else ""


def to_node_selector(sel: LabelSelector) -> NodeSelector:
    return NodeSelector(sel.match_labels, tuple(LabelRequirement(r.key, r.operator, r.values)  # type: ignore[arg-type]
                                               for r in sel.match_expressions))


Translated = tuple[Bundle | None, tuple[ServiceRedirect, ...], tuple[Issue, ...]]
_MEMO: Memo[Translated] = Memo()  # per config, keyed by its content


def translate_envoy_configs(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    bundles: list[Bundle] = []
    redirects: list[ServiceRedirect] = []
    issues: list[Issue] = []
    for kind in ("CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig"):
        for obj in snapshot.list(kind):
            done = _MEMO.get((kind, obj.content_hash))
            if done is None:
                done = _MEMO.put((kind, obj.content_hash), _translate_config(kind, obj))
            bundle, more_redirects, more_issues = done
            if bundle is not None:
                bundles.append(bundle)
            redirects.extend(more_redirects)
            issues.extend(more_issues)
    _MEMO.rotate()
    bundles, redirects, bound = _bind_addressless_listeners(bundles, redirects)
    issues.extend(bound)
    return Partial(bundles=tuple(bundles), redirects=tuple(redirects), issues=tuple(issues))


def _has_address(body: Mapping[str, Any]) -> bool:
    return any(k in body for k in ("address", "internal_listener", "internalListener", "api_listener",
                                   "apiListener"))


def _explicit_port(body: Mapping[str, Any]) -> int:
    sock = _child(_child(body, "address"), "socket_address")
    port = _child(sock, "port_value") if sock is not None else None
    return port if isinstance(port, int) else 0


def _bind_addressless_listeners(bundles: list[Bundle], redirects: list[ServiceRedirect]
                                ) -> tuple[list[Bundle], list[ServiceRedirect], list[Issue]]:
    """Cilium leaves a CEC listener's address out and binds it to a proxy port of its own, where the
    Services redirected to it (`spec.services`) arrive. cilia does the same: such a listener binds
    127.0.0.1 on a port derived from its name (stable across restarts and replicas, probing past ports
    already taken). Every redirect record carries its listener's port, so the node agent can send the
    Service's traffic there."""
    raws = [(b, r) for b in bundles for r in b.raw if r.type_url == T_LISTENER]
    taken = {_explicit_port(r.body) for _, r in raws if _has_address(r.body)}
    assigned: dict[str, int] = {}
    issues: list[Issue] = []
    for _, r in sorted(raws, key=lambda br: br[1].name):
        if _has_address(r.body):
            continue
        port = LISTENER_PORT_BASE + int.from_bytes(hashlib.blake2b(r.name.encode(), digest_size=4).digest()) \
            % LISTENER_PORT_SPAN
        while port in taken:
            port = LISTENER_PORT_BASE + (port - LISTENER_PORT_BASE + 1) % LISTENER_PORT_SPAN
        taken.add(port)
        assigned[r.name] = port
        issues.append(Issue(", ".join(r.sources), f"{r.field}.address",
                            f"not set: listener {r.name!r} binds 127.0.0.1:{port}", severity="info"))
    ports = {r.name: _explicit_port(r.body) for _, r in raws if _has_address(r.body)} | assigned
    redirects = [replace(x, listener_port=ports.get(x.listener, 0)) for x in redirects]
    if not assigned:
        return bundles, redirects, issues
    out = []
    for b in bundles:
        if not any(r.name in assigned for r in b.raw if r.type_url == T_LISTENER):
            out.append(b)
            continue
        new_raw = tuple(
            replace(r, body={**r.body, "address": {"socket_address": {"address": "127.0.0.1",
                                                                      "port_value": assigned[r.name]}}})
            if r.type_url == T_LISTENER and r.name in assigned else r for r in b.raw)
        out.append(replace(b, raw=new_raw))
    return out, redirects, issues


def _translate_config(kind: str, obj: KubeObject) -> Translated:
    spec: EnvoyConfigSpec = obj.spec
    ref = str(obj.ref)
    ns = obj.meta.namespace
    issues: list[Issue] = []

    def q(name: str) -> str:
        return qualify(ns, obj.meta.name, name)

    raws: list[RawResource] = []
    bad = False
    seen: set[tuple[str, str]] = set()
    for i, res in enumerate(spec.resources):
        type_url = res["@type"]
        if type_url not in SUPPORTED_TYPES:
            issues.append(Issue(ref, f"spec.resources[{i}].@type",
                                f"unsupported resource type {type_url!r} (supported: Listener, "
                                "RouteConfiguration, Cluster, ClusterLoadAssignment, Secret)"))
            bad = True
            continue
        body = copy.deepcopy(dict(res))
        name = resource_name(type_url, body)
        if not name:
            issues.append(Issue(ref, f"spec.resources[{i}].name", "is required"))
            bad = True
            continue
        qualify_resource(type_url, body, q)
        qname = resource_name(type_url, body)
        if (type_url, qname) in seen:
            issues.append(Issue(ref, f"spec.resources[{i}].name", f"duplicate resource name {qname!r}"))
            bad = True
            continue
        seen.add((type_url, qname))
        raws.append(RawResource(type_url, qname, body, (ref,), f"spec.resources[{i}]"))
    if bad:
        return None, (), tuple(issues)  # an invalid config is rejected whole: half a config is worse than none
    selector = to_node_selector(spec.node_selector) if spec.node_selector is not None else None
    scope = ProxyScope(CEC_SCOPE_ROLES, None, selector)
    # As in Cilium, a service entry without `listener` means the config's first listener.
    first_listener = next((r.name for r in raws if r.type_url == T_LISTENER), "")
    redirects = tuple(ServiceRedirect(s.namespace, s.name, s.ports, q(s.listener) if s.listener else first_listener,
                                      scope, (ref,)) for s in spec.services)
    bundle = Bundle(key=f"cec:{kind}:{ns}/{obj.meta.name}", scope=scope, raw=tuple(raws), sources=(ref,))
    return bundle, redirects, tuple(issues)
