"""Mesh mTLS pieces of the mesh translator (used only when `mesh_trust_domain` is set).

Outbound: a mesh client's chains send to `POOL|mtls[|NS/SA]` (HTTP) or `POOL|mtls-tcp[|NS/SA]` (TCP)
clusters: the Service's EDS pool, with a transport socket per endpoint kind (`Endpoint.mesh_tls`):
endpoints behind a sidecar, and node-mode endpoints on the client proxy's own node, get mTLS with the
source workload's certificate; every other endpoint stays plaintext. ALPN tells the receiving side
what is inside: `cilia-http/1.1`, `cilia-h2` (HTTP/1.1 or HTTP/2 to the app) or `cilia-tcp`.
The peer's certificate must be a workload of the trust domain (URI SAN prefix `spiffe://TD/`).

Inbound: the receiving proxy requires a client certificate of the trust domain, and forwards in
plaintext; HTTP gets `x-forwarded-client-cert` with the peer's URI (set by Envoy from the verified
certificate; a client's own header is replaced). Per namespace `cilia.io/mtls: strict|permissive`
(default `mesh_mtls_default`, permissive): permissive also accepts plaintext, strict refuses it.

Certificates are named, not made, here (translation stays pure): a bundle lists the `WorkloadCert`s
its proxies need, and cilia.security.workload issues them and adds them as SDS secrets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from cilia.diagnostics import Issue
from cilia.ir.model import (
    TRUST_BUNDLE_SECRET,
    Backend,
    Cluster,
    FilterChain,
    HttpApp,
    IngressAuthz,
    Listener,
    Mirror,
    Route,
    RouteConfig,
    RouteMatch,
    TcpApp,
    TlsMatch,
    TlsTermination,
    UpstreamTls,
    VirtualHost,
)
from cilia.k8s.store import InputSnapshot
from cilia.translate.context import TranslateOptions
from cilia.translate.meshpods import MeshPod

MTLS_ANNOTATION = "cilia.io/mtls"
MTLS_MODES = ("strict", "permissive")
ALPN_TCP = "cilia-tcp"
ALPN_HTTP1 = "cilia-http/1.1"
ALPN_H2 = "cilia-h2"
SIDECAR_WORKLOAD_SECRET = "cilia-workload"  # a sidecar's own identity (one per sidecar)
# SO_MARK of the node inbound listener's forwards to its pods: the eBPF agent does not redirect them
# back to the inbound listener.
INBOUND_MARK = 0xC1A0
NODE_INBOUND_LISTENER = "inbound|node"
XDS_CLUSTER = "cilia-xds"  # the bootstrap's xDS cluster (cilia.mesh.bootstrap): denial logs go there
INBOUND_FORWARD = {"tcp": "mesh|inbound|tcp", "http1": "mesh|inbound|http1", "http2": "mesh|inbound|http2"}
BLACKHOLE = "mesh|blackhole"

Part = tuple[FilterChain, RouteConfig | None, list[Cluster]]
MtlsMode = Literal["strict", "permissive"]


def san_prefix(td: str) -> str:
    return f"spiffe://{td}/"


def mtls_mode(snapshot: InputSnapshot, namespace: str, opts: TranslateOptions, issues: list[Issue]) -> MtlsMode:
    """The namespace's `cilia.io/mtls`, else the default; a bad value is reported and the default used."""
    default: MtlsMode = "strict" if opts.mesh_mtls_default == "strict" else "permissive"
    ns = snapshot.get("Namespace", "", namespace)
    if ns is None or MTLS_ANNOTATION not in ns.meta.annotations:
        return default
    value = ns.meta.annotations[MTLS_ANNOTATION]
    if value == "strict":
        return "strict"
    if value == "permissive":
        return "permissive"
    issue = Issue(str(ns.ref), f"metadata.annotations.{MTLS_ANNOTATION}",
                  f"must be strict or permissive, got {value!r}; using {default}")
    if issue not in issues:
        issues.append(issue)
    return default


def downstream_tls(td: str, cert_secret: str) -> TlsTermination:
    return TlsTermination((cert_secret,), alpn=(), client_ca_secret=TRUST_BUNDLE_SECRET, san_prefix=san_prefix(td))


# -- outbound ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Identity:
    """The source workload a set of outbound chains speaks for."""

    cert_secret: str  # SDS name of its certificate
    node: str  # the client proxy's node: node-mode endpoints there are reached through its inbound
    suffix: str = ""  # added to cluster and route names ("|NS/SA" on a node Envoy, "" for a sidecar)
    source_cidrs: tuple[str, ...] = ()  # node Envoy: the client pods of this identity
    label: str = ""  # chain name / stat suffix, e.g. "sa:NS/SA"


