"""Cilium's rules for the Envoy resources of a CiliumEnvoyConfig, applied to their JSON.

As Cilium's agent does (its CEC resource parser), per config `ns/cec` (clusterwide: `ns` is empty):
- Listener and RouteConfiguration names, virtual host names and RDS route config names are always
  qualified as `ns/cec/name` (Cilium's ForceNamespace), unless their first `/`-separated part already
  is `ns`; empty names stay empty.
- Cluster, ClusterLoadAssignment and Secret names, and the references to them (route clusters,
  weighted clusters, request mirrors, TCP proxy clusters, SDS secret names in TLS contexts, a
  cluster's `load_assignment.cluster_name`, internal listener addresses, health check filter cluster
  keys) are qualified only when they contain no `/`.
- Config sources left out (RDS, EDS of an EDS cluster, SDS) are filled in with ADS: the proxy gets
  everything from cilia.
- A cluster without `circuit_breakers` gets Cilium's default thresholds (max_retries 128,
  max_connections 1024, max_requests 1024: Cilium's `--proxy-max-concurrent-retries`,
  `--proxy-cluster-max-connections`, `--proxy-cluster-max-requests` defaults).
- An endpoint address naming an internal listener of this very config needs that listener, with
  `internal_listener` set ("missing internal listener").

Where cilia goes further (docs/cilium-compatibility.md):
- A cluster reference to one of the node bootstrap's clusters (`/envoy-admin`, `egress-cluster`,
  `ingress-cluster` and their `-tls` twins), with or without a leading `/`, that the config does not
  define itself resolves to that cluster and is not qualified.
- A filter given by name only gets the empty typed config that name stands for (an info issue); an
  unknown name without config is an error and the config is rejected.
- An EDS cluster's `service_name` without `/` is qualified too, so it can name a
  ClusterLoadAssignment of the same config; default filter chains are treated like filter chains.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cilia.ir.model import NODE_ADMIN_CLUSTER, NODE_STATIC_CLUSTERS, SharedJson
from cilia.translate.cec_filters import config_type_for

T_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
T_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
T_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
T_ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
T_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SUPPORTED_TYPES = (T_LISTENER, T_ROUTE, T_CLUSTER, T_ENDPOINT, T_SECRET)
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HEALTH_CHECK = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Cilium's defaults for a cluster that sets no circuit breakers.
CIRCUIT_BREAKER_DEFAULTS: dict[str, int] = {"max_retries": 128, "max_connections": 1024, "max_requests": 1024}
# A reference, as written, -> the node bootstrap's cluster it means.
BOOTSTRAP_ALIASES: dict[str, str] = {
    **{n: n for n in NODE_STATIC_CLUSTERS},
    **{"/" + n.lstrip("/"): n for n in NODE_STATIC_CLUSTERS},
    NODE_ADMIN_CLUSTER.lstrip("/"): NODE_ADMIN_CLUSTER,
}


_ATOMS = (str, int, float, bool, type(None))


def copy_json(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """`copy.deepcopy` for JSON-like data, several times faster: dicts and lists are copied (an object
    held twice is copied once and held twice, as deepcopy does), strings, numbers, booleans and None
    are shared (immutable); anything else goes to deepcopy."""
    if memo is None:
        memo = {}
    t = type(value)
    if t is dict or t is list:
        got = memo.get(id(value))
        if got is not None:
            return got
        if t is dict:
            d: dict[Any, Any] = {}
            memo[id(value)] = d
            for k, v in value.items():
                d[k] = v if type(v) in _ATOMS else copy_json(v, memo)
            return d
        items: list[Any] = []
        memo[id(value)] = items
        items.extend(v if type(v) in _ATOMS else copy_json(v, memo) for v in value)
        return items
    if t in _ATOMS:
        return value
    return copy.deepcopy(value, memo)


def qualify(namespace: str, cec: str, name: str, *, force: bool = False) -> str:
    """Cilium's ResourceQualifiedName: `ns/cec/name` for a name without `/`; with `force`, also for one
    with `/` unless its first part is `ns` (a clusterwide config's `ns` is "", so `/x` is kept)."""
    if not name:
        return name
    slash = name.find("/")
    if slash >= 0 and (not force or (slash == len(namespace) and name.startswith(namespace))):
        return name
    return f"{namespace}/{cec}/{name}"


def key_of(m: dict[str, Any], snake: str) -> str | None:
    """Proto JSON accepts snake_case and lowerCamelCase; return whichever spelling is present."""
    if snake in m:
        return snake
    camel = _CAMEL.get(snake)
    if camel is None:
        parts = snake.split("_")
        camel = _CAMEL[snake] = parts[0] + "".join(p.title() for p in parts[1:])
    return camel if camel in m else None


_CAMEL: dict[str, str] = {}  # snake_case -> lowerCamelCase, for the field names this module looks up


def child(m: Any, name: str) -> Any:
    if isinstance(m, dict):  # resource JSON is plain dicts and lists (a private copy of the object's)
        k = key_of(m, name)
        if k is not None:
            return m[k]
    return None


def children(m: Any, name: str) -> list[Any]:
    v = child(m, name)
    return v if isinstance(v, list) else []


def resource_name(type_url: str, body: dict[str, Any]) -> str:
    value = child(body, "cluster_name" if type_url == T_ENDPOINT else "name")
    return value if isinstance(value, str) else ""


def _rename(m: Any, name: str, fn: Callable[[str], str]) -> None:
    if isinstance(m, dict):
        k = key_of(m, name)
        if k is not None and isinstance(m[k], str):
            m[k] = fn(m[k])


def _fill(m: Any, name: str, make: Callable[[], Any]) -> None:
    if isinstance(m, dict) and key_of(m, name) is None:
        m[name] = make()


# Fields of a route action, besides `cluster`, that name clusters (both spellings).
_MORE_ROUTE_REFS = frozenset({"weighted_clusters", "weightedClusters", "request_mirror_policies",
                              "requestMirrorPolicies"})
# Fields of a cluster that `ConfigParser._cluster` looks into or fills in (both spellings).
_CLUSTER_PARTS = frozenset({"transport_socket", "transportSocket", "typed_extension_protocol_options",
                            "typedExtensionProtocolOptions", "circuit_breakers", "circuitBreakers",
                            "eds_cluster_config", "edsClusterConfig", "load_assignment", "loadAssignment"})
# Defaults filled into many resources: one shared object each (converted once when rendered). A SharedJson
# refuses changes to itself; the list inside (the converter takes repeated fields as lists) is never changed
# either: nothing edits a default in place.
_ADS_SOURCE = SharedJson({"ads": SharedJson(), "resource_api_version": "V3"})
_DEFAULT_CIRCUIT_BREAKERS = SharedJson({"thresholds": [SharedJson(CIRCUIT_BREAKER_DEFAULTS)]})


def ads_source() -> dict[str, Any]:
    return _ADS_SOURCE


def default_circuit_breakers() -> dict[str, Any]:
    return _DEFAULT_CIRCUIT_BREAKERS


@dataclass(slots=True)
class Finding:
    field: str
    message: str
    severity: str = "error"


@dataclass(slots=True)
class ConfigParser:
    """Applies the rules to the resources of one config, in place, on private copies."""

    namespace: str
    name: str
    defined_clusters: frozenset[str] = frozenset()  # cluster names as written in this config
    findings: list[Finding] = field(default_factory=list)
    internal_listeners: set[str] = field(default_factory=set)  # qualified names of internal listeners
    internal_refs: list[tuple[str, str]] = field(default_factory=list)  # (field, qualified listener)
    cluster_refs: list[tuple[str, str]] = field(default_factory=list)  # (field, cluster as resolved)

    def q(self, name: str, *, force: bool = False) -> str:
        return qualify(self.namespace, self.name, name, force=force)

    def cluster_ref(self, name: str, where: str) -> str:
        """A reference to a cluster: one of the node bootstrap's, unless this config defines that name."""
        if name not in self.defined_clusters and name in BOOTSTRAP_ALIASES:
            resolved = BOOTSTRAP_ALIASES[name]
        else:
            resolved = self.q(name)
        self.cluster_refs.append((where, resolved))
        return resolved

    def _ref(self, m: Any, name: str, where: str) -> None:
        _rename(m, name, lambda n: self.cluster_ref(n, f"{where}.{name}"))

    # -- per resource type ------------------------------------------------------------------------
    def parse(self, type_url: str, body: dict[str, Any], path: str) -> None:
        if type_url == T_LISTENER:
            self._listener(body, path)
        elif type_url == T_ROUTE:
            self._route_config(body, path)
        elif type_url == T_CLUSTER:
            self._cluster(body, path)
        elif type_url == T_ENDPOINT:
            self._load_assignment(body, path)
        elif type_url == T_SECRET:
            _rename(body, "name", self.q)

    def check(self) -> None:
        """After every resource: internal listener addresses of this config name its internal listeners."""
        for where, qualified in self.internal_refs:
            parts = qualified.split("/", 2)
            if len(parts) == 3 and parts[0] == self.namespace and parts[1] == self.name \
                    and qualified not in self.internal_listeners:
                self.findings.append(Finding(where, f"missing internal listener: {parts[2]} (this config has no "
                                                    f"listener {parts[2]!r} with internal_listener set)"))

    def _listener(self, body: dict[str, Any], path: str) -> None:
        _rename(body, "name", lambda n: self.q(n, force=True))
        if child(body, "internal_listener") is not None:
            self.internal_listeners.add(resource_name(T_LISTENER, body))
        for i, lf in enumerate(children(body, "listener_filters")):
            self._named_filter(lf, f"{path}.listener_filters[{i}]")
        chains = [(f"{path}.filter_chains[{i}]", c) for i, c in enumerate(children(body, "filter_chains"))]
        default = child(body, "default_filter_chain")
        if default is not None:
            chains.append((f"{path}.default_filter_chain", default))
        for where, chain in chains:
            self._tls(child(chain, "transport_socket"))
            for i, f in enumerate(children(chain, "filters")):
                self._named_filter(f, f"{where}.filters[{i}]")
                self._network_filter(f, f"{where}.filters[{i}]")

    def _network_filter(self, f: Any, path: str) -> None:
        cfg = child(f, "typed_config")
        if not isinstance(cfg, dict):
            return
        if cfg.get("@type") == HCM:
            rds = child(cfg, "rds")
            if isinstance(rds, dict):
                _rename(rds, "route_config_name", lambda n: self.q(n, force=True))
                _fill(rds, "config_source", ads_source)
            self._route_config(child(cfg, "route_config"), f"{path}.typed_config.route_config")
            for i, hf in enumerate(children(cfg, "http_filters")):
                self._named_filter(hf, f"{path}.typed_config.http_filters[{i}]")
                hcfg = child(hf, "typed_config")
                if isinstance(hcfg, dict) and hcfg.get("@type") == HEALTH_CHECK:
                    k = key_of(hcfg, "cluster_min_healthy_percentages")
                    if k is not None and isinstance(hcfg[k], dict):
                        hcfg[k] = {self.q(c): v for c, v in hcfg[k].items()}
        elif cfg.get("@type") == TCP_PROXY:
            self._ref(cfg, "cluster", f"{path}.typed_config")
            for i, wc in enumerate(children(child(cfg, "weighted_clusters"), "clusters")):
                self._ref(wc, "name", f"{path}.typed_config.weighted_clusters.clusters[{i}]")

    def _named_filter(self, f: Any, path: str) -> None:
        """A filter with a name and neither typed_config nor config_discovery: fill in its empty config."""
        if not isinstance(f, dict) or key_of(f, "typed_config") is not None \
                or key_of(f, "config_discovery") is not None:
            return
        name = f.get("name")
        if not isinstance(name, str) or not name:
            return
        type_url = config_type_for(name)
        if type_url is None:
            self.findings.append(Finding(f"{path}.typed_config", (
                f"not set, and filter {name!r} is not a filter name cilia knows a config type for: "
                "give typed_config with its @type")))
            return
        f["typed_config"] = {"@type": type_url}
        self.findings.append(Finding(f"{path}.typed_config", (
            f"not set: filter {name!r} gets the empty config {type_url.rsplit('/', 1)[-1]}"), "info"))

    def _route_config(self, rc: Any, path: str) -> None:
        if not isinstance(rc, dict):
            return
        _rename(rc, "name", lambda n: self.q(n, force=True))
        for i, vh in enumerate(children(rc, "virtual_hosts")):
            _rename(vh, "name", lambda n: self.q(n, force=True))
            for j, route in enumerate(children(vh, "routes")):
                action = route.get("route") if type(route) is dict else None
                if type(action) is not dict:
                    continue  # no cluster to name (or not an object: the renderer says so)
                where = f"{path}.virtual_hosts[{i}].routes[{j}].route"
                cluster = action.get("cluster")
                if isinstance(cluster, str):
                    action["cluster"] = self.cluster_ref(cluster, f"{where}.cluster")
                if action.keys().isdisjoint(_MORE_ROUTE_REFS):
                    continue
                for k, wc in enumerate(children(child(action, "weighted_clusters"), "clusters")):
                    self._ref(wc, "name", f"{where}.weighted_clusters.clusters[{k}]")
                for k, mirror in enumerate(children(action, "request_mirror_policies")):
                    self._ref(mirror, "cluster", f"{where}.request_mirror_policies[{k}]")

    def _tls(self, ts: Any) -> None:
        """SDS secret names inside a transport socket's TLS context: qualified, config source filled in."""
        cfg = child(ts, "typed_config")
        if not isinstance(cfg, dict) or cfg.get("@type") not in (DOWNSTREAM_TLS, UPSTREAM_TLS):
            return
        common = child(cfg, "common_tls_context")
        sds = [*children(common, "tls_certificate_sds_secret_configs"),
               child(common, "validation_context_sds_secret_config"),
               child(child(common, "combined_validation_context"), "validation_context_sds_secret_config")]
        if cfg.get("@type") == DOWNSTREAM_TLS:
            sds.append(child(cfg, "session_ticket_keys_sds_secret_config"))
        for sc in sds:
            if isinstance(sc, dict):
                _fill(sc, "sds_config", ads_source)
                _rename(sc, "name", self.q)

    def _cluster(self, body: dict[str, Any], path: str) -> None:
        if body.keys().isdisjoint(_CLUSTER_PARTS):  # the common case, as the general steps below do it
            body["circuit_breakers"] = _DEFAULT_CIRCUIT_BREAKERS
            if body.get("type") == "EDS":
                body["eds_cluster_config"] = {"eds_config": _ADS_SOURCE}
            name = body.get("name")
            if isinstance(name, str):
                body["name"] = self.q(name)
            return
        self._tls(child(body, "transport_socket"))
        options = child(body, "typed_extension_protocol_options")
        http = child(options, HTTP_OPTIONS) if isinstance(options, dict) else None
        for i, hf in enumerate(children(http, "http_filters")):
            self._named_filter(hf, f"{path}.typed_extension_protocol_options[{HTTP_OPTIONS}].http_filters[{i}]")
        _fill(body, "circuit_breakers", default_circuit_breakers)
        eds = child(body, "eds_cluster_config")
        if child(body, "type") == "EDS":
            if not isinstance(eds, dict):
                eds = body["eds_cluster_config"] = {}
            _fill(eds, "eds_config", ads_source)
        _rename(eds, "service_name", self.q)
        la = child(body, "load_assignment")
        if isinstance(la, dict):
            self._load_assignment(la, f"{path}.load_assignment")
        _rename(body, "name", self.q)

    def _load_assignment(self, cla: dict[str, Any], path: str) -> None:
        _rename(cla, "cluster_name", self.q)
        for i, locality in enumerate(children(cla, "endpoints")):
            for j, lbe in enumerate(children(locality, "lb_endpoints")):
                ep = child(lbe, "endpoint")
                where = f"{path}.endpoints[{i}].lb_endpoints[{j}].endpoint"
                addresses = [(f"{where}.address", child(ep, "address"))]
                addresses += [(f"{where}.additional_addresses[{k}].address", child(a, "address"))
                              for k, a in enumerate(children(ep, "additional_addresses"))]
                for at, address in addresses:
                    internal = child(address, "envoy_internal_address")
                    if isinstance(internal, dict):
                        _rename(internal, "server_listener_name", self.q)
                        target = child(internal, "server_listener_name")
                        if isinstance(target, str) and target:
                            self.internal_refs.append((f"{at}.envoy_internal_address.server_listener_name",
                                                       target))
