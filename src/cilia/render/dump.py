"""Envoy resources as canonical proto JSON (with `@type`), for `cilia translate` and debug views."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import any_pb2, json_format

from cilia.render.raw import load_all_envoy_types
from cilia.render.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SHORT_NAMES, Resource
from cilia.render.world import ProxyResources

CONTRACT_TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)


def resource_json(res: Resource) -> dict[str, Any]:
    load_all_envoy_types()  # nested Anys (filters, transport sockets) need their types known
    a = any_pb2.Any()
    a.ParseFromString(res.any_bytes)
    return dict(json.loads(json_format.MessageToJson(a, indent=None)))


def referenced_endpoints(view: ProxyResources) -> set[str]:
    """EDS names the proxy's clusters use (an EDS cluster without service_name uses its own name)."""
    names = set()
    for res in view.of(CLUSTER).values():
        body = resource_json(res)
        if body.get("type") == "EDS":
            names.add(body.get("edsClusterConfig", {}).get("serviceName") or body.get("name", ""))
    return names


def proxy_config_json(view: ProxyResources, *, only_referenced_endpoints: bool = True) -> dict[str, list[Any]]:
    """The `cilia translate` contract: one list per type, each sorted by name."""
    out: dict[str, list[Any]] = {}
    wanted = referenced_endpoints(view) if only_referenced_endpoints else None
    for type_url in CONTRACT_TYPES:
        items = view.of(type_url)
        names = sorted(items)
        if type_url == ENDPOINT and wanted is not None:
            names = [n for n in names if n in wanted]
        out[SHORT_NAMES[type_url]] = [resource_json(items[n]) for n in names]
    return out
