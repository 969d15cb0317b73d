"""Core and discovery kinds: Namespace, Node, Pod, Service, EndpointSlice, Endpoints, Secret."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.errors import ValidationError
from cilia.k8s.fields import as_list, as_map, get_bool, get_port, get_str, int_or_str, str_map
from cilia.k8s.objects import Meta
from cilia.k8s.registry import register_kind


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    labels: Mapping[str, str]
    addresses: tuple[tuple[str, str], ...]  # (type, address)


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container: str
    name: str
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class PodSpec:
    node_name: str
    pod_ips: tuple[str, ...]
    ports: tuple[ContainerPort, ...]
    phase: str
    host_network: bool
    containers: tuple[str, ...]
    service_account: str = "default"  # spec.serviceAccountName: the workload identity


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str | None
    protocol: str
    app_protocol: str


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    type: str
    cluster_ips: tuple[str, ...]
    headless: bool
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str]
    external_name: str
    publish_not_ready: bool = False  # spec.publishNotReadyAddresses: not-ready endpoints take traffic too

    def port(self, ref: int | str) -> ServicePort | None:
        """The port by number or name; a number shared by TCP and UDP ports means the TCP one."""
        found = [p for p in self.ports
                 if (isinstance(ref, int) and p.port == ref) or (isinstance(ref, str) and p.name == ref)]
        return next((p for p in found if p.protocol in ("TCP", "")), found[0] if found else None)


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    zone: str
    node_name: str
    hostname: str
    target_pod: str  # "namespace/name" of a Pod targetRef, or ""


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    port: int
    protocol: str
    app_protocol: str


@dataclass(frozen=True, slots=True)
class EndpointSliceSpec:
    service_name: str
    address_type: str
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EndpointsSpec:
    """Core v1 Endpoints, normalised into the EndpointSlice shape (one slice per subset)."""

    slices: tuple[EndpointSliceSpec, ...]


@dataclass(frozen=True, slots=True)
class SecretSpec:
    type: str
    data: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class ConfigMapSpec:
    """Only the key cilia reads: `ca.crt`, a PEM CA bundle (Gateway frontend client validation)."""

    ca_crt: str | None


CA_CERT_KEY = "ca.crt"


def _parse_config_map(raw: Mapping[str, Any], meta: Meta) -> ConfigMapSpec:
    data = as_map(raw.get("data"), "data")
    value = data.get(CA_CERT_KEY)
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"data.{CA_CERT_KEY}", "must be a string")
    return ConfigMapSpec(value)


def _parse_namespace(raw: Mapping[str, Any], meta: Meta) -> NamespaceSpec:
    return NamespaceSpec(meta.labels, meta.annotations)


def _parse_node(raw: Mapping[str, Any], meta: Meta) -> NodeSpec:
    status = as_map(raw.get("status"), "status")
    addrs = []
    for i, a in enumerate(as_list(status.get("addresses"), "status.addresses")):
        a = as_map(a, f"status.addresses[{i}]")
        addrs.append((get_str(a, "type", f"status.addresses[{i}]"), get_str(a, "address", f"status.addresses[{i}]")))
    return NodeSpec(meta.labels, tuple(addrs))


def _check_ip(value: str, path: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError(path, f"{value!r} is not an IP address") from None
    return value


def _parse_pod(raw: Mapping[str, Any], meta: Meta) -> PodSpec:
    spec = as_map(raw.get("spec"), "spec")
    status = as_map(raw.get("status"), "status")
    ips: list[str] = []
    for i, p in enumerate(as_list(status.get("podIPs"), "status.podIPs")):
        ip = get_str(as_map(p, f"status.podIPs[{i}]"), "ip", f"status.podIPs[{i}]", required=True)
        ips.append(_check_ip(ip, f"status.podIPs[{i}].ip"))
    pod_ip = get_str(status, "podIP", "status")
    if pod_ip and pod_ip not in ips:
        ips.insert(0, _check_ip(pod_ip, "status.podIP"))
    ports: list[ContainerPort] = []
    names: list[str] = []
    for i, c in enumerate(as_list(spec.get("containers"), "spec.containers")):
        cpath = f"spec.containers[{i}]"
        c = as_map(c, cpath)
        cname = get_str(c, "name", cpath, required=True)
        names.append(cname)
        for j, p in enumerate(as_list(c.get("ports"), f"{cpath}.ports")):
            ppath = f"{cpath}.ports[{j}]"
            p = as_map(p, ppath)
            port = get_port(p, "containerPort", ppath, required=True)
            assert port is not None
            ports.append(ContainerPort(cname, get_str(p, "name", ppath), port,
                                       get_str(p, "protocol", ppath, default="TCP")))
    return PodSpec(
        node_name=get_str(spec, "nodeName", "spec"),
        pod_ips=tuple(ips),
        ports=tuple(ports),
        phase=get_str(status, "phase", "status"),
        host_network=bool(get_bool(spec, "hostNetwork", "spec", default=False)),
        containers=tuple(names),
        service_account=get_str(spec, "serviceAccountName", "spec") or "default",
    )


def _parse_service(raw: Mapping[str, Any], meta: Meta) -> ServiceSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    stype = get_str(spec, "type", "spec", default="ClusterIP")
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        raise ValidationError("spec.type", f"unknown Service type {stype!r}")
    cluster_ip = get_str(spec, "clusterIP", "spec")
    ips = [x for x in as_list(spec.get("clusterIPs"), "spec.clusterIPs")]
    for i, ip in enumerate(ips):
        if not isinstance(ip, str):
            raise ValidationError(f"spec.clusterIPs[{i}]", "must be a string")
    headless = cluster_ip == "None" or (ips[:1] == ["None"])
    if not headless:
        if cluster_ip and cluster_ip not in ips:
            ips.insert(0, cluster_ip)
        for i, ip in enumerate(ips):
            _check_ip(ip, f"spec.clusterIPs[{i}]")
    else:
        ips = []
    ports: list[ServicePort] = []
    seen_names: set[str] = set()
    for i, p in enumerate(as_list(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{i}]"
        p = as_map(p, path)
        port = get_port(p, "port", path, required=True)
        assert port is not None
        name = get_str(p, "name", path)
        if name in seen_names:
            raise ValidationError(f"{path}.name", f"duplicate port name {name!r}")
        seen_names.add(name)
        target = int_or_str(p.get("targetPort"), f"{path}.targetPort")
        if isinstance(target, int) and not 1 <= target <= 65535:
            raise ValidationError(f"{path}.targetPort", f"must be 1-65535, got {target}")
        ports.append(ServicePort(name, port, target, get_str(p, "protocol", path, default="TCP"),
                                 get_str(p, "appProtocol", path)))
    if len(ports) > 1 and any(not p.name for p in ports):
        raise ValidationError("spec.ports", "every port must have a name when there is more than one")
    external = get_str(spec, "externalName", "spec")
    if stype == "ExternalName" and not external:
        raise ValidationError("spec.externalName", "is required for type ExternalName")
    return ServiceSpec(stype, tuple(ips), headless, tuple(ports), str_map(spec.get("selector"), "spec.selector"),
                       external, bool(get_bool(spec, "publishNotReadyAddresses", "spec", default=False)))


def _parse_slice_endpoint(e: Any, path: str, address_type: str) -> SliceEndpoint:
    e = as_map(e, path)
    addrs = as_list(e.get("addresses"), f"{path}.addresses", required=True)
    out = []
    for i, a in enumerate(addrs):
        if not isinstance(a, str):
            raise ValidationError(f"{path}.addresses[{i}]", "must be a string")
        if address_type in ("IPv4", "IPv6"):
            _check_ip(a, f"{path}.addresses[{i}]")
        out.append(a)
    cond = as_map(e.get("conditions"), f"{path}.conditions")
    ready_raw = get_bool(cond, "ready", f"{path}.conditions")
    terminating = bool(get_bool(cond, "terminating", f"{path}.conditions", default=False))
    # Per the API: a nil `ready` means ready unless terminating; nil `serving` follows `ready`.
    ready = (not terminating) if ready_raw is None else ready_raw
    serving = get_bool(cond, "serving", f"{path}.conditions", default=ready)
    target = as_map(e.get("targetRef"), f"{path}.targetRef")
    target_pod = ""
    if target.get("kind") == "Pod":
        target_pod = f"{target.get('namespace', '')}/{target.get('name', '')}"
    return SliceEndpoint(tuple(out), ready, bool(serving), terminating, get_str(e, "zone", path),
                         get_str(e, "nodeName", path), get_str(e, "hostname", path), target_pod)


def _parse_slice_ports(ports: Any, path: str) -> tuple[SlicePort, ...]:
    out = []
    for i, p in enumerate(as_list(ports, path)):
        ppath = f"{path}[{i}]"
        p = as_map(p, ppath)
        port = get_port(p, "port", ppath)
        if port is None:  # a nil port means "all ports"; cilia cannot route that
            continue
        out.append(SlicePort(get_str(p, "name", ppath), port, get_str(p, "protocol", ppath, default="TCP"),
                             get_str(p, "appProtocol", ppath)))
    return tuple(out)


def _parse_endpoint_slice(raw: Mapping[str, Any], meta: Meta) -> EndpointSliceSpec:
    address_type = get_str(raw, "addressType", "", required=True)
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise ValidationError("addressType", f"must be IPv4, IPv6 or FQDN, got {address_type!r}")
    service = meta.labels.get("kubernetes.io/service-name", "")
    if not service:
        raise ValidationError("metadata.labels.kubernetes.io/service-name", "is required to tie the slice to a Service")
    endpoints = tuple(_parse_slice_endpoint(e, f"endpoints[{i}]", address_type)
                      for i, e in enumerate(as_list(raw.get("endpoints"), "endpoints")))
    return EndpointSliceSpec(service, address_type, endpoints, _parse_slice_ports(raw.get("ports"), "ports"),
                             meta.labels)


def _parse_endpoints(raw: Mapping[str, Any], meta: Meta) -> EndpointsSpec:
    slices = []
    for i, s in enumerate(as_list(raw.get("subsets"), "subsets")):
        spath = f"subsets[{i}]"
        s = as_map(s, spath)
        eps = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, a in enumerate(as_list(s.get(key), f"{spath}.{key}")):
                apath = f"{spath}.{key}[{j}]"
                a = as_map(a, apath)
                ip = _check_ip(get_str(a, "ip", apath, required=True), f"{apath}.ip")
                eps.append(SliceEndpoint((ip,), ready, ready, False, "", get_str(a, "nodeName", apath),
                                         get_str(a, "hostname", apath), ""))
        family = "IPv6" if any(":" in e.addresses[0] for e in eps) else "IPv4"
        slices.append(EndpointSliceSpec(meta.name, family, tuple(eps),
                                        _parse_slice_ports(s.get("ports"), f"{spath}.ports"), meta.labels))
    return EndpointsSpec(tuple(slices))


def _parse_secret(raw: Mapping[str, Any], meta: Meta) -> SecretSpec:
    data: dict[str, bytes] = {}
    for k, v in as_map(raw.get("data"), "data").items():
        if not isinstance(v, str):
            raise ValidationError(f"data.{k}", "must be a base64 string")
        try:
            data[str(k)] = base64.b64decode(v.encode(), validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError(f"data.{k}", "is not valid base64") from None
    for k, v in as_map(raw.get("stringData"), "stringData").items():
        if not isinstance(v, str):
            raise ValidationError(f"stringData.{k}", "must be a string")
        data[str(k)] = v.encode()
    return SecretSpec(get_str(raw, "type", "", default="Opaque"), data)


register_kind("Namespace", "", ("v1",), False, _parse_namespace)
register_kind("Node", "", ("v1",), False, _parse_node)
register_kind("Pod", "", ("v1",), True, _parse_pod)
register_kind("Service", "", ("v1",), True, _parse_service)
register_kind("Endpoints", "", ("v1",), True, _parse_endpoints, plural="endpoints")
register_kind("EndpointSlice", "discovery.k8s.io", ("v1",), True, _parse_endpoint_slice)
register_kind("Secret", "", ("v1",), True, _parse_secret)
register_kind("ConfigMap", "", ("v1",), True, _parse_config_map)
