"""CiliumEgressGatewayPolicy -> egress plans: which mesh pods' connections to which destinations leave
through which gateway nodes, with which source address; plus each policy's status and issues.

A plan is what both sides of the path need: the node agent steers the selected pods' connects to the
destination CIDRs (excluded CIDRs already cut out) into their node proxy, which tunnels them to a
gateway node's proxy, which connects upstream from `egress_ip`. Two policies that select the same pod
for overlapping destinations would make the path ambiguous: the older policy wins, as in Cilium.

Envoy config (`egress_parts`, `gateway_bundles`):
* client side, in the node capture listener (mesh translator): per plan one chain matching the
  destinations (`destination_cidrs`) from the selected pods' IPs (`source_cidrs`), a TCP proxy whose
  connection is carried in an HTTP/2 CONNECT request to the cluster `egress|POLICY|tunnel` (the gateway
  nodes' tunnel listeners, ring hash on the client's address: one client's flows stay on one gateway
  while the set of healthy gateways is unchanged; a TCP health check every second takes a gateway whose
  Envoy is gone out of the ring), the original destination as the CONNECT authority and the
  policy in `x-cilia-egress-policy`;
* gateway side, on each gateway node (`node~GW`): the tunnel listener `egress|gateway` on
  `egress_tunnel_address:egress_tunnel_port` (`node-ip`: the node's address), an HTTP/2 connection
  manager terminating CONNECT whose routes pick, by policy header, the ORIGINAL_DST cluster
  `egress|POLICY|upstream` that connects to the authority with its source bound to the egress IP.
  Without mesh mTLS unknown policies get no route (404).
* with mesh mTLS (`mesh_trust_domain`): the client chains and tunnel clusters are per node and selected
  ServiceAccount (`egress|POLICY|tunnel|NS/SA`, presenting that workload's certificate, accepting only a
  node identity `spiffe://TD/node/` as the gateway); the gateway listener has one mTLS chain requiring
  a workload certificate of the trust domain and serving the node identity (`WorkloadCert(node=GW)`),
  and RBAC (default deny) letting a CONNECT claim a policy only with the workload identity of one of
  its selected pods' ServiceAccounts; an unserved policy meets a catch-all route, so it is refused
  (403) and counted too.
  Without it the tunnel is plaintext and each policy carries a warning that it is unauthenticated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cilia.diagnostics import Issue
from cilia.ir.model import (
    TRUST_BUNDLE_SECRET,
    AuthzRule,
    Backend,
    Bundle,
    Cluster,
    DirectResponse,
    Endpoint,
    FilterChain,
    HeaderMatch,
    HttpApp,
    HttpRequestMatch,
    IngressAuthz,
    Listener,
    PeerMatch,
    ProxyScope,
    Route,
    RouteConfig,
    RouteMatch,
    TcpApp,
    TlsTermination,
    Tunnel,
    UpstreamTls,
    VirtualHost,
    WorkloadCert,
    workload_secret_name,
)
from cilia.k8s.core import NodeSpec
from cilia.k8s.egress import EGRESS_KIND, EgressPolicySpec
from cilia.k8s.objects import KubeObject
from cilia.k8s.store import InputSnapshot
from cilia.security.spiffe import workload_uri
from cilia.translate.context import ObjectStatus, Partial, TranslateOptions
from cilia.translate.gateway_common import Cond, conditions, fallback_time, previous_status
from cilia.translate.meshpods import MeshPod, mesh_pods
from cilia.translate.meshtls import XDS_CLUSTER

API_VERSION = "cilium.io/v2"
MAX_LISTED = 5


@dataclass(frozen=True, slots=True)
class EgressPod:
    key: str  # NAMESPACE/NAME
    node: str
    ips: tuple[str, ...]
    service_account: str = "default"

    @property
    def namespace(self) -> str:
        return self.key.partition("/")[0]


@dataclass(frozen=True, slots=True)
class EgressPlan:
    """One policy as served: `destinations` are the destination CIDRs less the excluded ones."""

    policy: str
    pods: tuple[EgressPod, ...]
    destinations: tuple[str, ...]
    gateway_nodes: tuple[str, ...]
    egress_ip: str
    gateway_addresses: tuple[tuple[str, str], ...] = ()  # (gateway node, its address): the tunnel endpoints


@dataclass(frozen=True, slots=True)
class CompiledEgress:
    plans: tuple[EgressPlan, ...] = ()
    statuses: tuple[ObjectStatus, ...] = ()
    issues: tuple[Issue, ...] = field(default_factory=tuple)


Net = ipaddress.IPv4Network


def subtract(dests: Iterable[Net], excluded: Iterable[Net]) -> list[Net]:
    """`dests` less `excluded`, as a sorted list of disjoint CIDRs."""
    nets = list(ipaddress.collapse_addresses(dests))
    for ex in excluded:
        out: list[Net] = []
        for n in nets:
            if ex.supernet_of(n):
                continue
            if n.supernet_of(ex):
                out.extend(n.address_exclude(ex))
            else:
                out.append(n)
        nets = out
    return sorted(ipaddress.collapse_addresses(nets))


def _overlaps(a: Iterable[Net], b: Iterable[Net]) -> bool:
    bl = list(b)
    return any(x.overlaps(y) for x in a for y in bl)


def _listed(items: list[str]) -> str:
    return ", ".join(items[:MAX_LISTED]) + (" ..." if len(items) > MAX_LISTED else "")


def _age_key(obj: KubeObject) -> tuple[bool, str, str]:
    spec: EgressPolicySpec = obj.spec
    return (not spec.created, spec.created, obj.meta.name)


def _selected(spec: EgressPolicySpec, pods: list[MeshPod], ns_labels: Mapping[str, Mapping[str, str]]) -> list[MeshPod]:
    out = []
    for p in pods:
        for sel in spec.selectors:
            if not sel.pod_selector.matches(p.labels):
                continue
            ns_sel = sel.namespace_selector
            if ns_sel is not None and not ns_sel.matches(ns_labels.get(p.namespace, {})):
                continue
            out.append(p)
            break
    return out


def _node_address(node: KubeObject) -> str:
    """A Node's InternalIP (IPv4), else its first IPv4 address."""
    spec: NodeSpec = node.spec
    v4 = [(t, a) for t, a in spec.addresses if _is_v4(a)]
    return next((a for t, a in v4 if t == "InternalIP"), v4[0][1] if v4 else "")


