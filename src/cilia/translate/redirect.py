"""Pods and Services -> per-node eBPF redirect policies, served to `agent~NODE` over xDS.

A node's policy lists its mesh pods (mode `node` or `sidecar`, from `cilia.io/mesh` on the Pod or its
Namespace; `proxyless` pods are left out: their gRPC library dials endpoints itself) and every Service
VIP:port the pods may call. Every node that has a Node object or a mesh pod gets a policy, possibly
empty, so an agent always learns what to do, including "nothing".

A pod's cgroup is its annotation `cilia.io/cgroup` (relative to the agent's cgroup root; empty: the
agent looks the pod up by UID). A sidecar-mode pod also names its sidecar's cgroup with
`cilia.io/sidecar-cgroup` (the agent needs it to tell the sidecar's own connects from the app's), and
gets the sidecar's outbound capture address from the mesh translator's options: the pod IP for
`mesh_sidecar_capture_address: pod-ip`, that address when it is a specific IPv4 address, else the
agent's default (127.0.0.1), always on `mesh_capture_port`. The sidecar's inbound port is the
policy's `inbound_port` (`mesh_inbound_port`).

A node-mode pod selected by an egress gateway policy also lists the policy's destination CIDRs
(`egress_cidrs`): the agent sends its connects there to the node proxy too (cilia.translate.egress).

With mesh mTLS (`mesh_trust_domain`) a node with node-mode pods also gets `node_inbound_port`
(`mesh_inbound_port`), `node_inbound_address` (`mesh_node_inbound_address`, when it is a specific IPv4
address) and `node_inbound_mark`: the agent then sends proxies' connects to those pods' IPs to the node
Envoy's inbound listener, which terminates mesh mTLS (cilia.translate.meshtls).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import replace

from cilia.ir.model import Bundle, ProxyScope, RedirectPod, RedirectPolicy, RedirectService, ServiceRedirect
from cilia.k8s.core import ServiceSpec
from cilia.k8s.store import InputSnapshot
from cilia.translate.cec import translate_envoy_configs
from cilia.translate.context import Partial, TranslateOptions
from cilia.translate.egress import compile_egress
from cilia.translate.mesh import BIND_POD_IP, MeshPod, mesh_pods
from cilia.translate.meshtls import INBOUND_MARK

CGROUP_ANNOTATION = "cilia.io/cgroup"
SIDECAR_CGROUP_ANNOTATION = "cilia.io/sidecar-cgroup"


def redirect_services(snapshot: InputSnapshot) -> tuple[RedirectService, ...]:
    out = []
    for obj in snapshot.list("Service"):
        svc: ServiceSpec = obj.spec
        if svc.type == "ExternalName" or svc.headless:
            continue
        for ip in svc.cluster_ips:
            if ipaddress.ip_address(ip).version != 4:
                continue  # the agent redirects IPv4 VIPs
            for port in svc.ports:
                if port.protocol in ("TCP", ""):
                    out.append(RedirectService(obj.meta.namespace, obj.meta.name, ip, port.port))
    return tuple(out)


def sidecar_capture_address(pod: MeshPod, opts: TranslateOptions) -> str:
    """Where the agent sends a sidecar pod's connects to mesh VIPs ("" = the agent's default, 127.0.0.1)."""
    if opts.mesh_sidecar_capture_address == BIND_POD_IP:
        return next((ip for ip in pod.ips if ipaddress.ip_address(ip).version == 4), "")
    try:
        ip = ipaddress.ip_address(opts.mesh_sidecar_capture_address)
    except ValueError:
        return ""
    return "" if ip.version != 4 or ip.is_unspecified else str(ip)


def translate_redirects(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    pods, _ = mesh_pods(snapshot, opts)  # the mesh translator reports bad mode settings
    pods_by_node: dict[str, list[RedirectPod]] = defaultdict(list)
    egress = _egress_by_pod(snapshot, opts)
    for pod in pods:
        if pod.mode in ("off", "proxyless") or not pod.node:  # proxyless gRPC dials endpoints itself
            continue
        obj = snapshot.get("Pod", pod.namespace, pod.name)
        assert obj is not None
        cgroup = obj.meta.annotations.get(CGROUP_ANNOTATION, "")
        if pod.mode == "node":
            pods_by_node[pod.node].append(RedirectPod(pod.namespace, pod.name, obj.meta.uid, cgroup, pod.ips, "node",
                                                      egress_cidrs=egress.get(pod.key, ())))
            continue
        pods_by_node[pod.node].append(RedirectPod(
            pod.namespace, pod.name, obj.meta.uid, cgroup, pod.ips, "sidecar",
            sidecar_address=sidecar_capture_address(pod, opts), sidecar_port=opts.mesh_capture_port,
            sidecar_cgroup_path=obj.meta.annotations.get(SIDECAR_CGROUP_ANNOTATION, "")))
    node_labels = {o.meta.name: o.meta.labels for o in snapshot.list("Node")}
    nodes = set(node_labels) | set(pods_by_node)
    services = redirect_services(snapshot) if nodes else ()
    # CiliumEnvoyConfig `spec.services`: those Services go to the config's listener instead.
    cec_redirects = translate_envoy_configs(snapshot, opts).redirects if nodes else ()
    bundles = []
    for node in sorted(nodes):
        on_node = tuple(pods_by_node.get(node, ()))
        node_services = _with_listeners(services, [r for r in cec_redirects if r.listener_port and
                                                   r.scope.matches("node", node, node_labels)])
        node_inbound = bool(opts.mesh_trust_domain) and any(p.mode == "node" for p in on_node)
        policy = RedirectPolicy(node, on_node, node_services if on_node else (), proxy_port=opts.mesh_capture_port,
                                inbound_port=opts.mesh_inbound_port,
                                node_inbound_port=opts.mesh_inbound_port if node_inbound else 0,
                                node_inbound_mark=INBOUND_MARK if node_inbound else 0,
                                node_inbound_address=_ipv4_or_empty(opts.mesh_node_inbound_address)
                                if node_inbound else "",
                                sources=tuple(f"Pod {p.namespace}/{p.name}" for p in on_node))
        bundles.append(Bundle(key=f"redirect:{node}", scope=ProxyScope(frozenset({"agent"}), frozenset({node})),
                              redirect_policies=(policy,)))
    return Partial(bundles=tuple(bundles))


def _egress_by_pod(snapshot: InputSnapshot, opts: TranslateOptions) -> dict[str, tuple[str, ...]]:
    """Pod key -> the destination CIDRs its egress gateway policies steer into the node proxy (only where
    the node proxy has a chain for them: the policy has a gateway node with an address)."""
    out: dict[str, list[str]] = defaultdict(list)
    for plan in compile_egress(snapshot, opts).plans:
        if not plan.gateway_addresses:
            continue
        for pod in plan.pods:
            out[pod.key].extend(plan.destinations)
    return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}


def _ipv4_or_empty(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return ""
    return "" if ip.version != 4 or ip.is_unspecified else str(ip)


def _with_listeners(services: tuple[RedirectService, ...],
                    redirects: list[ServiceRedirect]) -> tuple[RedirectService, ...]:
    """Services named by a config's `spec.services` (all ports, or those listed) point at its listener."""
    if not redirects:
        return services
    out = []
    for svc in services:
        for r in redirects:
            if (r.namespace, r.service) == (svc.namespace, svc.name) and (not r.ports or svc.port in r.ports):
                svc = replace(svc, listener_port=r.listener_port)
                break
        out.append(svc)
    return tuple(out)
