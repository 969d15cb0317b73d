"""IR redirect policies -> cilia.redirect.v1.NodeRedirectPolicy messages for the eBPF node agent."""

from __future__ import annotations

from cilia.api import redirect_v1 as api
from cilia.ir import model as ir

MODES = {"node": api.NODE, "sidecar": api.SIDECAR}


def render_redirect_policy(p: ir.RedirectPolicy) -> api.NodeRedirectPolicy:
    out = api.NodeRedirectPolicy(node_name=p.name, proxy_port=p.proxy_port, inbound_port=p.inbound_port,
                                 node_inbound_port=p.node_inbound_port, node_inbound_mark=p.node_inbound_mark,
                                 node_inbound_address=p.node_inbound_address)
    for pod in p.pods:
        out.pods.add(namespace=pod.namespace, name=pod.name, uid=pod.uid, cgroup_path=pod.cgroup_path,
                     pod_ips=list(pod.pod_ips), mode=MODES[pod.mode], sidecar_address=pod.sidecar_address,
                     sidecar_port=pod.sidecar_port, sidecar_cgroup_path=pod.sidecar_cgroup_path,
                     egress_cidrs=list(pod.egress_cidrs))
    for svc in p.services:
        out.services.add(namespace=svc.namespace, name=svc.name, vip=svc.vip, port=svc.port, protocol=api.TCP,
                         listener_port=svc.listener_port)
    return out
