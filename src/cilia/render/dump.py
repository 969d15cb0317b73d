"""Envoy resources as canonical proto JSON (with `@type`), for `cilia translate` and debug views."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import any_pb2, json_format

from cilia.render.raw import load_all_envoy_types
from cilia.render.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SHORT_NAMES, Resource
from cilia.render.world import ProxyResources, RenderedWorld

CONTRACT_TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)


REDACTED = b"[redacted]"


def public_any(res: Resource) -> any_pb2.Any:
    """The resource as an `Any` fit to show an operator: secrets keep their certificates but lose every
    private key, session-ticket key and generic secret value. Debug views and CSDS use this, never the
    bytes sent to the proxy that owns the secret."""
    a = any_pb2.Any()
    a.ParseFromString(res.any_bytes)
    if res.type_url != SECRET:
        return a
    secret = secret_pb2.Secret()
    a.Unpack(secret)
    if secret.HasField("tls_certificate"):
        tc = secret.tls_certificate
        for field in ("private_key", "password", "pkcs12"):
            if tc.HasField(field):
                getattr(tc, field).Clear()
                if field == "private_key":
                    tc.private_key.inline_bytes = REDACTED
        if tc.HasField("private_key_provider"):
            tc.ClearField("private_key_provider")
    if secret.HasField("session_ticket_keys"):
        for key in secret.session_ticket_keys.keys:
            key.Clear()
            key.inline_bytes = REDACTED
    if secret.HasField("generic_secret"):
        secret.generic_secret.secret.Clear()
        secret.generic_secret.secret.inline_bytes = REDACTED
    a.Pack(secret)
    return a


def resource_json(res: Resource, *, redact: bool = True) -> dict[str, Any]:
    """Canonical proto JSON; `redact=False` only for offline output of the user's own input (translate)."""
    load_all_envoy_types()  # nested Anys (filters, transport sockets) need their types known
    if redact:
        a = public_any(res)
    else:
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


def proxy_config_json(view: ProxyResources, *, only_referenced_endpoints: bool = True,
                      redact: bool = True) -> dict[str, list[Any]]:
    """The `cilia translate` contract: one list per type, each sorted by name."""
    out: dict[str, list[Any]] = {}
    wanted = referenced_endpoints(view) if only_referenced_endpoints else None
    for type_url in CONTRACT_TYPES:
        items = view.of(type_url)
        names = sorted(items)
        if type_url == ENDPOINT and wanted is not None:
            names = [n for n in names if n in wanted]
        out[SHORT_NAMES[type_url]] = [resource_json(items[n], redact=redact) for n in names]
    return out


SentLookup = Callable[[str], list[tuple[str, str, Resource | None]]]  # type_url -> (name, version, resource)


def sent_config_json(sent: SentLookup) -> dict[str, list[Any]]:
    """Like `proxy_config_json`, from what a proxy was actually sent. A resource whose bytes are not at
    hand any more (a Delta stream while a newer version is in flight) is listed as
    `{"name", "version", "unavailable": true}` rather than shown with content it was not sent."""
    out: dict[str, list[Any]] = {}
    for type_url in CONTRACT_TYPES:
        items: list[Any] = []
        for name, version, res in sent(type_url):
            items.append(resource_json(res) if res is not None else
                         {"name": name, "version": version, "unavailable": True})
        out[SHORT_NAMES[type_url]] = items
    return out


def world_sizes(world: RenderedWorld) -> dict[str, tuple[int, int]]:
    """Distinct resources and their serialised bytes in a rendered world, by short type name."""
    seen: dict[str, dict[str, Resource]] = {}
    for bundle in world.bundles:
        for type_url, by_name in bundle.resources.items():
            slot = seen.setdefault(type_url, {})
            for name, res in by_name.items():
                slot.setdefault(name, res)
    pool = seen.setdefault(ENDPOINT, {})
    for name, res in world.pool.items():
        pool.setdefault(name, res)
    return {SHORT_NAMES.get(t, t.rsplit(".", 1)[-1]): (len(v), sum(len(r.body) for r in v.values()))
            for t, v in sorted(seen.items())}
