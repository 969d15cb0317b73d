"""Gateway `spec.tls.backend.clientCertificateRef`: the certificate a Gateway presents to the backends it
reaches over TLS (those with a BackendTLSPolicy). Routes are translated once and shared by every Gateway
they attach to, so the Gateway's own copies of those clusters get names of their own and its routes and
listeners are pointed at them: a cluster name never means two different TLS contexts on one proxy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from cilia.ir import model as ir
from cilia.translate.backendtls import SECRET_PREFIX


def _presents(cluster: ir.Cluster) -> bool:
    """Only BackendTLSPolicy clusters: mesh mTLS and others keep the identity they already present."""
    t = cluster.upstream_tls
    return t is not None and t.ca_secret.startswith(SECRET_PREFIX) and not t.cert_secret


def client_cert_clusters(clusters: Mapping[str, ir.Cluster], secret: str
                         ) -> tuple[dict[str, ir.Cluster], dict[str, str]]:
    """`clusters` with the BackendTLSPolicy ones presenting SDS secret `secret`, and old -> new names."""
    out: dict[str, ir.Cluster] = {}
    renamed: dict[str, str] = {}
    for name, c in clusters.items():
        if _presents(c):
            assert c.upstream_tls is not None
            new = replace(c, name=f"{c.name}|cert:{secret}", upstream_tls=replace(c.upstream_tls, cert_secret=secret))
            renamed[name] = new.name
            out[new.name] = new
        else:
            out[name] = c
    return out, renamed


def _backends(backends: tuple[ir.Backend, ...], renamed: Mapping[str, str]) -> tuple[ir.Backend, ...]:
    return tuple(replace(b, cluster=renamed[b.cluster]) if b.cluster in renamed else b for b in backends)


def retarget_routes(rc: ir.RouteConfig, renamed: Mapping[str, str]) -> ir.RouteConfig:
    """`rc` with its routes' backends and mirrors pointed at the renamed clusters."""
    if not renamed:
        return rc
    vhosts = []
    for vh in rc.virtual_hosts:
        routes = tuple(replace(r, backends=_backends(r.backends, renamed),
                               mirrors=tuple(replace(m, cluster=renamed.get(m.cluster, m.cluster)) for m in r.mirrors))
                       for r in vh.routes)
        vhosts.append(replace(vh, routes=routes))
    return replace(rc, virtual_hosts=tuple(vhosts))


def retarget_listener(li: ir.Listener, renamed: Mapping[str, str]) -> ir.Listener:
    """`li` with its TCP proxy chains pointed at the renamed clusters (HTTP chains go through routes)."""
    if not renamed:
        return li
    chains = tuple(replace(fc, app=replace(fc.app, backends=_backends(fc.app.backends, renamed)))
                   if isinstance(fc.app, ir.TcpApp) else fc for fc in li.filter_chains)
    return replace(li, filter_chains=chains)
