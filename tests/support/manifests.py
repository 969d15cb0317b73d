"""Manifest builders for tests (YAML text)."""

from __future__ import annotations

import json
from collections.abc import Sequence


def service(name: str, port: int = 80, namespace: str = "default", vip: str = "127.96.0.10",
            target_port: int | str | None = None, port_name: str = "http", app_protocol: str = "") -> str:
    p: dict[str, object] = {"name": port_name, "port": port}
    if target_port is not None:
        p["targetPort"] = target_port
    if app_protocol:
        p["appProtocol"] = app_protocol
    return json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                       "spec": {"clusterIP": vip, "ports": [p]}})


def endpoint_slice(service_name: str, backends: Sequence[tuple[str, int]], namespace: str = "default",
                   name: str | None = None, port_name: str = "http", ready: bool = True,
                   labels: dict[str, str] | None = None, zone: str = "") -> str:
    """One slice; all backends must share one port number (EndpointSlice semantics)."""
    ports = sorted({p for _, p in backends})
    assert len(ports) <= 1, "one port per slice"
    eps = []
    for addr, _ in backends:
        ep: dict[str, object] = {"addresses": [addr], "conditions": {"ready": ready}}
        if zone:
            ep["zone"] = zone
        eps.append(ep)
    return json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service_name}-1", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service_name, **(labels or {})}},
        "addressType": "IPv4", "ports": [{"name": port_name, "port": ports[0]}] if ports else [],
        "endpoints": eps,
    })


def docs(*parts: str) -> str:
    return "\n---\n".join(parts) + "\n"
