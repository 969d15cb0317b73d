"""NodeRedirectPolicy -> RedirectPlan: validate the control plane's policy into map contents.

Pure apart from cgroup lookups, which go through an injected resolver. Best effort: a bad pod or
service is left out with an error naming it, the rest is planned; the agent applies the plan and
NACKs with the errors (as Envoy does for a partly invalid listener set).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cilia.api import redirect_v1 as api

DEFAULT_SIDECAR_ADDRESS = "127.0.0.1"
DEFAULT_SIDECAR_PORT = 15001
DEFAULT_INBOUND_PORT = 15006

MODE_NODE = 1
MODE_SIDECAR = 2


@dataclass(frozen=True, order=True)
class Endpoint:
    """An IPv4 address and port (host order)."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, order=True)
class PodPlan:
    """A mesh pod cgroup and where its connects to mesh VIPs are sent."""

    ref: str  # namespace/name
    cgroup: str  # absolute cgroup2 directory
    cgroup_id: int
    mode: int
    proxy: Endpoint
    egress: tuple[str, ...] = ()  # node mode: IPv4 CIDRs whose connects also go to `proxy` (egress gateway)


@dataclass(frozen=True, order=True)
class InboundPlan:
    """Connects from proxies to pod_ip:port (port 0 = any) go to `to`, except from `owner_cgroup_id`."""

    pod_ip: str
    port: int
    to: Endpoint
    owner_cgroup_id: int


@dataclass(frozen=True, order=True)
class ProxyPlan:
    """A proxy cgroup: gets the getsockopt (SO_ORIGINAL_DST) program and the inbound redirect."""

    ref: str
    cgroup: str
    cgroup_id: int


@dataclass(frozen=True)
class RedirectPlan:
    """Everything the data plane should hold for one policy version."""

    services: frozenset[Endpoint] = frozenset()
    # (VIP, port on the node proxy address): Services redirected to a listener of their own
    listener_ports: tuple[tuple[Endpoint, int], ...] = ()
    pods: tuple[PodPlan, ...] = ()
    proxies: tuple[ProxyPlan, ...] = ()
    inbound: tuple[InboundPlan, ...] = ()
    skipped_services: int = 0  # non-TCP services (never redirected)
    inbound_mark: int = 0  # SO_MARK of sockets whose connects are never sent to an inbound listener
    # cgroups that only answer SO_ORIGINAL_DST (and join sockhash pairs): the cgroup root when the
    # node proxy's cgroup is not known
    observers: tuple[str, ...] = ()

    def cgroups(self) -> dict[str, str]:
        """cgroup directory -> role ('pod', 'proxy' or 'observer') for every cgroup the plan attaches to."""
        out = {cg: "observer" for cg in self.observers}
        out.update({p.cgroup: "pod" for p in self.pods})
        out.update({p.cgroup: "proxy" for p in self.proxies})
        return out


@dataclass(frozen=True)
class PlanResult:
    plan: RedirectPlan
    errors: tuple[str, ...] = field(default=())


CgroupResolver = Callable[[str, str], str]
"""(cgroup_path relative to the root, pod uid) -> absolute cgroup directory; raises LookupError."""


def make_resolver(cgroup_root: str, max_dirs: int = 20000) -> CgroupResolver:
    """Resolve pod cgroups under a cgroup2 root: the annotation path, else the kubelet layout by uid."""
    root = os.path.realpath(cgroup_root)

    def resolve(rel: str, uid: str) -> str:
        if rel:
            path = os.path.realpath(os.path.join(root, rel.lstrip("/")))
            if path != root and not path.startswith(root + os.sep):
                raise LookupError(f"cgroup path {rel!r} is outside the cgroup root {root}")
            if not os.path.isfile(os.path.join(path, "cgroup.procs")):
                raise LookupError(f"no cgroup {rel!r} under {root}")
            return path
        if not uid:
            raise LookupError("neither a cilia.io/cgroup path nor a pod uid is given")
        found = _find_by_uid(root, uid, max_dirs)
        if not found:
            raise LookupError(f"no cgroup for pod uid {uid} under {root} (kubelet layout)")
        return found

    return resolve


