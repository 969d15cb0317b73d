"""Real gRPC servers for tests: generic handlers on raw bytes, answering JSON that names the server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}
NOT_SERVING = b"\x08\x02"


class GrpcEcho:
    """Answers cilia.test.Echo/{Call,Ping} with JSON naming itself, and grpc.health.v1.Health/Check;
    cilia.test.Echo/Flaky too, except while `failing` is set (then UNAVAILABLE)."""

    def __init__(self, name: str, host: str, port: int = 0) -> None:
        self.name = name
        self.failing = False
        self.flaky_calls = 0
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        echo = {m: grpc.unary_unary_rpc_method_handler(self._echo(m)) for m in ("Call", "Ping", "Flaky")}
        health = {"Check": grpc.unary_unary_rpc_method_handler(self._health)}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("cilia.test.Echo", echo),
                                              grpc.method_handlers_generic_handler("grpc.health.v1.Health", health)))
        self.host = host
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind a gRPC server to {host}:{port}")
        self.server.start()

    @staticmethod
    def _health(request: bytes, context: grpc.ServicerContext) -> bytes:
        """SERVING only when the route's RequestHeaderModifier added `x-added: yes`."""
        return SERVING if ("x-added", "yes") in tuple(context.invocation_metadata()) else NOT_SERVING

    def _echo(self, method: str) -> Any:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            if method == "Flaky":
                self.flaky_calls += 1
                if self.failing:
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is failing")
            md = {k: v for k, v in context.invocation_metadata()}
            return json.dumps({"backend": self.name, "method": method, "request": request.decode(),
                               "metadata": md}).encode()
        return handle

    def stop(self) -> None:
        self.server.stop(0)
