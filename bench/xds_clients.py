"""Synthetic xDS clients: many ADS streams (Delta or SotW) in one process, each on its own connection,
that ACK every response after decoding it, and record when they saw each route change.

A worker process is driven over a multiprocessing pipe by the benchmark:
  -> ("expect", marker, timeout_s)   <- ("seen", [(client, recv_t, ack_t) ...], missing)
  -> ("stop",)                       <- ("stopped", errors)
Times are time.monotonic(), which is one clock for all processes on Linux.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
MARKER = re.compile(rb"/bench-(\d+)")


@dataclass(frozen=True)
class ClientSpec:
    target: str
    count: int
    delta: bool
    first_id: int
    route_name: str
    connect_concurrency: int = 64
    cpu: int | None = None  # pin the worker to this CPU
    tls_dir: str = ""  # mTLS: client i uses TLS_DIR/bench-i/{cert,key,ca}.pem (node~bench-i)


@dataclass
class ClientState:
    index: int
    seen: dict[int, tuple[float, float]] = field(default_factory=dict)  # marker -> (recv, ack)
    responses: int = 0
    error: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def _route_marker(body: bytes) -> int:
    """Decode ("apply") a RouteConfiguration and find the benchmark's marker prefix in it."""
    rc = route_pb2.RouteConfiguration.FromString(body)
    best = -1
    for vh in rc.virtual_hosts:
        for r in vh.routes:
            m = MARKER.fullmatch(r.match.prefix.encode())
            if m:
                best = max(best, int(m.group(1)))
    return best


def _read_tls_dir(d: str) -> tuple[bytes, bytes, bytes]:
    """(ca, key, cert) as grpc.ssl_channel_credentials takes them."""
    out = []
    for name in ("ca.pem", "key.pem", "cert.pem"):
        with open(os.path.join(d, name), "rb") as f:
            out.append(f.read())
    return out[0], out[1], out[2]


class Worker:
    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.clients = [ClientState(spec.first_id + i) for i in range(spec.count)]
        self.changed = asyncio.Event()
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def run_client(self, st: ClientState, gate: asyncio.Semaphore) -> None:
        spec = self.spec
        node = base_pb2.Node(id=f"node~bench-{st.index}", cluster="bench", user_agent_name="bench-client")
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
        if spec.tls_dir:
            creds = grpc.ssl_channel_credentials(*_read_tls_dir(os.path.join(spec.tls_dir, f"bench-{st.index}")))
            channel = grpc.aio.secure_channel(spec.target, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(spec.target, options=options)
        self.channels.append(channel)
        try:
            if spec.delta:
                call = channel.stream_stream(ADS + "DeltaAggregatedResources",
                                             request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                                             response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString)()
                async with gate:
                    await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CDS))
                    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=LDS))
                    await call.write(discovery_pb2.DeltaDiscoveryRequest(
                        type_url=RDS, resource_names_subscribe=[spec.route_name]))
                async for resp in call:
                    t = time.monotonic()
                    marker = -1
                    if resp.type_url == RDS:
                        for r in resp.resources:
                            marker = max(marker, _route_marker(r.resource.value))
                    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=resp.type_url,
                                                                         response_nonce=resp.nonce))
                    self._record(st, marker, t)
            else:
                call = channel.stream_stream(ADS + "StreamAggregatedResources",
                                             request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                             response_deserializer=discovery_pb2.DiscoveryResponse.FromString)()
                names = {CDS: [], LDS: [], RDS: [spec.route_name]}
                async with gate:
                    await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CDS))
                    await call.write(discovery_pb2.DiscoveryRequest(type_url=LDS))
                    await call.write(discovery_pb2.DiscoveryRequest(type_url=RDS, resource_names=names[RDS]))
                async for resp in call:
                    t = time.monotonic()
                    marker = -1
                    if resp.type_url == RDS:
                        for a in resp.resources:
                            marker = max(marker, _route_marker(a.value))
                    await call.write(discovery_pb2.DiscoveryRequest(
                        type_url=resp.type_url, version_info=resp.version_info, response_nonce=resp.nonce,
                        resource_names=names.get(resp.type_url, [])))
                    self._record(st, marker, t)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            st.error = f"{type(exc).__name__}: {exc}"[:300]
            st.ready.set()
            self.changed.set()

    def _record(self, st: ClientState, marker: int, recv_t: float) -> None:
        st.responses += 1
        if marker >= 0 and marker not in st.seen:
            st.seen[marker] = (recv_t, time.monotonic())
            st.ready.set()
            self.changed.set()

    async def wait_markers(self, marker: int, timeout_s: float) -> tuple[list[tuple[int, float, float]], int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(marker in c.seen or c.error for c in self.clients):
                break
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        got = [(c.index, *c.seen[marker]) for c in self.clients if marker in c.seen]
        return got, len(self.clients) - len(got)

    async def main(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.spec.connect_concurrency)
        self.tasks = [asyncio.create_task(self.run_client(c, gate)) for c in self.clients]
        try:
            for _ in range(100_000):  # bounded command loop
                cmd = await loop.run_in_executor(None, conn.recv)
                if cmd[0] == "expect":
                    got, missing = await self.wait_markers(int(cmd[1]), float(cmd[2]))
                    errors = sorted({c.error for c in self.clients if c.error})
                    conn.send(("seen", got, missing, errors[:5]))
                elif cmd[0] == "stop":
                    break
        finally:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for ch in self.channels:
                await ch.close(None)
            conn.send(("stopped", sorted({c.error for c in self.clients if c.error})[:5]))


def raise_fd_limit() -> int:
    """Lift this process's open-file soft limit to its hard limit (one socket per client); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft


def worker_main(spec: ClientSpec, conn: Connection) -> None:
    """multiprocessing entry point."""
    raise_fd_limit()
    if spec.cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {spec.cpu})
        except OSError:
            pass
    asyncio.run(Worker(spec).main(conn))