def _find_by_uid(root: str, uid: str, max_dirs: int) -> str | None:
    """kubelet names pod cgroups pod<uid> (cgroupfs) or ...-pod<uid_with_underscores>.slice (systemd)."""
    wanted = {f"pod{uid}", f"pod{uid.replace('-', '_')}"}
    seen = 0
    for dirpath, dirnames, _files in os.walk(root):
        seen += 1
        if seen > max_dirs:
            return None
        for d in dirnames:
            base = d.removesuffix(".slice")
            if any(base == w or base.endswith("-" + w) for w in wanted):
                return os.path.join(dirpath, d)
        if dirpath == root:  # kubelet's trees: kubepods/... (cgroupfs) or kubepods.slice/... (systemd)
            dirnames[:] = [d for d in dirnames if d.startswith("kube")]
    return None


def _ipv4(value: str, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not an IPv4 address") from None


def _cidr4(value: str, where: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a CIDR") from None
    if net.version != 4:
        raise ValueError(f"{where}: {value!r} is not IPv4")
    return str(net)


def _port(value: int, where: str) -> int:
    if not 0 < value < 65536:
        raise ValueError(f"{where}: port {value} is out of range 1-65535")
    return value


def build_plan(
    policy: object,
    resolve: CgroupResolver,
    default_proxy: Endpoint,
    proxy_cgroup: str | None = None,
    proxy_cgroup_id: int = 0,
    cgroup_id_of: Callable[[str], int] = lambda p: os.stat(p).st_ino,
) -> PlanResult:
    """Validate a NodeRedirectPolicy message into a RedirectPlan plus per-object errors."""
    assert isinstance(policy, api.NodeRedirectPolicy)
    errors: list[str] = []
    try:
        node_proxy = Endpoint(
            _ipv4(policy.proxy_address, "proxy_address") if policy.proxy_address else default_proxy.ip,
            _port(policy.proxy_port, "proxy_port") if policy.proxy_port else default_proxy.port,
        )
    except ValueError as exc:
        errors.append(f"policy {policy.node_name}: {exc}; using {default_proxy}")
        node_proxy = default_proxy
    default_inbound = policy.inbound_port or DEFAULT_INBOUND_PORT
    node_inbound: Endpoint | None = None
    if policy.node_inbound_port:
        try:
            node_inbound = Endpoint(
                _ipv4(policy.node_inbound_address, "node_inbound_address") if policy.node_inbound_address
                else node_proxy.ip, _port(policy.node_inbound_port, "node_inbound_port"))
        except ValueError as exc:
            errors.append(f"policy {policy.node_name}: {exc}; node-mode pods get no inbound capture")

    proxies: dict[str, ProxyPlan] = {}
    if proxy_cgroup:
        proxies[proxy_cgroup] = ProxyPlan("node proxy", proxy_cgroup, proxy_cgroup_id)
    pods: dict[str, PodPlan] = {}
    inbound: dict[tuple[str, int], InboundPlan] = {}
    pod_ips: dict[str, str] = {}
    proxy_targets: set[Endpoint] = {node_proxy}

    for i, pod in enumerate(policy.pods):
        ref = f"{pod.namespace}/{pod.name}" if pod.namespace or pod.name else f"pods[{i}]"
        try:
            ips = [_ipv4(ip, f"pod {ref} pod_ips") for ip in pod.pod_ips]
            cgroup = resolve(pod.cgroup_path, pod.uid)
            if cgroup in pods or cgroup in proxies:
                other = pods[cgroup].ref if cgroup in pods else proxies[cgroup].ref
                raise ValueError(f"cgroup {pod.cgroup_path or cgroup} is already used by {other}")
            for other_cg, other in [
                *((c, p.ref) for c, p in pods.items()),
                *((c, p.ref) for c, p in proxies.items()),
            ]:
                if _nested(cgroup, other_cg):
                    raise ValueError(f"cgroup {cgroup} is nested with {other}'s cgroup {other_cg}")
            for ip in ips:
                if ip in pod_ips:
                    raise ValueError(f"pod IP {ip} is already used by {pod_ips[ip]}")
            mode = MODE_SIDECAR if pod.mode == api.SIDECAR else MODE_NODE
            sidecar: ProxyPlan | None = None
            if mode == MODE_SIDECAR:
                target = Endpoint(
                    _ipv4(pod.sidecar_address, f"pod {ref} sidecar_address")
                    if pod.sidecar_address
                    else DEFAULT_SIDECAR_ADDRESS,
                    _port(pod.sidecar_port, f"pod {ref} sidecar_port")
                    if pod.sidecar_port
                    else DEFAULT_SIDECAR_PORT,
                )
                if not pod.sidecar_cgroup_path:
                    raise ValueError("sidecar mode needs sidecar_cgroup_path (the sidecar proxy's cgroup)")
                sc = resolve(pod.sidecar_cgroup_path, "")
                if _nested(sc, cgroup):
                    raise ValueError(f"sidecar cgroup {sc} is nested with the pod cgroup {cgroup}")
                if sc in pods or sc in proxies:
                    raise ValueError(f"sidecar cgroup {pod.sidecar_cgroup_path} is already in use")
                sidecar = ProxyPlan(f"sidecar of {ref}", sc, cgroup_id_of(sc))
                in_port = _port(pod.inbound_port or default_inbound, f"pod {ref} inbound_port")
            else:
                target = node_proxy
            egress = tuple(_cidr4(c, f"pod {ref} egress_cidrs") for c in pod.egress_cidrs) \
                if mode == MODE_NODE else ()
        except (LookupError, ValueError) as exc:
            errors.append(f"pod {ref}: {exc}")
            continue
        pods[cgroup] = PodPlan(ref, cgroup, cgroup_id_of(cgroup), mode, target, egress)
        proxy_targets.add(target)
        for ip in ips:
            pod_ips[ip] = ref
        if sidecar is not None:
            proxies[sidecar.cgroup] = sidecar
            for ip in ips:
                inbound[(ip, 0)] = InboundPlan(ip, 0, Endpoint(ip, in_port), sidecar.cgroup_id)
                proxy_targets.add(Endpoint(ip, in_port))
        elif node_inbound is not None:
            # No owner: the node proxy's own forwards to the pod carry the inbound mark instead.
            for ip in ips:
                inbound[(ip, 0)] = InboundPlan(ip, 0, node_inbound, 0)
            proxy_targets.add(node_inbound)

    services: dict[Endpoint, str] = {}
    listener_ports: dict[Endpoint, int] = {}
    conflicts: set[Endpoint] = set()
    skipped = 0
    for i, svc in enumerate(policy.services):
        ref = f"{svc.namespace}/{svc.name}" if svc.namespace or svc.name else f"services[{i}]"
        if svc.protocol == api.UDP:
            skipped += 1
            continue
        try:
            ep = Endpoint(_ipv4(svc.vip, f"service {ref} vip"), _port(svc.port, f"service {ref} port"))
            if svc.listener_port:
                listener_ports[ep] = _port(svc.listener_port, f"service {ref} listener_port")
            if ep in proxy_targets:
                raise ValueError(f"VIP {ep} is a proxy capture address")
            if ep.ip in pod_ips:
                raise ValueError(f"VIP {ep.ip} is the IP of pod {pod_ips[ep.ip]}")
        except ValueError as exc:
            errors.append(f"service {ref}: {exc}")
            continue
        if ep in services and services[ep] != ref:
            errors.append(f"service {ref}: VIP {ep} conflicts with service {services[ep]}; both left out")
            conflicts.add(ep)
            continue
        services[ep] = ref

    plan = RedirectPlan(
        services=frozenset(ep for ep in services if ep not in conflicts),
        listener_ports=tuple(sorted((ep, p) for ep, p in listener_ports.items() if ep in services
                                    and ep not in conflicts)),
        pods=tuple(sorted(pods.values())),
        proxies=tuple(sorted(proxies.values())),
        inbound=tuple(sorted(inbound.values())),
        skipped_services=skipped,
        inbound_mark=policy.node_inbound_mark if node_inbound is not None else 0,
    )
    return PlanResult(plan, tuple(errors))


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def describe(errors: Iterable[str]) -> str:
    return "; ".join(errors)
