"""GRPCRoute through a real Envoy with real grpcio clients and servers (generic handlers, raw bytes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.gateway_objects import backend, find_status, gateway, gateway_class, listener, parent_condition, route, tag
from support.grpc_echo import SERVING, GrpcEcho
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


@dataclass
class World:
    port: int
    cp: ControlPlaneThread
    envoy: Envoy
    channel: grpc.Channel

    def call(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
        stub = self.channel.unary_unary(method)
        body, call = stub.with_call(b"hello", metadata=metadata, timeout=5)
        return json.loads(body), {k: str(v) for k, v in call.initial_metadata()}


def _exact(service_name: str, method: str = "") -> dict[str, Any]:
    m = {"type": "Exact", "service": service_name}
    if method:
        m["method"] = method
    return {"method": m}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    md = ManifestDir()
    a, b = GrpcEcho("grpc-a", "127.0.0.2"), GrpcEcho("grpc-b", "127.0.0.3")
    port = free_port()
    grpc_route = route("GRPCRoute", "echo", hostnames=["grpc.test"], parents=[{"name": "gw"}], rules=[
        {"matches": [{**_exact("cilia.test.Echo", "Call"), "headers": [{"name": "x-version", "value": "v2"}]}],
         "filters": [tag("v2")], "backendRefs": [backend("grpc-b", 9000)]},
        {"matches": [_exact("cilia.test.Echo", "Call")], "filters": [tag("call")],
         "backendRefs": [backend("grpc-a", 9000)]},
        {"matches": [{"method": {"type": "RegularExpression", "service": r"cilia\.test\..*", "method": "P.ng"}}],
         "filters": [tag("regex")], "backendRefs": [backend("grpc-b", 9000)]},
        {"matches": [_exact("grpc.health.v1.Health")], "backendRefs": [backend("grpc-b", 9000)],
         "filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "x-added", "value": "yes"}]}}]},
    ])
    objects = [gateway_class(), gateway("gw", address="127.0.0.1", listeners=[listener("http", port)]), grpc_route]
    for i, be in enumerate((a, b)):
        # Plain TCP Service ports: the GRPCRoute alone makes the upstream HTTP/2.
        objects += [service(be.name, 9000, vip=f"127.96.0.{30 + i}", port_name="tcp"),
                    endpoint_slice(be.name, [(be.host, be.port)], port_name="tcp")]
    md.write("all.yaml", docs(*objects))
    cp = ControlPlaneThread([str(md.path)]).start()
    envoy = Envoy("gateway~default/gw", cp.xds_port).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", "grpc.test")])
    w = World(port, cp, envoy, channel)
    try:
        envoy.wait_for(lambda: w.call("/cilia.test.Echo/Call")[0]["backend"] == "grpc-a", timeout=15,
                       what="gRPC route serving")
        yield w
    finally:
        channel.close()
        envoy.stop()
        cp.stop()
        a.stop()
        b.stop()
        md.cleanup()


def test_method_and_header_matches(world: World) -> None:
    body, md = world.call("/cilia.test.Echo/Call")
    assert (body["backend"], md.get("x-rule")) == ("grpc-a", "call")
    body, md = world.call("/cilia.test.Echo/Call", (("x-version", "v2"),))
    assert (body["backend"], md.get("x-rule")) == ("grpc-b", "v2")
    body, md = world.call("/cilia.test.Echo/Ping")
    assert (body["backend"], body["method"], md.get("x-rule")) == ("grpc-b", "Ping", "regex")


def test_service_match_and_request_header_filter(world: World) -> None:
    stub = world.channel.unary_unary("/grpc.health.v1.Health/Check")
    assert stub(b"", timeout=5) == SERVING


def test_unmatched_method_is_unimplemented(world: World) -> None:
    with pytest.raises(grpc.RpcError) as err:
        world.channel.unary_unary("/cilia.test.Other/Call")(b"x", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_route_status_and_http2_cluster(world: World) -> None:
    st = find_status(world.cp.admin_json("/debug/status"), "GRPCRoute", "echo")
    assert parent_condition(st, "Accepted") == ("True", "Accepted")
    assert parent_condition(st, "ResolvedRefs") == ("True", "ResolvedRefs")
    clusters = {c["name"]: c for c in world.cp.admin_json("/debug/config/gateway~default/gw")["clusters"]}
    assert set(clusters) == {"default/grpc-a:9000|http2", "default/grpc-b:9000|http2"}
    assert all("typedExtensionProtocolOptions" in c for c in clusters.values())
