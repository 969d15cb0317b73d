"""CiliumEnvoyConfig and CiliumClusterwideEnvoyConfig (cilium.io/v2), in Cilium's shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.errors import ValidationError
from cilia.k8s.fields import as_list, as_map, get_str
from cilia.k8s.objects import Meta
from cilia.k8s.registry import register_kind
from cilia.k8s.selector import LabelSelector, parse_label_selector


@dataclass(frozen=True, slots=True)
class ServiceListener:
    """`spec.services[]`: traffic to this Service is redirected to `listener`."""

    name: str
    namespace: str
    listener: str
    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BackendService:
    """`spec.backendServices[]`: endpoints of this Service are offered over EDS."""

    name: str
    namespace: str
    ports: tuple[str, ...]  # Cilium's `number`: port numbers or names, as strings


@dataclass(frozen=True, slots=True)
class EnvoyConfigSpec:
    clusterwide: bool
    services: tuple[ServiceListener, ...]
    backend_services: tuple[BackendService, ...]
    resources: tuple[Mapping[str, Any], ...]
    node_selector: LabelSelector | None


def _parse(raw: Mapping[str, Any], meta: Meta, clusterwide: bool) -> EnvoyConfigSpec:
    spec = as_map(raw.get("spec"), "spec", required=True)
    # As Cilium: a clusterwide config's Services default to namespace "default"; a namespaced config's
    # backend Services default to its own namespace (`services` are resolved by the translator, which
    # tells the user when a namespace written there is not used).
    default_ns = "default" if clusterwide else meta.namespace
    services = []
    for i, s in enumerate(as_list(spec.get("services"), "spec.services")):
        path = f"spec.services[{i}]"
        s = as_map(s, path)
        ns = get_str(s, "namespace", path, default=default_ns) or default_ns
        ports = []
        for j, p in enumerate(as_list(s.get("ports"), f"{path}.ports")):
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
                raise ValidationError(f"{path}.ports[{j}]", f"must be a port number, got {p!r}")
            ports.append(p)
        services.append(ServiceListener(get_str(s, "name", path, required=True), ns,
                                        get_str(s, "listener", path), tuple(ports)))
    backends = []
    for i, s in enumerate(as_list(spec.get("backendServices"), "spec.backendServices")):
        path = f"spec.backendServices[{i}]"
        s = as_map(s, path)
        ns = get_str(s, "namespace", path, default=default_ns) or default_ns
        numbers = []
        for j, n in enumerate(as_list(s.get("number"), f"{path}.number")):
            if isinstance(n, bool) or not isinstance(n, str | int):
                raise ValidationError(f"{path}.number[{j}]", f"must be a port number or name, got {n!r}")
            numbers.append(str(n))
        backends.append(BackendService(get_str(s, "name", path, required=True), ns, tuple(numbers)))
    resources = []
    for i, r in enumerate(as_list(spec.get("resources"), "spec.resources")):
        path = f"spec.resources[{i}]"
        if not isinstance(r, Mapping):
            raise ValidationError(path, f"must be a mapping with '@type', got {type(r).__name__}")
        if not isinstance(r.get("@type"), str) or not r["@type"]:
            raise ValidationError(f"{path}.@type", "is required (a type URL such as "
                                  "type.googleapis.com/envoy.config.listener.v3.Listener)")
        resources.append(r)
    selector = None
    if spec.get("nodeSelector") is not None:
        selector = parse_label_selector(spec.get("nodeSelector"), "spec.nodeSelector")
    return EnvoyConfigSpec(clusterwide, tuple(services), tuple(backends), tuple(resources), selector)


register_kind("CiliumEnvoyConfig", "cilium.io", ("v2",), True, lambda raw, meta: _parse(raw, meta, False),
              plural="ciliumenvoyconfigs")
register_kind("CiliumClusterwideEnvoyConfig", "cilium.io", ("v2",), False,
              lambda raw, meta: _parse(raw, meta, True), plural="ciliumclusterwideenvoyconfigs")