@dataclass(slots=True)
class MtlsOutbound:
    """Rewrites plaintext outbound parts into their mTLS form for an identity (memoised per translation)."""

    td: str
    clusters: dict[tuple[str, str, bool], Cluster] = field(default_factory=dict)
    routes: dict[tuple[str, Identity], RouteConfig] = field(default_factory=dict)

    def cluster(self, c: Cluster, ident: Identity, tcp: bool) -> Cluster:
        if c.discovery != "EDS":
            return c  # ExternalName (DNS) and the like: not mesh endpoints
        key = (c.name, ident.cert_secret + "|" + ident.node + "|" + ident.suffix, tcp)
        found = self.clusters.get(key)
        if found is None:
            alpn = (ALPN_TCP,) if tcp else (ALPN_H2,) if c.protocol == "http2" else (ALPN_HTTP1,)
            tls = UpstreamTls(ca_secret=TRUST_BUNDLE_SECRET, alpn=alpn, cert_secret=ident.cert_secret,
                              san_prefix=san_prefix(self.td))
            matches = [TlsMatch("sidecar", tls)]
            if ident.node:
                matches.append(TlsMatch(f"node/{ident.node}", tls))
            name = f"{c.name}|mtls-tcp{ident.suffix}" if tcp else f"{c.name}|mtls{ident.suffix}"
            found = self.clusters[key] = replace(c, name=name, eds_name=c.eds_name or c.name,
                                                 tls_matches=tuple(matches))
        return found

    def part(self, part: Part, ident: Identity) -> Part:
        fc, rc, clusters = part
        name = f"{fc.name}|{ident.label}" if ident.label else fc.name
        if isinstance(fc.app, TcpApp):
            by_name = {c.name: self.cluster(c, ident, True) for c in clusters}
            backends = tuple(replace(b, cluster=by_name[b.cluster].name) if b.cluster in by_name else b
                             for b in fc.app.backends)
            stat = fc.app.stat_prefix + (f"_{_stat(ident.label)}" if ident.label else "")
            app: TcpApp | HttpApp = replace(fc.app, backends=backends, stat_prefix=stat)
            new_rc = None
        else:
            assert rc is not None and isinstance(fc.app, HttpApp)
            by_name = {c.name: self.cluster(c, ident, False) for c in clusters}
            new_rc = self._route(rc, ident, {k: v.name for k, v in by_name.items()})
            stat = fc.app.stat_prefix + (f"_{_stat(ident.label)}" if ident.label else "")
            app = replace(fc.app, route_config=new_rc.name, stat_prefix=stat)
        new_fc = replace(fc, name=name, app=app, source_cidrs=ident.source_cidrs or fc.source_cidrs)
        return new_fc, new_rc, list(dict.fromkeys(by_name.values()))

    def _route(self, rc: RouteConfig, ident: Identity, names: Mapping[str, str]) -> RouteConfig:
        key = (rc.name, ident)
        found = self.routes.get(key)
        if found is None:
            vhs = []
            for vh in rc.virtual_hosts:
                routes = []
                for r in vh.routes:
                    backends = tuple(replace(b, cluster=names.get(b.cluster, b.cluster)) for b in r.backends)
                    mirrors = tuple(Mirror(names.get(m.cluster, m.cluster), m.percent) for m in r.mirrors)
                    routes.append(replace(r, backends=backends, mirrors=mirrors))
                vhs.append(replace(vh, routes=tuple(routes)))
            found = self.routes[key] = replace(rc, name=f"{rc.name}|mtls{ident.suffix}", virtual_hosts=tuple(vhs))
        return found


def _stat(label: str) -> str:
    return label.replace(":", "_").replace("/", "_").replace("|", "_")


# -- node inbound --------------------------------------------------------------------------------------
def _host_cidr(ip: str) -> str:
    return f"{ip}/128" if ipaddress.ip_address(ip).version == 6 else f"{ip}/32"


INBOUND_FORWARD_CLUSTERS: tuple[Cluster, ...] = tuple(
    Cluster(name, discovery="ORIGINAL_DST", protocol="tcp" if proto == "tcp" else proto,  # type: ignore[arg-type]
            lb_policy="CLUSTER_PROVIDED", socket_mark=INBOUND_MARK)
    for proto, name in INBOUND_FORWARD.items())