def _is_v4(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        return False


def _egress_ip(obj: KubeObject, opts: TranslateOptions, issues: list[Issue]) -> str:
    spec: EgressPolicySpec = obj.spec
    ref = str(obj.ref)
    gw = spec.gateway
    if gw.interface:
        found = dict(opts.egress_interfaces).get(gw.interface, "")
        if not found:
            issues.append(Issue(ref, "spec.egressGateway.interface",
                                f"interface {gw.interface!r} has no IPv4 address on the gateway node"))
        return found
    if not gw.egress_ip:
        issues.append(Issue(ref, "spec.egressGateway", "names neither egressIP nor interface: connections would "
                            "leave with the gateway node's own address", severity="warning"))
        return ""
    if opts.egress_local_ips is not None and gw.egress_ip not in opts.egress_local_ips:
        issues.append(Issue(ref, "spec.egressGateway.egressIP",
                            f"{gw.egress_ip} is not an address of the gateway node; connections from it would fail"))
        return ""
    return gw.egress_ip


def compile_egress(snapshot: InputSnapshot, opts: TranslateOptions) -> CompiledEgress:
    """Every policy's plan, status and issues, oldest policy first."""
    policies = sorted(snapshot.list(EGRESS_KIND), key=_age_key)
    if not policies:
        return CompiledEgress()
    pods, _ = mesh_pods(snapshot, opts)
    pods.sort(key=lambda p: p.key)
    ns_labels = {o.meta.name: o.meta.labels for o in snapshot.list("Namespace")}
    nodes = sorted(snapshot.list("Node"), key=lambda o: o.meta.name)
    claimed: dict[str, list[tuple[str, list[Net]]]] = {}
    plans, statuses, issues = [], [], []
    for obj in policies:
        spec: EgressPolicySpec = obj.spec
        ref = str(obj.ref)
        mine: list[Issue] = []
        dests = subtract(spec.destination_cidrs, spec.excluded_cidrs)
        if not dests:
            mine.append(Issue(ref, "spec.excludedCIDRs", "exclude every destination CIDR: the policy steers nothing",
                              severity="warning"))
        gw_nodes = [n for n in nodes if spec.gateway.node_selector.matches(n.meta.labels)]
        gateways = tuple(n.meta.name for n in gw_nodes)
        addresses = tuple((n.meta.name, a) for n in gw_nodes for a in [_node_address(n)] if a)
        nameless = [n.meta.name for n in gw_nodes if not _node_address(n)]
        if nameless:
            mine.append(Issue(ref, "spec.egressGateway.nodeSelector", f"gateway node(s) without an IPv4 address in "
                              f"status.addresses are not used: {_listed(nameless)}", severity="warning"))
        if not gateways:
            mine.append(Issue(ref, "spec.egressGateway.nodeSelector",
                              "no node matches: selected pods' connections to the destinations are not steered"))
        egress_ip = _egress_ip(obj, opts, mine)
        steered: list[EgressPod] = []
        not_node: list[str] = []
        lost: dict[str, list[str]] = {}
        for p in _selected(spec, pods, ns_labels):
            if p.mode != "node" or not p.node or not p.ips:
                not_node.append(p.key)
                continue
            winner = next((other for other, nets in claimed.get(p.key, ()) if _overlaps(nets, dests)), None)
            if winner is not None:
                lost.setdefault(winner, []).append(p.key)
                continue
            claimed.setdefault(p.key, []).append((ref, dests))
            steered.append(EgressPod(p.key, p.node, p.ips, p.service_account))
        if not_node:
            mine.append(Issue(ref, "spec.selectors", f"selects {len(not_node)} pod(s) not in mesh mode node, whose "
                              f"connections are not steered: {_listed(not_node)}", severity="warning"))
        for winner, keys in sorted(lost.items()):
            mine.append(Issue(ref, "spec.destinationCIDRs", f"overlaps the older {winner} for {len(keys)} pod(s) "
                              f"({_listed(keys)}); the older policy wins for them", severity="warning"))
        served = bool(gateways) and bool(dests) and not any(i.severity == "error" for i in mine)
        if served and not opts.mesh_trust_domain:
            mine.append(Issue(ref, "spec.egressGateway", "the tunnel to the gateway nodes is unauthenticated (no CA: "
                              "mesh mTLS is off): any client that reaches a gateway's tunnel port can egress "
                              "from its egress IP", severity="warning"))
        if served and steered:
            plans.append(EgressPlan(ref, tuple(steered), tuple(str(d) for d in dests), gateways, egress_ip,
                                    addresses))
        statuses.append(_status(obj, opts, served, steered, gateways, egress_ip, mine))
        issues.extend(mine)
    return CompiledEgress(tuple(plans), tuple(statuses), tuple(issues))


def _status(obj: KubeObject, opts: TranslateOptions, served: bool, pods: list[EgressPod],
            gateways: tuple[str, ...], egress_ip: str, issues: list[Issue]) -> ObjectStatus:
    errors = [i for i in issues if i.severity == "error"]
    if served:
        cond = Cond("Accepted", True, "Accepted", f"{len(pods)} pod(s) leave through {len(gateways)} gateway node(s)")
    else:
        first = errors[0] if errors else next(iter(issues), None)
        cond = Cond("Accepted", False, "Invalid", f"{first.field}: {first.message}" if first else "steers nothing")
    status: dict[str, Any] = {
        "conditions": conditions([cond], obj.meta.generation, previous_status(obj).get("conditions"),
                                 fallback_time(obj, opts.status_time)),
        "selectedPods": [p.key for p in pods],
        "gatewayNodes": list(gateways),
        "egressIP": egress_ip,
    }
    if issues:
        status["issues"] = [f"{i.field}: {i.message}" for i in issues]
    return ObjectStatus(API_VERSION, obj.kind, "", obj.meta.name, obj.meta.generation, status)


def translate_egress(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    """Registered in TRANSLATORS: the gateway nodes' tunnel listeners, statuses and issues (the client side
    is in the node capture listener: the mesh translator calls `compile_egress` and `egress_parts`)."""
    compiled = compile_egress(snapshot, opts)
    return Partial(bundles=tuple(gateway_bundles(compiled.plans, opts)), statuses=compiled.statuses,
                   issues=compiled.issues)


POLICY_HEADER = "x-cilia-egress-policy"
TUNNEL_HEALTH_CHECK_MS = 1000  # how soon a gateway whose Envoy is gone stops getting flows
NODE_IP = "node-ip"  # egress_tunnel_address: bind each gateway's tunnel listener to its node's address
GATEWAY_LISTENER = "egress|gateway"
GATEWAY_ROUTES = "egress|gateway"
GATEWAY_CERT_SECRET = "cilia-node-identity"  # with mesh mTLS: the gateway node's own certificate (SDS)
UNKNOWN_POLICY_ROUTE = "CiliumEgressGatewayPolicy (unknown)"  # tunnels naming no policy this gateway serves


def _policy_name(plan: EgressPlan) -> str:
    return plan.policy.rpartition(" ")[2]


def tunnel_cluster_name(plan: EgressPlan) -> str:
    return f"egress|{_policy_name(plan)}|tunnel"


def upstream_cluster_name(plan: EgressPlan) -> str:
    return f"egress|{_policy_name(plan)}|upstream"


def gateway_san_prefix(td: str) -> str:
    """What a client accepts as the gateway: a node identity, which only node proxies are issued."""
    return f"spiffe://{td}/node/"


def tunnel_client_san_prefix(td: str) -> str:
    """What a gateway accepts as a client: a workload identity (ServiceAccount) of the trust domain."""
    return f"spiffe://{td}/ns/"


def egress_parts(plans: Iterable[EgressPlan], opts: TranslateOptions, node: str = ""
                 ) -> list[tuple[FilterChain, None, list[Cluster]]]:
    """The node capture listener's chains (with their clusters) that tunnel selected pods' connections.

    Without mesh mTLS one chain per policy, shared by every node. With it (`node` given) one chain per
    policy and ServiceAccount of the selected pods on `node`: the tunnel is mTLS with that workload's
    certificate, and the gateway must show a node identity of the trust domain."""
    td = opts.mesh_trust_domain
    parts: list[tuple[FilterChain, None, list[Cluster]]] = []
    for plan in plans:
        if not plan.gateway_addresses:
            continue
        groups: dict[tuple[str, str], list[EgressPod]] = {}
        for pod in plan.pods:
            if not td:
                groups.setdefault(("", ""), []).append(pod)
            elif pod.node == node:
                groups.setdefault((pod.namespace, pod.service_account), []).append(pod)
        for (ns, sa), pods in sorted(groups.items()):
            sources = tuple(sorted({f"{ip}/32" for pod in pods for ip in pod.ips if _is_v4(ip)}))
            if not sources:
                continue
            suffix = f"|{ns}/{sa}" if td else ""
            tls = UpstreamTls(ca_secret=TRUST_BUNDLE_SECRET, alpn=("h2",), cert_secret=workload_secret_name(ns, sa),
                              san_prefix=gateway_san_prefix(td)) if td else None
            tunnel = Cluster(tunnel_cluster_name(plan) + suffix, discovery="STATIC", protocol="http2",
                             lb_policy="RING_HASH",
                             static_endpoints=tuple(Endpoint(a, opts.egress_tunnel_port)
                                                    for a in dict.fromkeys(a for _, a in plan.gateway_addresses)),
                             tcp_health_check_ms=TUNNEL_HEALTH_CHECK_MS, upstream_tls=tls, sources=(plan.policy,))
            name = f"egress|{_policy_name(plan)}" + (f"|sa:{ns}/{sa}" if td else "")
            stat = f"egress|{_policy_name(plan)}" + (f"|{ns}|{sa}" if td else "")
            app = TcpApp((Backend(tunnel.name),), stat_prefix=stat.replace("|", "_"), hash_source_ip=True,
                         tunnel=Tunnel("%DOWNSTREAM_LOCAL_ADDRESS%", ((POLICY_HEADER, _policy_name(plan)),)))
            parts.append((FilterChain(name, app, destination_cidrs=plan.destinations, source_cidrs=sources),
                          None, [tunnel]))
    return parts


def tunnel_authz(plans: Iterable[EgressPlan], td: str) -> IngressAuthz:
    """Who may use which policy at a gateway: a CONNECT naming a policy (`x-cilia-egress-policy`) is let
    through only from the workload identities (`spiffe://TD/ns/NS/sa/SA`, the certificate the client
    node proxy presents for them) of that policy's selected pods; anything else is denied."""
    rules = []
    for plan in plans:
        peers = tuple(PeerMatch("exact", uri) for uri in sorted({workload_uri(td, p.namespace, p.service_account)
                                                                  for p in plan.pods}))
        claims = HttpRequestMatch(headers=(HeaderMatch(POLICY_HEADER, value=_policy_name(plan)),))
        rules.append(AuthzRule(f"CiliumEgressGatewayPolicy/{_policy_name(plan)}", plan.policy, peers,
                               http=(claims,)))
    return IngressAuthz(allow=tuple(rules), default_deny=True, stat_prefix="egress_gateway",
                        sources=tuple(p.policy for p in plans))


def gateway_bundles(plans: Iterable[EgressPlan], opts: TranslateOptions) -> list[Bundle]:
    """Per gateway node, its tunnel listener and the upstream clusters of the policies it serves."""
    by_node: dict[str, list[EgressPlan]] = {}
    address_of: dict[str, str] = {}
    for plan in plans:
        address_of.update(plan.gateway_addresses)
        for node in plan.gateway_nodes:
            by_node.setdefault(node, []).append(plan)
    bundles = []
    for node, mine in sorted(by_node.items()):
        td = opts.mesh_trust_domain
        routes: list[Route] = []
        clusters = []
        for plan in mine:
            upstream = Cluster(upstream_cluster_name(plan), discovery="ORIGINAL_DST", original_dst_header=":authority",
                               bind_address=plan.egress_ip, sources=(plan.policy,))
            clusters.append(upstream)
            routes.append(Route(plan.policy, RouteMatch(
                headers=(HeaderMatch(POLICY_HEADER, value=_policy_name(plan)),), connect=True),
                backends=(Backend(upstream.name),), timeout_ms=0, sources=(plan.policy,)))
        authz = None
        if td:
            # Refused by RBAC (403, counted): a CONNECT for an unknown policy, or one whose client is
            # none of the policy's selected workloads. The catch-all route only names the refusal.
            routes.append(Route(UNKNOWN_POLICY_ROUTE, RouteMatch(connect=True), direct=DirectResponse(403)))
            authz = tunnel_authz(mine, td)
        rc = RouteConfig(GATEWAY_ROUTES, (VirtualHost("egress", ("*",), tuple(routes), authz=authz),))
        app = HttpApp(GATEWAY_ROUTES, stat_prefix="egress_gateway", codec="http2", connect=True, rbac=bool(td),
                      denial_log_cluster=XDS_CLUSTER if td else "")
        address = opts.egress_tunnel_address
        if address == NODE_IP:
            if node not in address_of:
                continue  # no address: no tunnel endpoint points here either
            address = address_of[node]
        certs: tuple[WorkloadCert, ...] = ()
        if td:
            # Only mesh proxies' tunnels: a client certificate of a workload of the trust domain is
            # required (no matching chain for plaintext: refused); the server side is the node identity.
            tls = TlsTermination((GATEWAY_CERT_SECRET,), alpn=("h2",), client_ca_secret=TRUST_BUNDLE_SECRET,
                                 san_prefix=tunnel_client_san_prefix(td))
            certs = (WorkloadCert(GATEWAY_CERT_SECRET, "", "", node=node),)
            listener = Listener(GATEWAY_LISTENER, address, opts.egress_tunnel_port,
                                (FilterChain(f"{GATEWAY_LISTENER}|mtls", app, tls=tls),),
                                listener_filters=("tls_inspector",), direction="outbound",
                                sources=tuple(p.policy for p in mine))
        else:
            listener = Listener(GATEWAY_LISTENER, address, opts.egress_tunnel_port, (),
                                default_chain=FilterChain(GATEWAY_LISTENER, app), direction="outbound",
                                sources=tuple(p.policy for p in mine))
        bundles.append(Bundle(f"egress/gateway/{node}", ProxyScope(frozenset({"node"}), frozenset({node})),
                              listeners=(listener,), routes=(rc,), clusters=tuple(clusters),
                              sources=tuple(p.policy for p in mine), workload_certs=certs))
    return bundles
