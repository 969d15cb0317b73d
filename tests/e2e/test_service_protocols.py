"""Service details through a real Envoy behind an Ingress: appProtocol grpc and kubernetes.io/h2c make
the upstream HTTP/2 (a gRPC server answers; the same port without appProtocol fails), ExternalName
resolves by DNS, and a headless Service routes to its endpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from cilia.translate.context import TranslateOptions
from support.backends import echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice
from support.net import free_port

pytestmark = pytest.mark.e2e

METHOD = "/demo.Echo/Say"


def _say(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"hello " + request


@pytest.fixture
def grpc_backend() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(_say)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", {"Say": handler}),))
    port = server.add_insecure_port("127.0.0.4:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def svc(name: str, port: int, target: int, app_protocol: str = "", **spec: Any) -> str:
    p: dict[str, Any] = {"name": "p", "port": port, "targetPort": target}
    if app_protocol:
        p["appProtocol"] = app_protocol
    return json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                       "spec": {"ports": [p], **spec}})


def rule(host: str, service: str, port: int) -> dict[str, Any]:
    return {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
        "service": {"name": service, "port": {"number": port}}}}]}}


def call(port: int, authority: str) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", authority)]) as ch:
        fn = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        return bytes(fn(b"cilia", timeout=3))


def test_app_protocol_external_name_headless(grpc_backend: int) -> None:
    md = ManifestDir()
    with echo_backends(("external", "127.0.0.1"), ("headless", "127.0.0.5")) as (external, headless):
        slice_for = "127.0.0.4"
        md.write("all.yaml", docs(
            svc("rpc", 9000, grpc_backend, "grpc", clusterIP="127.96.5.1"),
            svc("h2c", 9001, grpc_backend, "kubernetes.io/h2c", clusterIP="127.96.5.2"),
            svc("plain", 9002, grpc_backend, clusterIP="127.96.5.3"),
            *[endpoint_slice(n, [(slice_for, grpc_backend)], port_name="p") for n in ("rpc", "h2c", "plain")],
            svc("ext", external.port, external.port, type="ExternalName", externalName="localhost"),
            svc("db", 80, headless.port, clusterIP="None"),
            endpoint_slice("db", [(headless.host, headless.port)], port_name="p"),
            json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                        "metadata": {"name": "protocols", "namespace": "default"},
                        "spec": {"ingressClassName": "cilia", "rules": [
                            rule("rpc.example.com", "rpc", 9000), rule("h2c.example.com", "h2c", 9001),
                            rule("plain.example.com", "plain", 9002), rule("ext.example.com", "ext", external.port),
                            rule("db.example.com", "db", 80)]}}),
        ))
        port = free_port()
        opts = TranslateOptions(ingress_address="127.0.0.1", ingress_http_port=port, ingress_https_port=free_port())
        cp = ControlPlaneThread([str(md.path)], translate=opts).start()
        envoy = Envoy("ingress~cilia", cp.xds_port)
        url = f"http://127.0.0.1:{port}"
        try:
            envoy.start()
            envoy.wait_for(lambda: get(url + "/x", {"Host": "db.example.com"}).status == 200, what="ingress serving")
            assert call(port, "rpc.example.com") == b"hello cilia"  # appProtocol grpc -> HTTP/2 upstream
            assert call(port, "h2c.example.com") == b"hello cilia"  # kubernetes.io/h2c -> HTTP/2 upstream
            with pytest.raises(grpc.RpcError):  # the same server as HTTP/1.1 upstream: gRPC cannot work
                call(port, "plain.example.com")
            r = get(url + "/via-dns", {"Host": "ext.example.com"})  # ExternalName localhost -> DNS cluster
            assert r.status == 200 and r.json()["backend"] == "external" and r.json()["path"] == "/via-dns"
            r = get(url + "/db", {"Host": "db.example.com"})  # headless: same endpoints, no VIP needed
            assert r.status == 200 and r.json()["backend"] == "headless"
        finally:
            envoy.stop()
            cp.stop()
            md.cleanup()
