"""Echo backends speaking the Gateway API conformance suite's echo contract.

Each answers with a JSON body naming what it saw and who it is: `path` (the request URI, query
included), `host`, `method`, `proto`, `headers` (canonical name -> list of values), and the pod's
`namespace`, `service` and `pod`. As the suite's backends do, `/retry/...` fails (`?responseCode=N`,
else a connection reset) until `?succeedAfter=N` attempts with the same `?uuid=` were made, `/status/N`
answers N, and `?delay=DURATION` waits before answering. `X-Echo-Set-Header: NAME:VALUE,...` makes
it answer with those response headers; `/ws` upgraded to a WebSocket echoes every text and binary
message back. `ConformanceH2CEcho` answers the same JSON over HTTP/2 with prior knowledge (h2c).
"""

from __future__ import annotations

import base64
import hashlib
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
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _set_headers(value: str) -> list[tuple[str, str]]:
    """The response headers an `X-Echo-Set-Header` value asks for (`name:value` pairs, comma-separated)."""
    out = []
    for item in value.split(","):
        name, sep, val = item.partition(":")
        if sep and name.strip():
            out.append((name.strip(), val.strip()))
    return out


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def ws_read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One WebSocket frame (RFC 6455): (opcode, unmasked payload). Fragments are not reassembled:
    the suite sends small single-frame messages."""
    b0, b1 = _recv_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", _recv_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _recv_exact(sock, 8))[0]
    mask = _recv_exact(sock, 4) if b1 & 0x80 else b""
    data = _recv_exact(sock, n)
    if mask:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return b0 & 0x0F, data


def ws_frame(opcode: int, payload: bytes, mask: bytes = b"") -> bytes:
    """A final WebSocket frame; clients mask theirs (`mask`: 4 bytes), servers do not."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + payload


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()


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
                 tls: tuple[bytes, bytes] | None = None, client_ca: bytes | None = None) -> None:
        """`tls`: (certificate PEM, key PEM) to serve HTTPS with, as the suite's TLS backends do;
        `client_ca`: then require a client certificate from this CA, echoed as `tls.peerCertificates`."""
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
                conn = self.connection
                if isinstance(conn, ssl.SSLSocket):  # as the suite's echo: the SNI it was reached with
                    seen["tls"] = {"version": conn.version() or "", "serverName": getattr(conn, "sni", ""),
                                   "cipherSuite": (conn.cipher() or ("",))[0]}
                for k, v in self.headers.items():
                    if k.lower() != "host":
                        seen["headers"].setdefault(_canonical(k), []).append(v)
                if client_ca is not None:
                    seen["tls"] = {"peerCertificates": _peer_certificates(self.connection)}
                with echo._lock:
                    echo.requests.append(seen)
                if url.path == "/ws" and self.headers.get("upgrade", "").lower() == "websocket":
                    self._websocket()
                    return
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

            def _websocket(self) -> None:
                """Accept the upgrade, then echo each text/binary message until the client closes."""
                self.send_response(101)
                self.send_header("upgrade", "websocket")
                self.send_header("connection", "Upgrade")
                self.send_header("sec-websocket-accept", ws_accept(self.headers.get("sec-websocket-key", "")))
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                sock = self.connection
                sock.settimeout(30)
                try:
                    for _ in range(1000):  # bounded: a test sends a handful of messages
                        op, data = ws_read_frame(sock)
                        if op in (1, 2):
                            sock.sendall(ws_frame(op, data))
                        elif op == 9:
                            sock.sendall(ws_frame(10, data))
                        elif op == 8:
                            sock.sendall(ws_frame(8, data[:2]))
                            return
                except (OSError, ConnectionError, ValueError):
                    return

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                for k, v in _set_headers(self.headers.get("x-echo-set-header", "")):
                    self.send_header(k, v)
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
            ctx = server_context(*tls, client_ca)
            ctx.sni_callback = _record_sni  # type: ignore[assignment]
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True,
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


def _record_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
    """Keep the SNI the client sent on its socket (`sni`), for the echo to report."""
    sock.sni = name or ""  # type: ignore[union-attr]


def server_context(cert_pem: bytes, key_pem: bytes, client_ca: bytes | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_ca is not None:  # as the suite's echo with TLS_CLIENT_CACERTS: no trusted client cert, no request
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca.decode())
    with tempfile.TemporaryDirectory(prefix="cilia-echo-") as tmp:
        (Path(tmp) / "c.pem").write_bytes(cert_pem)
        (Path(tmp) / "k.pem").write_bytes(key_pem)
        ctx.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
    return ctx


def _peer_certificates(conn: Any) -> list[str]:
    """The client's certificate as PEM (the suite's echo lists the peer's chain; Python sees its leaf)."""
    der = conn.getpeercert(binary_form=True) if isinstance(conn, ssl.SSLSocket) else None
    return [ssl.DER_cert_to_PEM_cert(der)] if der else []


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

        ctx.sni_callback = _record_sni  # type: ignore[assignment]
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


class ConformanceH2CEcho:
    """The same pod's HTTP/2 cleartext port (the suite's `kubernetes.io/h2c` port 3001): answers every
    request with the echo JSON (`proto` is `HTTP/2.0`), over prior-knowledge HTTP/2 only."""

    def __init__(self, http: ConformanceEcho, port: int = 0) -> None:
        self.echo = http
        self.host = http.host
        self._sock = socket.create_server((http.host, port))
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"h2c-{http.service}", daemon=True)

    def start(self) -> ConformanceH2CEcho:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        import h2.config
        import h2.connection
        import h2.events

        h2c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        conn.settimeout(30)
        requests: dict[int, list[tuple[str, str]]] = {}
        try:
            conn.sendall(h2c.data_to_send())
            while not self._stop.is_set():
                data = conn.recv(65535)
                if not data:
                    return
                for ev in h2c.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        requests[ev.stream_id] = [(_text(k), _text(v)) for k, v in ev.headers]
                    elif isinstance(ev, h2.events.DataReceived):
                        h2c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in requests:
                        body = json.dumps(self._seen(requests.pop(ev.stream_id))).encode()
                        h2c.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/json"),
                                                        ("content-length", str(len(body)))])
                        h2c.send_data(ev.stream_id, body, end_stream=True)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        return
                conn.sendall(h2c.data_to_send())
        except Exception:  # a broken peer ends only its own connection
            return
        finally:
            conn.close()

    def _seen(self, headers: list[tuple[str, str]]) -> dict[str, Any]:
        pseudo = {k: v for k, v in headers if k.startswith(":")}
        seen: dict[str, Any] = {"path": pseudo.get(":path", ""), "host": pseudo.get(":authority", ""),
                                "method": pseudo.get(":method", ""), "proto": "HTTP/2.0", "headers": {},
                                "namespace": self.echo.namespace, "ingress": "", "service": self.echo.service,
                                "pod": self.echo.pod}
        for k, v in headers:
            if not k.startswith(":"):
                seen["headers"].setdefault(_canonical(k), []).append(v)
        with self.echo._lock:
            self.echo.requests.append(seen)
        return seen


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v
