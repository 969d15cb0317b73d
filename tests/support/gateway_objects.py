"""Gateway API manifests for tests (JSON documents, which YAML reads as well)."""

from __future__ import annotations

import json
from typing import Any

GROUP = "gateway.networking.k8s.io"
V1 = f"{GROUP}/v1"
CONTROLLER = "cilia.io/gateway-controller"


def gateway_class(name: str = "cilia", controller: str = CONTROLLER) -> str:
    return json.dumps({"apiVersion": V1, "kind": "GatewayClass", "metadata": {"name": name},
                       "spec": {"controllerName": controller}})


def listener(name: str, port: int, protocol: str = "HTTP", hostname: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": port, "protocol": protocol}
    if hostname:
        out["hostname"] = hostname
    out.update(extra)
    return out


def gateway(name: str, listeners: list[dict[str, Any]], namespace: str = "default", address: str = "",
            gateway_class_name: str = "cilia", generation: int = 1) -> str:
    spec: dict[str, Any] = {"gatewayClassName": gateway_class_name, "listeners": listeners}
    if address:
        spec["addresses"] = [{"type": "IPAddress", "value": address}]
    return json.dumps({"apiVersion": V1, "kind": "Gateway",
                       "metadata": {"name": name, "namespace": namespace, "generation": generation}, "spec": spec})


def route(kind: str, name: str, rules: list[dict[str, Any]], parents: list[dict[str, Any]] | None = None,
          hostnames: list[str] | None = None, namespace: str = "default", created: str = "",
          api_version: str = V1, generation: int = 1) -> str:
    md: dict[str, Any] = {"name": name, "namespace": namespace, "generation": generation}
    if created:
        md["creationTimestamp"] = created
    spec: dict[str, Any] = {"parentRefs": parents if parents is not None else [{"name": "gw", "namespace": "default"}],
                            "rules": rules}
    if hostnames:
        spec["hostnames"] = hostnames
    return json.dumps({"apiVersion": api_version, "kind": kind, "metadata": md, "spec": spec})


def http_route(name: str, rules: list[dict[str, Any]], **kw: Any) -> str:
    return route("HTTPRoute", name, rules, **kw)


def backend(name: str, port: int = 80, weight: int | None = None, namespace: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": port}
    if weight is not None:
        out["weight"] = weight
    if namespace:
        out["namespace"] = namespace
    out.update(extra)
    return out


def prefix(value: str) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": value}}


def tag(value: str) -> dict[str, Any]:
    """A ResponseHeaderModifier adding `x-rule: value`, to tell which rule answered."""
    return {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-rule", "value": value}]}}


def reference_grant(name: str, namespace: str, from_kind: str, from_ns: str, to_kind: str = "Service",
                    to_name: str = "") -> str:
    to: dict[str, Any] = {"group": "", "kind": to_kind}
    if to_name:
        to["name"] = to_name
    return json.dumps({"apiVersion": f"{GROUP}/v1beta1", "kind": "ReferenceGrant",
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {"from": [{"group": GROUP, "kind": from_kind, "namespace": from_ns}], "to": [to]}})


def find_status(statuses: list[dict[str, Any]], kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
    for s in statuses:
        md = s["metadata"]
        if s["kind"] == kind and md["name"] == name and md.get("namespace", "") == namespace:
            return dict(s["status"])
    raise KeyError(f"no status for {kind} {namespace}/{name}")


def condition(conds: list[dict[str, Any]], ctype: str) -> dict[str, Any]:
    for c in conds:
        if c["type"] == ctype:
            return c
    raise KeyError(f"no {ctype} condition in {conds}")


def parent_condition(status: dict[str, Any], ctype: str, index: int = 0) -> tuple[str, str]:
    c = condition(status["parents"][index]["conditions"], ctype)
    return c["status"], c["reason"]
