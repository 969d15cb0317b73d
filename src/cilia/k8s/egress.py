"""CiliumEgressGatewayPolicy (cilium.io/v2, cluster-scoped), in Cilium's shape."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.errors import ValidationError
from cilia.k8s.fields import as_list, as_map, get_str
from cilia.k8s.objects import Meta
from cilia.k8s.registry import register_kind
from cilia.k8s.selector import LabelSelector, parse_label_selector

EGRESS_KIND = "CiliumEgressGatewayPolicy"


@dataclass(frozen=True, slots=True)
class EgressSelector:
    """`spec.selectors[]`: pods matching `pod_selector` in namespaces matching `namespace_selector`."""

    pod_selector: LabelSelector
    namespace_selector: LabelSelector | None


@dataclass(frozen=True, slots=True)
class EgressGatewaySpec:
    node_selector: LabelSelector
    egress_ip: str  # empty: `interface`'s first IPv4 on the gateway node
    interface: str


@dataclass(frozen=True, slots=True)
class EgressPolicySpec:
    selectors: tuple[EgressSelector, ...]
    destination_cidrs: tuple[ipaddress.IPv4Network, ...]
    excluded_cidrs: tuple[ipaddress.IPv4Network, ...]
    gateway: EgressGatewaySpec
    created: str  # metadata.creationTimestamp: the older of two overlapping policies wins


def _cidrs(raw: Any, path: str, *, required: bool) -> tuple[ipaddress.IPv4Network, ...]:
    out: list[ipaddress.IPv4Network] = []
    items = as_list(raw, path, required=required)
    if required and not items:
        raise ValidationError(path, "must name at least one CIDR")
    for i, c in enumerate(items):
        p = f"{path}[{i}]"
        if not isinstance(c, str) or "/" not in c:
            raise ValidationError(p, f"must be a CIDR such as 192.0.2.0/24, got {c!r}")
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ValidationError(p, f"{c!r} is not a CIDR") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValidationError(p, f"{c!r}: only IPv4 destinations are supported, as in Cilium")
        out.append(net)
    return tuple(out)


def _parse(raw: Mapping[str, Any], meta: Meta) -> EgressPolicySpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    selectors = []
    items = as_list(spec.get("selectors"), "spec.selectors", required=True)
    if not items:
        raise ValidationError("spec.selectors", "must hold at least one selector")
    for i, s in enumerate(items):
        path = f"spec.selectors[{i}]"
        s = as_map(s, path)
        if s.get("podSelector") is None and s.get("namespaceSelector") is None:
            raise ValidationError(path, "needs a podSelector or a namespaceSelector")
        ns_sel = None
        if s.get("namespaceSelector") is not None:
            ns_sel = parse_label_selector(s.get("namespaceSelector"), f"{path}.namespaceSelector")
        selectors.append(EgressSelector(parse_label_selector(s.get("podSelector"), f"{path}.podSelector"), ns_sel))
    gw = as_map(spec.get("egressGateway"), "spec.egressGateway", required=True)
    if gw.get("nodeSelector") is None:
        raise ValidationError("spec.egressGateway.nodeSelector", "is required: it chooses the gateway node(s)")
    node_selector = parse_label_selector(gw.get("nodeSelector"), "spec.egressGateway.nodeSelector")
    egress_ip = get_str(gw, "egressIP", "spec.egressGateway", default="") or ""
    interface = get_str(gw, "interface", "spec.egressGateway", default="") or ""
    if egress_ip and interface:
        raise ValidationError("spec.egressGateway", "set egressIP or interface, not both")
    if egress_ip:
        try:
            addr = ipaddress.ip_address(egress_ip)
        except ValueError:
            raise ValidationError("spec.egressGateway.egressIP", f"{egress_ip!r} is not an IP address") from None
        if not isinstance(addr, ipaddress.IPv4Address):
            raise ValidationError("spec.egressGateway.egressIP", f"{egress_ip!r}: must be an IPv4 address")
    created = (raw.get("metadata") or {}).get("creationTimestamp")
    return EgressPolicySpec(
        tuple(selectors),
        _cidrs(spec.get("destinationCIDRs"), "spec.destinationCIDRs", required=True),
        _cidrs(spec.get("excludedCIDRs"), "spec.excludedCIDRs", required=False),
        EgressGatewaySpec(node_selector, egress_ip, interface),
        str(created) if created else "",
    )


register_kind(EGRESS_KIND, "cilium.io", ("v2",), False, _parse, plural="ciliumegressgatewaypolicies")
