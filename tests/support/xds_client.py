"""An in-process xDS client harness: a real XdsServer on loopback, a world built from IR, and gRPC
streams whose responses a background task collects."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from cilia.ir import model as ir
from cilia.render.resources import CLUSTER
from cilia.render.world import ResourceCache, render_world
from cilia.xds.cache import ConfigCache
from cilia.xds.server import ServerLimits, XdsServer
from cilia.xds.status import StatusRegistry
from cilia.xds.stream import StreamLimits

NODE = "node~n1"


def world(clusters: tuple[str, ...] = ("c1", "c2"), endpoints: dict[str, int] | None = None,
          routes: dict[str, str] | None = None, secrets: dict[str, bytes] | None = None,
          listener_secret: str = "", gen: int = 1) -> Any:
    """EDS clusters with endpoint sets (name -> port), routes (name -> cluster), SDS secrets (name -> cert),
    and one listener whose filter chain terminates TLS with `listener_secret` when given."""
    endpoints = endpoints if endpoints is not None else {c: 8080 for c in clusters}
    routes = routes or {}
    rcs = tuple(ir.RouteConfig(name, (ir.VirtualHost("all", ("*",), (
        ir.Route("r", ir.RouteMatch(), (ir.Backend(cluster),)),)),)) for name, cluster in routes.items())
    tls = ir.TlsTermination((listener_secret,)) if listener_secret else None
    listeners = (ir.Listener("l1", "127.0.0.1", 10001, (ir.FilterChain(
        "fc", ir.HttpApp(next(iter(routes), "missing")), tls=tls),)),)
    secs = tuple(ir.Secret(n, certificate_chain=c, private_key=b"key") for n, c in (secrets or {}).items())
    bundle = ir.Bundle("b", ir.ProxyScope(frozenset({"node"})), listeners=listeners, routes=rcs,
                       clusters=tuple(ir.Cluster(c) for c in clusters), secrets=secs)
    pool = {n: ir.EndpointSet(n, (ir.LocalityEndpoints((ir.Endpoint("127.1.0.1", p),)),))
            for n, p in endpoints.items()}
    return render_world(ir.MeshIR((bundle,), pool), ResourceCache(), gen)


class Harness:
    def __init__(self, limits: ServerLimits) -> None:
        self.cache = ConfigCache()
        self.status = StatusRegistry()
        self.server = XdsServer(self.cache, self.status, limits)
        self.channels: list[grpc.aio.Channel] = []

    async def start(self) -> None:
        await self.server.start("127.0.0.1:0")
        self.channel()

    def channel(self, *options: tuple[str, Any]) -> grpc.aio.Channel:
        """A new client connection (its own HTTP/2 connection and flow-control window)."""
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}",
                                       options=[("grpc.use_local_subchannel_pool", 1), *options])
        self.channels.append(ch)
        return ch

    def ads(self, ch: grpc.aio.Channel | None = None) -> ads_pb2_grpc.AggregatedDiscoveryServiceStub:
        return ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch or self.channels[0])

    async def stop(self) -> None:
        for ch in self.channels:
            await ch.close()
        await self.server.stop(0)


async def harness(ack_wait_s: float = 0.5, **limits: Any) -> Harness:
    h = Harness(ServerLimits(stream=StreamLimits(ack_wait_s=ack_wait_s), **limits))
    h.cache.set_world(world())
    await h.start()
    return h


def node(node_id: str = NODE) -> base_pb2.Node:
    return base_pb2.Node(id=node_id)


class Call:
    """A stream whose responses a background task collects (cancelling a pending read kills the RPC)."""

    def __init__(self, call: Any, pump: bool = True) -> None:
        self.call = call
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._pump()) if pump else None

    async def _pump(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    return
                await self.queue.put(msg)
        except grpc.aio.AioRpcError as exc:
            await self.queue.put(exc)

    async def write(self, msg: Any) -> None:
        await self.call.write(msg)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.call.cancel()


async def read(call: Call, within: float = 2.0) -> Any:
    msg = await asyncio.wait_for(call.queue.get(), within)
    if isinstance(msg, grpc.aio.AioRpcError):
        raise msg
    return msg


async def no_message(call: Call, wait: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(call.queue.get(), wait)
    except TimeoutError:
        return True
    return False


async def rpc_error(call: Call, within: float = 2.0) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(call, within)
    return err.value


def cluster_names(resp: Any) -> list[str]:
    out = []
    for a in resp.resources:
        c = cluster_pb2.Cluster()
        assert a.Unpack(c)
        out.append(c.name)
    return sorted(out)


def sotw(h: Harness) -> Call:
    return Call(h.ads().StreamAggregatedResources())


def delta(h: Harness) -> Call:
    return Call(h.ads().DeltaAggregatedResources())


def req(type_url: str = CLUSTER, names: tuple[str, ...] = (), version: str = "", nonce: str = "",
        first: bool = False) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(node=node() if first else None, type_url=type_url,
                                          resource_names=list(names), version_info=version, response_nonce=nonce)


def dreq(type_url: str = CLUSTER, sub: tuple[str, ...] = (), unsub: tuple[str, ...] = (), nonce: str = "",
         first: bool = False, initial: dict[str, str] | None = None) -> discovery_pb2.DeltaDiscoveryRequest:
    return discovery_pb2.DeltaDiscoveryRequest(
        node=node() if first else None, type_url=type_url, resource_names_subscribe=list(sub),
        resource_names_unsubscribe=list(unsub), response_nonce=nonce, initial_resource_versions=initial or {})
