"""xDS protocol for proxyless gRPC clients (`grpc~NS/POD`): named subscriptions only, answered with exactly
those names; names that do not exist are left out (SotW) or removed (Delta), and SotW tells a gRPC
client NOT_FOUND for names it never held (resource_errors) while a deletion stays a plain omission."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2

from cilia.ir import model as ir
from cilia.render.resources import LISTENER, ROUTE
from cilia.render.world import RenderedWorld, ResourceCache, render_world
from support.xds_client import Call, Harness, delta, harness, no_message, node, read, sotw

GRPC = "grpc~default/client"
ECHO = "echo.default.svc.cluster.local:7070"
OTHER = "other.default.svc.cluster.local:7070"
MISSING = "nope.default.svc.cluster.local:7070"


def grpc_world(*services: str, gen: int = 1) -> RenderedWorld:
    """API listeners (the three names) and route configs for `services` in namespace default, port 7070."""
    listeners, routes = [], []
    for svc in services:
        names = (f"{svc}.default.svc.cluster.local:7070", f"{svc}.default.svc:7070", f"{svc}.default:7070")
        listeners += [ir.ApiListener(n, names[0]) for n in names]
        routes.append(ir.RouteConfig(names[0], (ir.VirtualHost(names[0], names, (
            ir.Route("default", ir.RouteMatch(), (ir.Backend(f"default/{svc}:7070"),)),)),), client="grpc"))
    bundle = ir.Bundle("grpc", ir.ProxyScope(frozenset({"grpc"})), api_listeners=tuple(listeners),
                       routes=tuple(routes), clusters=tuple(ir.Cluster(f"default/{s}:7070") for s in services))
    return render_world(ir.MeshIR((bundle,), {}), ResourceCache(), gen)


@pytest.fixture
async def g() -> AsyncIterator[Harness]:
    hh = await harness()
    hh.cache.set_world(grpc_world("echo", "other"))
    yield hh
    await hh.stop()


def listener_names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for a in resp.resources:
        li = listener_pb2.Listener()
        assert a.Unpack(li)
        out.append(li.name)
    return sorted(out)


def lds(names: tuple[str, ...], version: str = "", nonce: str = "",
        first: bool = False) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(node=node(GRPC) if first else None, type_url=LISTENER,
                                          resource_names=list(names), version_info=version, response_nonce=nonce)


def errors(resp: discovery_pb2.DiscoveryResponse) -> dict[str, int]:
    return {e.resource_name.name: e.error_detail.code for e in resp.resource_errors}


async def test_sotw_named_lds_gets_exactly_those_names_and_not_found_for_unknown(g: Harness) -> None:
    call = sotw(g)
    try:
        await call.write(lds((ECHO, MISSING), first=True))
        resp = await read(call)
        assert listener_names(resp) == [ECHO]  # not `other`, though this client may have it
        assert errors(resp) == {MISSING: 5}  # NOT_FOUND
        li = listener_pb2.Listener()
        resp.resources[0].Unpack(li)
        hcm = hcm_pb2.HttpConnectionManager()
        assert li.api_listener.api_listener.Unpack(hcm)
        assert hcm.rds.route_config_name == ECHO and hcm.rds.config_source.HasField("ads")
        assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
        await call.write(lds((ECHO, MISSING), resp.version_info, resp.nonce))
        assert await no_message(call)
        # A second target on the same stream: both sent, still NOT_FOUND for the unknown one.
        await call.write(lds((ECHO, OTHER, MISSING), resp.version_info, resp.nonce))
        resp = await read(call)
        assert listener_names(resp) == [ECHO, OTHER] and errors(resp) == {MISSING: 5}
        # `other` goes away: left out (a deletion of a listener the client holds), not reported as an error.
        g.cache.set_world(grpc_world("echo", gen=2))
        resp = await read(call)
        assert listener_names(resp) == [ECHO] and errors(resp) == {MISSING: 5}
    finally:
        call.cancel()


async def test_sotw_route_names_follow_the_listener(g: Harness) -> None:
    call = sotw(g)
    try:
        await call.write(discovery_pb2.DiscoveryRequest(node=node(GRPC), type_url=ROUTE, resource_names=[ECHO]))
        resp = await read(call)
        assert [a.type_url for a in resp.resources] == [ROUTE] and not resp.resource_errors
    finally:
        call.cancel()


async def test_envoy_clients_get_no_resource_errors(g: Harness) -> None:
    g.cache.set_world(grpc_world("echo"))
    call: Call = sotw(g)
    try:
        await call.write(discovery_pb2.DiscoveryRequest(node=node("sidecar~default/p"), type_url=LISTENER,
                                                        resource_names=[MISSING]))
        resp = await read(call)
        assert list(resp.resources) == [] and not resp.resource_errors
    finally:
        call.cancel()


async def test_delta_named_lds_reports_unknown_as_removed(g: Harness) -> None:
    call = delta(g)
    try:
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node(GRPC), type_url=LISTENER,
                                                             resource_names_subscribe=[ECHO, MISSING]))
        resp = await read(call)
        assert [r.name for r in resp.resources] == [ECHO]
        assert list(resp.removed_resources) == [MISSING]
    finally:
        call.cancel()
