"""The Gateway API conformance suite's base world, adapted to cilia's file mode: its three namespaces
(infra, app-backend and web-backend, the last two labelled as backend namespaces), its three HTTP
Gateways (same-namespace, all-namespaces, backend-namespaces) and its backend Services, each with an
EndpointSlice on a loopback address so that real echo backends can stand behind them.

Everything is YAML text; tests add the manifests of one conformance test on top and translate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

INFRA = "gateway-conformance-infra"
APP = "gateway-conformance-app-backend"
WEB = "gateway-conformance-web-backend"
V1 = "gateway.networking.k8s.io/v1"

# name -> (namespace, VIP, endpoint address); every backend port is 8080 -> target 3000 as upstream.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "infra-backend-v1": (INFRA, "127.96.1.1", "127.1.1.1"),
    "infra-backend-v2": (INFRA, "127.96.1.2", "127.1.1.2"),
    "infra-backend-v3": (INFRA, "127.96.1.3", "127.1.1.3"),
    "app-backend-v1": (APP, "127.96.1.4", "127.1.1.4"),
    "app-backend-v2": (APP, "127.96.1.5", "127.1.1.5"),
    "web-backend": (WEB, "127.96.1.6", "127.1.1.6"),
}
GRPC_BACKENDS: dict[str, tuple[str, str, str]] = {
    "grpc-infra-backend-v1": (INFRA, "127.96.1.11", "127.1.1.11"),
    "grpc-infra-backend-v2": (INFRA, "127.96.1.12", "127.1.1.12"),
    "grpc-infra-backend-v3": (INFRA, "127.96.1.13", "127.1.1.13"),
}


def doc(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj)


def namespace(name: str, **labels: str) -> str:
    return doc({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})


def backend_service(name: str, ns: str, vip: str, address: str, target: int = 3000, app_protocol: str = "") -> str:
    port: dict[str, Any] = {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": target}
    if app_protocol:
        port["appProtocol"] = app_protocol
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": vip, "ports": [port]}}
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{name}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": target}],
           "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]}
    return doc(svc) + "\n---\n" + doc(eps)


def http_gateway(name: str, port: int, frm: str, address: str = "", selector: Mapping[str, str] | None = None,
                 ns: str = INFRA) -> str:
    allowed: dict[str, Any] = {"namespaces": {"from": frm}}
    if selector is not None:
        allowed["namespaces"]["selector"] = {"matchLabels": dict(selector)}
    spec: dict[str, Any] = {"gatewayClassName": "cilia",
                            "listeners": [{"name": "http", "port": port, "protocol": "HTTP",
                                           "allowedRoutes": allowed}]}
    if address:
        spec["addresses"] = [{"type": "IPAddress", "value": address}]
    return doc({"apiVersion": V1, "kind": "Gateway", "metadata": {"name": name, "namespace": ns}, "spec": spec})


def base_docs(port: int = 80, addresses: Mapping[str, str] | None = None,
              endpoints: Mapping[str, tuple[str, int]] | None = None) -> list[str]:
    """The base world. `addresses`: Gateway name -> IPAddress to bind; `endpoints`: backend name ->
    (host, port) of the process answering for it (default: its loopback address on port 3000)."""
    addr = dict(addresses or {})
    ends = dict(endpoints or {})
    out = [
        doc({"apiVersion": V1, "kind": "GatewayClass", "metadata": {"name": "cilia", "generation": 1},
             "spec": {"controllerName": "cilia.io/gateway-controller"}}),
        namespace(INFRA, **{"gateway-conformance": "infra"}),
        namespace(APP, **{"gateway-conformance": "backend"}),
        namespace(WEB, **{"gateway-conformance": "backend"}),
        http_gateway("same-namespace", port, "Same", addr.get("same-namespace", "")),
        http_gateway("all-namespaces", port, "All", addr.get("all-namespaces", "")),
        http_gateway("backend-namespaces", port, "Selector", addr.get("backend-namespaces", ""),
                     {"gateway-conformance": "backend"}),
    ]
    for name, (ns, vip, host) in BACKENDS.items():
        h, p = ends.get(name, (host, 3000))
        out.append(backend_service(name, ns, vip, h, p))
    for name, (ns, vip, host) in GRPC_BACKENDS.items():
        h, p = ends.get(name, (host, 3000))
        out.append(backend_service(name, ns, vip, h, p, app_protocol="kubernetes.io/h2c"))
    return out
