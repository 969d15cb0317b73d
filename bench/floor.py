"""The fan-out floor: a minimal one-process grpc.aio ADS server (Delta and SotW) that holds streams and,
on a trigger, writes one pre-serialised route response to every stream. No config model, no per-stream
state beyond the nonce: what grpc.aio itself costs per stream. Run as a process:

    python -m bench.floor PORT ROUTE_NAME [CONTROL_PORT]   (prints "ready PORT", then serves until SIGTERM)

Trigger: unary `/bench.Floor/Push` with the marker number as ASCII bytes.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from cilia.app import GC_THRESHOLDS, scale_collector
from cilia.render.resources import Resource, delta_response, sotw_response

RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _identity(b: bytes) -> bytes:
    return b


class Floor:
    def __init__(self, route_name: str) -> None:
        self.route_name = route_name
        self.marker = 0
        self.wakers: set[asyncio.Event] = set()
        self._build()

    def _build(self) -> None:
        rc = route_pb2.RouteConfiguration(name=self.route_name)
        vh = rc.virtual_hosts.add(name="all", domains=["*"])
        r = vh.routes.add()
        r.match.prefix = f"/bench-{self.marker}"
        r.direct_response.status = 200
        self.resource = Resource.of(RDS, self.route_name, rc)
        self.version = self.resource.version

    def push(self, marker: int) -> None:
        self.marker = marker
        self._build()
        for ev in self.wakers:
            ev.set()

    async def serve_stream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                           delta: bool) -> None:
        wake = asyncio.Event()
        nonce = 0
        subscribed = asyncio.Event()
        sent_version = ""

        def response(type_url: str) -> bytes:
            nonlocal nonce
            nonce += 1
            if type_url != RDS:
                return (delta_response("0", (), type_url, (), str(nonce)) if delta
                        else sotw_response("0", (), type_url, str(nonce)))
            return (delta_response(self.version, (self.resource,), RDS, (), str(nonce)) if delta
                    else sotw_response(self.version, (self.resource,), RDS, str(nonce)))

        async def reader() -> None:
            async for req in requests:
                if not req.response_nonce:  # a subscription: answer it; ACKs need nothing
                    if req.type_url == RDS:
                        subscribed.set()
                        wake.set()
                    else:
                        await context.write(response(req.type_url))

        self.wakers.add(wake)
        task = asyncio.ensure_future(reader())
        try:
            while not task.done():
                await wake.wait()
                wake.clear()
                if subscribed.is_set() and sent_version != self.version:
                    sent_version = self.version
                    await context.write(response(RDS))
        finally:
            self.wakers.discard(wake)
            task.cancel()

    def handlers(self) -> grpc.GenericRpcHandler:
        async def delta(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            await self.serve_stream(requests, context, True)

        async def sotw(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            await self.serve_stream(requests, context, False)

        return grpc.method_handlers_generic_handler(ADS, {
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                delta, discovery_pb2.DeltaDiscoveryRequest.FromString, _identity),
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                sotw, discovery_pb2.DiscoveryRequest.FromString, _identity),
        })

    def control(self) -> grpc.GenericRpcHandler:
        async def push(req: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.push(int(req.decode()))
            return b""

        return grpc.method_handlers_generic_handler("bench.Floor", {
            "Push": grpc.unary_unary_rpc_method_handler(push, _identity, _identity)})


async def main(port: int, route_name: str, control_port: int = 0) -> None:
    """With `control_port`, the xDS port is bound with SO_REUSEPORT (several floor processes share it, the
    kernel spreading connections over them) and each process takes its trigger on its own control port."""
    floor = Floor(route_name)
    # The same grpc core limits as cilia's server, so both hold a connect storm alike.
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000),
                                      ("grpc.so_reuseport", 1 if control_port else 0),
                                      ("grpc.server.max_pending_requests", 50_000),
                                      ("grpc.server.max_pending_requests_hard_limit", 100_000)],
                             maximum_concurrent_rpcs=None)
    server.add_generic_rpc_handlers([floor.handlers(), floor.control()])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if control_port:
        server.add_insecure_port(f"127.0.0.1:{control_port}")
    await server.start()
    # The same collector settings as `cilia serve` (cilia.app.serve: thresholds scaled with the streams
    # held), so the comparison is of the work per stream, not of runtime settings.
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()
    gc.freeze()
    collector = asyncio.create_task(scale_collector(lambda: len(floor.wakers)))
    print(f"ready {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    collector.cancel()
    await server.stop(0.2)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