def inbound_route_name(authz: IngressAuthz | None) -> str:
    """The policies in force name the inbound route, so a denial log entry says whose default deny it was."""
    return ",".join(authz.sources) if authz is not None and authz.sources else "default"


def _forward_route(pod: MeshPod, proto: str, authz: IngressAuthz | None) -> RouteConfig:
    """The pod's own route configuration (its policy rides on it), forwarding to the original destination."""
    cluster = INBOUND_FORWARD[proto]
    route = Route(inbound_route_name(authz), RouteMatch(), backends=(Backend(cluster),), timeout_ms=0)
    return RouteConfig(f"inbound|node|{pod.key}|{proto}", (VirtualHost(cluster, ("*",), (route,), authz=authz),),
                       (pod.ref,))


def node_inbound(node: str, pods: list[MeshPod], authz: Mapping[str, IngressAuthz],
                 modes: Mapping[str, MtlsMode], opts: TranslateOptions,
                 cert_of: Mapping[str, str]) -> tuple[Listener, list[RouteConfig], list[Cluster]]:
    """The node Envoy's inbound listener: for each node-mode pod on `node`, mTLS chains chosen by ALPN
    (HTTP/1.1, HTTP/2, or TCP), and a plaintext chain (permissive) or a refusing one (strict). Forwards go
    to the original destination (the pod) from sockets marked INBOUND_MARK. `cert_of`: pod key -> the SDS
    name of the pod's workload certificate (the server side of the handshake)."""
    td = opts.mesh_trust_domain
    chains: list[FilterChain] = []
    routes: list[RouteConfig] = []
    for pod in sorted(pods, key=lambda p: p.key):
        if not pod.ips:
            continue
        cidrs = tuple(_host_cidr(ip) for ip in pod.ips)
        az = authz.get(pod.key)
        base = f"inbound|node|{pod.key}"
        stat = f"inbound_{pod.namespace}_{pod.name}"
        tls = downstream_tls(td, cert_of[pod.key])
        for alpn, proto in ((ALPN_HTTP1, "http1"), (ALPN_H2, "http2")):
            rc = _forward_route(pod, proto, az)
            routes.append(rc)
            app = HttpApp(rc.name, stat_prefix=stat, forward_client_cert=True, rbac=True,
                          denial_log_cluster=XDS_CLUSTER)
            chains.append(FilterChain(f"{base}|{proto}", app, destination_cidrs=cidrs, tls=tls,
                                      application_protocols=(alpn,)))
        chains.append(FilterChain(f"{base}|tcp", TcpApp((Backend(INBOUND_FORWARD["tcp"]),), stat_prefix=f"{stat}_tcp",
                                                        authz=az), destination_cidrs=cidrs, tls=tls))
        if modes.get(pod.namespace, "permissive") == "strict":
            chains.append(FilterChain(f"{base}|plaintext-refused", TcpApp((Backend(BLACKHOLE),),
                                                                         stat_prefix=f"{stat}_plaintext_refused"),
                                      destination_cidrs=cidrs, transport_protocol="raw_buffer"))
        else:
            chains.append(FilterChain(f"{base}|plaintext", TcpApp((Backend(INBOUND_FORWARD["tcp"]),),
                                                                 stat_prefix=f"{stat}_plaintext", authz=az),
                                      destination_cidrs=cidrs, transport_protocol="raw_buffer"))
    name = NODE_INBOUND_LISTENER
    # A direct connection to the listener itself has no original destination: refuse it, never loop.
    try:
        own = (_host_cidr(opts.mesh_node_inbound_address),) if not ipaddress.ip_address(
            opts.mesh_node_inbound_address).is_unspecified else ()
    except ValueError:
        own = ()
    chains.insert(0, FilterChain(f"{name}|direct", TcpApp((Backend(BLACKHOLE),), stat_prefix="inbound_node_direct"),
                                 destination_cidrs=own, destination_port=opts.mesh_inbound_port))
    default = FilterChain(f"{name}|passthrough", TcpApp((Backend(INBOUND_FORWARD["tcp"]),),
                                                         stat_prefix="inbound_node_passthrough"))
    listener = Listener(name, opts.mesh_node_inbound_address, opts.mesh_inbound_port, tuple(chains),
                        default_chain=default, listener_filters=("original_dst", "tls_inspector"),
                        sources=tuple(p.ref for p in pods), direction="inbound")
    return listener, routes, list(INBOUND_FORWARD_CLUSTERS)
