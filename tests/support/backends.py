"""Small HTTP echo backends: each answers with JSON naming itself and what it saw."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class EchoBackend:
    """Serves `{"backend": name, "method", "path", "query", "headers"}` and records every request.

    With `tls` (a server-side SSLContext) it speaks TLS; each record then also has `peer_cert` (the
    client certificate, DER, or None) and `alpn`, and a request with `x-close: 1` gets `Connection: close`
    (so the next one needs a new connection, and a new handshake)."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; with Nagle on, the body waits for the peer's
            # delayed ACK (~40 ms per request on loopback).
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                seen = {"backend": backend.name, "method": self.command, "path": url.path,
                        "raw_path": self.path, "query": parse_qs(url.query),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode(errors="replace"), "peer": self.client_address[0]}
                close = False
                if isinstance(self.connection, ssl.SSLSocket):
                    seen["alpn"] = self.connection.selected_alpn_protocol()
                    close = self.headers.get("x-close") == "1"
                data = json.dumps(seen).encode()
                if isinstance(self.connection, ssl.SSLSocket):
                    seen["peer_cert"] = self.connection.getpeercert(binary_form=True)
                backend.requests.append(seen)
                self.send_response(200)
                if close:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("x-backend", backend.name)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        if tls is not None:  # the handshake happens on the first read, in the request's own thread
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
            self._server.handle_error = lambda *_: None  # type: ignore[method-assign]  # refused handshakes
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"echo-{name}", daemon=True)

    def start(self) -> EchoBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def echo_backends(*specs: tuple[str, str]) -> Iterator[list[EchoBackend]]:
    """Start backends given as (name, host) pairs on free ports; stop them after."""
    started = [EchoBackend(name, host).start() for name, host in specs]
    try:
        yield started
    finally:
        for b in started:
            b.stop()


def main(argv: list[str]) -> int:
    """`python -m support.backends NAME=HOST:PORT ...`: serve echo backends until stdin closes. Tests run this
    inside network namespaces they made (see support.netns), where a thread of theirs cannot listen."""
    import sys

    started = []
    for spec in argv:
        name, _, hostport = spec.partition("=")
        host, _, port = hostport.rpartition(":")
        started.append(EchoBackend(name, host, int(port)).start())
    print("ready", flush=True)
    sys.stdin.read()
    for b in started:
        b.stop()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
