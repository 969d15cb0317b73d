"""Pods and Services -> per-node eBPF redirect policies, served to `agent~NODE` over xDS.

A node's policy lists its mesh pods (mode `node` or `sidecar`, from `cilia.io/mesh` on the Pod or its
Namespace) and every Service VIP:port the pods may call. Every node that has a Node object or a mesh
pod gets a policy, possibly empty, so an agent always learns what to do, including "nothing".
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from cilia.diagnostics import Issue
from cilia.ir.model import Bundle, ProxyScope, RedirectPod, RedirectPolicy, RedirectService
from cilia.k8s.core import PodSpec, ServiceSpec
from cilia.k8s.store import InputSnapshot
from cilia.mesh.mode import resolve_mesh_mode
from cilia.translate.context import Partial, TranslateOptions

CGROUP_ANNOTATION = "cilia.io/cgroup"


def mesh_pod_modes(snapshot: InputSnapshot, opts: TranslateOptions) -> tuple[dict[str, str], list[Issue]]:
    """Mode of every Pod ("ns/name" -> node|sidecar|off), with an issue for each unreadable setting."""
    namespaces = {o.meta.name: o for o in snapshot.list("Namespace")}
    modes: dict[str, str] = {}
    issues: list[Issue] = []
    for obj in snapshot.list("Pod"):
        ns = namespaces.get(obj.meta.namespace)
        try:
            mode = resolve_mesh_mode(ns.meta.labels if ns else {}, ns.meta.annotations if ns else {},
                                     obj.meta.labels, obj.meta.annotations,
                                     opts.mesh_default_mode,  # type: ignore[arg-type]
                                     namespace=obj.meta.namespace, pod_ref=str(obj.ref))
        except ValueError as exc:
            issues.append(Issue(str(obj.ref), "metadata.annotations.cilia.io/mesh", str(exc)))
            mode = "off"
        modes[f"{obj.meta.namespace}/{obj.meta.name}"] = mode
    return modes, issues


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


def translate_redirects(snapshot: InputSnapshot, opts: TranslateOptions) -> Partial:
    modes, issues = mesh_pod_modes(snapshot, opts)
    pods_by_node: dict[str, list[RedirectPod]] = defaultdict(list)
    for obj in snapshot.list("Pod"):
        spec: PodSpec = obj.spec
        mode = modes[f"{obj.meta.namespace}/{obj.meta.name}"]
        if mode == "off" or not spec.node_name or spec.host_network:
            continue
        pods_by_node[spec.node_name].append(RedirectPod(
            obj.meta.namespace, obj.meta.name, obj.meta.uid, obj.meta.annotations.get(CGROUP_ANNOTATION, ""),
            spec.pod_ips, "node" if mode == "node" else "sidecar"))
    nodes = {o.meta.name for o in snapshot.list("Node")} | set(pods_by_node)
    services = redirect_services(snapshot) if nodes else ()
    bundles = []
    for node in sorted(nodes):
        pods = tuple(pods_by_node.get(node, ()))
        policy = RedirectPolicy(node, pods, services if pods else (), proxy_port=opts.mesh_capture_port,
                                inbound_port=opts.mesh_inbound_port,
                                sources=tuple(f"Pod {p.namespace}/{p.name}" for p in pods))
        bundles.append(Bundle(key=f"redirect:{node}", scope=ProxyScope(frozenset({"agent"}), frozenset({node})),
                              redirect_policies=(policy,)))
    return Partial(bundles=tuple(bundles), issues=tuple(issues))
