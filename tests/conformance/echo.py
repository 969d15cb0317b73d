"""Echo backends speaking the Gateway API conformance suite's echo contract.

Each answers with a JSON body naming what it saw and who it is: `path` (the request URI, query
included), `host`, `method`, `proto`, `headers` (canonical name -> list of values), and the pod's
`namespace`, `service` and `pod`. As the suite's backends do, `/retry/...` fails (`?responseCode=N`,
else a connection reset) until `?succeedAfter=N` attempts with the same `?uuid=` were made, `/status/N`
answers N, and `?delay=DURATION` waits before answering.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import ssl
import struct
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_DURATION = re.compile(r"([0-9.]+)(ms|s|m)")


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    return sum(float(n) * units[u] for n, u in _DURATION.findall(value))


def _canonical(name: str) -> str:
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-answer (a proxy's timeout) is expected here, not worth a traceback."""


class ConformanceEcho:
    """One backend pod: `pod` is named as the suite names them (`<service>-<suffix>`)."""

    def __init__(self, service: str, namespace: str, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[bytes, bytes] | None = None) -> None:
        """`tls`: (certificate PEM, key PEM) to serve HTTPS with, as the suite's TLS backends do."""
        self.service = service
        self.namespace = namespace
        self.pod = f"{service}-7d5b9c4f6-x{abs(hash((service, namespace))) % 10000:04d}"
        self.requests: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                seen: dict[str, Any] = {
                    "path": self.path, "host": self.headers.get("host", ""), "method": self.command,
                    "proto": self.request_version, "headers": {},
                    "namespace": echo.namespace, "ingress": "", "service": echo.service, "pod": echo.pod}
                for k, v in self.headers.items():
                    if k.lower() != "host":
                        seen["headers"].setdefault(_canonical(k), []).append(v)
                with echo._lock:
                    echo.requests.append(seen)
                if url.path.startswith("/retry/") and not self._retry(query):
                    return
                m = re.fullmatch(r"/status/(\d{3})", url.path)
                if m:
                    self._send(int(m.group(1)), b"")
                    return
                if query.get("delay"):
                    time.sleep(min(_seconds(query["delay"]), 30.0))
                self._send(200, json.dumps(seen, indent=1).encode(), "application/json")

            def _retry(self, query: dict[str, str]) -> bool:
                """Fail this attempt (False) until `succeedAfter` attempts were seen for the uuid."""
                uuid = query.get("uuid", "")
                after = int(query.get("succeedAfter", "0") or 0)
                with echo._lock:
                    n = echo._attempts.get(uuid, 0)
                    if n >= after:
                        return True
                    echo._attempts[uuid] = n + 1
                if query.get("responseCode"):
                    self._send(int(query["responseCode"]), b"")
                else:  # a TCP reset
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                return False

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_CONNECT = _answer
            do_TRACE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _QuietServer((host, port), Handler)
        self._server.daemon_threads = True
        if tls is not None:  # the handshake happens in the handler's thread, on its first read
            self._server.socket = server_context(*tls).wrap_socket(self._server.socket, server_side=True,
                                                                   do_handshake_on_connect=False)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"echo-{service}", daemon=True)

    def start(self) -> ConformanceEcho:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="cilia-echo-") as tmp:
        (Path(tmp) / "c.pem").write_bytes(cert_pem)
        (Path(tmp) / "k.pem").write_bytes(key_pem)
        ctx.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
    return ctx


TCP_WELCOME = "Gateway API Test TCP Server\n"


class ConformanceTcpEcho:
    """One pod of the suite's TCP backend: a plain port and a TLS port (its own certificate), each
    greeting with `TCP_WELCOME`, then answering lines: `PING` -> `PONG`, `IS_TLS` -> `true`/`false`,
    `TEST` -> JSON naming the pod (`namespace`, `service`, `pod`), `isTLS` and, over TLS, `tls`
    (`serverName`: the SNI it was reached with, `version`)."""

    def __init__(self, service: str, namespace: str, tls: tuple[bytes, bytes], host: str = "127.0.0.1") -> None:
        self.service = service
        self.namespace = namespace
        self.pod = f"{service}-7d5b9c4f6-x{abs(hash((service, namespace))) % 10000:04d}"
        self.host = host
        ctx = server_context(*tls)
        echo = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                conn = self.connection
                seen: dict[str, Any] = {"namespace": echo.namespace, "ingress": "", "service": echo.service,
                                        "pod": echo.pod, "isTLS": isinstance(conn, ssl.SSLSocket)}
                try:
                    conn.settimeout(10)
                    if isinstance(conn, ssl.SSLSocket):
                        conn.do_handshake()
                        seen["tls"] = {"version": conn.version() or "", "serverName": getattr(conn, "sni", ""),
                                       "cipherSuite": (conn.cipher() or ("",))[0]}
                    self.wfile.write(TCP_WELCOME.encode())
                    for raw in self.rfile:
                        line = raw.decode(errors="replace").strip()
                        if line == "PING":
                            out = "PONG"
                        elif line == "IS_TLS":
                            out = "true" if seen["isTLS"] else "false"
                        elif line == "TEST":
                            out = json.dumps(seen)
                        else:
                            out = line
                        self.wfile.write((out + "\n").encode())
                except (OSError, ssl.SSLError):
                    pass

        def on_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
            sock.sni = name or ""  # type: ignore[union-attr]

        ctx.sni_callback = on_sni  # type: ignore[assignment]
        self.plain = _QuietTcpServer((host, 0), Handler)
        self.tls = _QuietTcpServer((host, 0), Handler)
        self.tls.socket = ctx.wrap_socket(self.tls.socket, server_side=True, do_handshake_on_connect=False)
        self.plain_port = int(self.plain.server_address[1])
        self.tls_port = int(self.tls.server_address[1])
        self._threads = [threading.Thread(target=s.serve_forever, name=f"tcp-echo-{service}", daemon=True)
                         for s in (self.plain, self.tls)]

    def start(self) -> ConformanceTcpEcho:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self.plain, self.tls):
            s.shutdown()
            s.server_close()


class _QuietTcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-answer is expected here, not worth a traceback."""


GRPC_SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
GRPC_METHODS = ("Echo", "EchoTwo", "EchoThree")


class ConformanceGrpcEcho:
    """One gRPC backend pod serving the suite's echo service (`GrpcEcho/{Echo,EchoTwo,EchoThree}`).

    It answers with JSON rather than the suite's protobuf `EchoResponse`: the same facts (the pod's
    `namespace`, `service` and `pod`, the `method` called, the request `headers`), read the same way
    by the runner; no generated protobuf code is needed on either side."""

    def __init__(self, service: str, namespace: str, host: str = "127.0.0.1", port: int = 0) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        self.service = service
        self.namespace = namespace
        self.pod = f"{service}-7d5b9c4f6-x{abs(hash((service, namespace))) % 10000:04d}"
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        handlers = {m: grpc.unary_unary_rpc_method_handler(self._handler(m)) for m in GRPC_METHODS}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GRPC_SERVICE, handlers),))
        self.host = host
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind a gRPC server to {host}:{port}")

    def _handler(self, method: str) -> Any:
        def handle(request: bytes, context: Any) -> bytes:
            headers: dict[str, list[str]] = {}
            for k, v in context.invocation_metadata():
                headers.setdefault(k, []).append(str(v))
            return json.dumps({"namespace": self.namespace, "service": self.service, "pod": self.pod,
                               "method": method, "headers": headers}).encode()
        return handle

    def start(self) -> ConformanceGrpcEcho:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0)
