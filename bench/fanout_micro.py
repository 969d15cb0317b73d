"""The Python each server spends per stream per change, without gRPC: `python -m bench.fanout_micro`

N Delta streams run in one process through cilia's own stream handling (`XdsServer._serve_stream`, the
code a real stream runs) and through the floor's (bench/floor.py), each over an in-memory context whose
write only records the response. A change is pushed to every stream (timed until the last write), then
every stream ACKs what it got (timed until the last ACK is consumed). The grpc.aio costs both servers
share (the real write and read) are left out, so what remains is the per-stream work each adds on top:
the part of the CPU per push that `python -m bench` cannot separate from grpc's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from bench.common import machine, table, write_result
from bench.floor import Floor
from cilia.ir import model as ir
from cilia.obs.metrics import XdsMetrics
from cilia.render.resources import CLUSTER, LISTENER, ROUTE
from cilia.render.world import RenderedWorld, ResourceCache, render_world
from cilia.xds.cache import ConfigCache
from cilia.xds.server import ALL_TYPES, ServerLimits, XdsServer
from cilia.xds.status import StatusRegistry

ROUTE_NAME = "default/bench/routes"


def bench_world(marker: int, cache: ResourceCache) -> RenderedWorld:
    """One listener, the route table whose prefix carries `marker`, one cluster and its endpoint."""
    routes = (ir.RouteConfig(ROUTE_NAME, (ir.VirtualHost("all", ("*",), (
        ir.Route("r", ir.RouteMatch(path=ir.PathMatch("prefix", f"/bench-{marker}")), (ir.Backend("c1"),)),)),)),)
    listeners = (ir.Listener("l1", "127.0.0.1", 10001, (ir.FilterChain("fc", ir.HttpApp(ROUTE_NAME)),)),)
    bundle = ir.Bundle("b", ir.ProxyScope(frozenset({"node"})), listeners=listeners, routes=routes,
                       clusters=(ir.Cluster("c1"),))
    pool = {"c1": ir.EndpointSet("c1", (ir.LocalityEndpoints((ir.Endpoint("127.1.0.1", 8080),)),))}
    return render_world(ir.MeshIR((bundle,), pool), cache, marker + 1)


class Counter:
    """Writes and consumed requests over all streams; a waiter is woken when a count reaches its target."""

    def __init__(self) -> None:
        self.count = 0
        self.target = -1
        self.done: asyncio.Future[None] | None = None

    def bump(self) -> None:
        self.count += 1
        if self.count == self.target and self.done is not None:
            self.done.set_result(None)

    def expect(self, more: int) -> asyncio.Future[None]:
        self.target = self.count + more
        self.done = asyncio.get_running_loop().create_future()
        return self.done


class Context:
    """The part of grpc.aio's ServicerContext a stream uses: write records the response."""

    def __init__(self, written: Counter) -> None:
        self.out: list[bytes] = []
        self.written = written

    async def write(self, payload: bytes) -> None:
        self.out.append(payload)
        self.written.bump()

    def auth_context(self) -> dict[str, Any]:
        return {}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


class Requests:
    """A stream's requests, as the raw bytes grpc hands to the deserializer."""

    def __init__(self, consumed: Counter, decode: Callable[[bytes], Any]) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.consumed = consumed
        self.decode = decode
        self.started = False

    def __aiter__(self) -> Requests:
        return self

    async def __anext__(self) -> Any:
        if self.started:  # the previous request has been handled
            self.consumed.bump()
        self.started = True
        return self.decode(await self.queue.get())


def ack_of(payload: bytes) -> bytes:
    resp = discovery_pb2.DeltaDiscoveryResponse.FromString(payload)
    return discovery_pb2.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce).SerializeToString()


async def run(server_kind: str, n: int, changes: int) -> dict[str, Any]:
    written, consumed = Counter(), Counter()
    resource_cache = ResourceCache()
    cache = ConfigCache()
    metrics = XdsMetrics()
    server = XdsServer(cache, StatusRegistry(), ServerLimits(max_streams=max(10_000, n)), metrics)
    cache.set_world(bench_world(0, resource_cache))
    floor = Floor(ROUTE_NAME)
    decode = discovery_pb2.DeltaDiscoveryRequest.FromString if server_kind == "floor" else server.decode_delta
    streams: list[tuple[Context, Requests]] = []
    tasks: list[asyncio.Future[None]] = []
    started = written.expect(3 * n)  # clusters, listeners, the route table
    for i in range(n):
        ctx, reqs = Context(written), Requests(consumed, decode)
        node = base_pb2.Node(id=f"node~bench-{i}", cluster="bench", user_agent_name="bench-client")
        for req in (discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CLUSTER),
                    discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER),
                    discovery_pb2.DeltaDiscoveryRequest(type_url=ROUTE, resource_names_subscribe=[ROUTE_NAME])):
            reqs.queue.put_nowait(req.SerializeToString())
        streams.append((ctx, reqs))
        if server_kind == "floor":
            tasks.append(asyncio.ensure_future(floor.serve_stream(reqs, ctx, True)))  # type: ignore[arg-type]
        else:
            tasks.append(asyncio.ensure_future(server._serve_stream(reqs, ctx, ALL_TYPES, delta=True)))
    await asyncio.wait_for(started, 60)

    async def ack_all() -> float:
        acks = [[ack_of(p) for p in ctx.out] for ctx, _ in streams]
        total = sum(len(a) for a in acks)
        for ctx, _ in streams:
            ctx.out.clear()
        done = consumed.expect(total)
        t0 = time.perf_counter()
        for (_, reqs), stream_acks in zip(streams, acks, strict=True):
            for raw in stream_acks:
                reqs.queue.put_nowait(raw)
        await asyncio.wait_for(done, 60)
        return (time.perf_counter() - t0) / max(1, total)

    await ack_all()
    # As `cilia serve` and the floor set the collector: what was loaded is frozen, young threshold high.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    push_us: list[float] = []
    ack_us: list[float] = []
    try:
        for k in range(1, changes + 1):
            world = bench_world(k, resource_cache)
            done = written.expect(n)
            t0 = time.perf_counter()
            if server_kind == "floor":
                floor.push(k)
            else:
                metrics.begin_change()
                cache.set_world(world)
            await asyncio.wait_for(done, 60)
            push_us.append((time.perf_counter() - t0) / n * 1e6)
            ack_us.append(await ack_all() * 1e6)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        gc.unfreeze()
    return {"server": server_kind, "streams": n, "changes": changes,
            "push_us_per_stream": statistics.median(push_us), "ack_us_per_stream": statistics.median(ack_us),
            "sum_us_per_stream": statistics.median(p + a for p, a in zip(push_us, ack_us, strict=True))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fanout_micro", description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="cilia and floor alternated this many times")
    args = ap.parse_args(argv)
    rows = []
    for _ in range(args.rounds):
        for kind in ("cilia", "floor"):
            rows.append(asyncio.run(run(kind, args.streams, args.changes)))
    header = ["server", "streams", "changes", "push_us_per_stream", "ack_us_per_stream", "sum_us_per_stream"]
    print(table([[r[h] for h in header] for r in rows], header))
    cilia = statistics.median(r["sum_us_per_stream"] for r in rows if r["server"] == "cilia")
    floor = statistics.median(r["sum_us_per_stream"] for r in rows if r["server"] == "floor")
    print(f"median per stream per change: cilia {cilia:.1f} us, floor {floor:.1f} us, "
          f"cilia - floor {cilia - floor:.1f} us")
    print(f"wrote {write_result('fanout-micro', {'machine': machine(), 'args': vars(args), 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
