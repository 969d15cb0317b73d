"""A test CA, leaf certificates, a TLS echo server and a raw HTTPS client choosing its SNI."""

from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _san(name: str) -> x509.GeneralName:
    """A URI SAN for a name with a scheme (`spiffe://...`), a DNS SAN otherwise."""
    return x509.UniformResourceIdentifier(name) if "://" in name else x509.DNSName(name)


class TestCA:
    """A throwaway CA: issues server certificates for DNS names (and URIs, given with their scheme)."""

    __test__ = False

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cilia test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(hours=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *names: str) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(hours=2))
                .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
                .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.pem.decode())
        return ctx


def tls_secret(name: str, pair: KeyPair, namespace: str = "default") -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                       "metadata": {"name": name, "namespace": namespace},
                       "data": {"tls.crt": base64.b64encode(pair.cert_pem).decode(),
                                "tls.key": base64.b64encode(pair.key_pem).decode()}})


def https_get(port: int, sni: str, ca: TestCA, path: str = "/", host: str | None = None,
              address: str = "127.0.0.1") -> tuple[int, bytes, str]:
    """GET over TLS with the given SNI; returns (status, body, the served certificate's common name)."""
    ctx = ca.client_context()
    with socket.create_connection((address, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as s:
        cert = s.getpeercert() or {}
        cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), "")
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or sni}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body, cn


class TlsEchoServer:
    """Terminates TLS itself (the passthrough target) and answers one line: `NAME SNI REQUEST-LINE`."""

    def __init__(self, name: str, pair: KeyPair, host: str = "127.0.0.1") -> None:
        self.name = name
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tmp = Path(tempfile.mkdtemp(prefix="cilia-tls-"))
        (tmp / "c.pem").write_bytes(pair.cert_pem)
        (tmp / "k.pem").write_bytes(pair.key_pem)
        self.ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
        self.sni: list[str] = []

        def on_sni(sock: ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext) -> None:
            self.sni.append(server_name or "")

        self.ctx.sni_callback = on_sni
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> TlsEchoServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            with self.ctx.wrap_socket(conn, server_side=True) as s:
                data = s.recv(65536)
                line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                body = f"{self.name} {self.sni[-1] if self.sni else ''} {line}".encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() +
                          b"\r\nConnection: close\r\n\r\n" + body)
        except (OSError, ssl.SSLError):
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class MutualTlsEchoServer(TlsEchoServer):
    """A TlsEchoServer that requires a client certificate from `client_ca` and appends the client's
    common name to its answer: `NAME SNI REQUEST-LINE client=CN`."""

    def __init__(self, name: str, pair: KeyPair, client_ca: TestCA, host: str = "127.0.0.1") -> None:
        super().__init__(name, pair, host)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(cadata=client_ca.pem.decode())
        self.rejected = 0  # handshakes refused (no or untrusted client certificate)
        self._rejections = threading.Condition()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            with self.ctx.wrap_socket(conn, server_side=True) as s:
                der = s.getpeercert(binary_form=True)
                subject = x509.load_der_x509_certificate(der).subject if der else x509.Name([])
                cn = next((str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)), "")
                line = s.recv(65536).split(b"\r\n", 1)[0].decode(errors="replace")
                body = f"{self.name} {self.sni[-1] if self.sni else ''} {line} client={cn}".encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() +
                          b"\r\nConnection: close\r\n\r\n" + body)
        except ssl.SSLError:
            with self._rejections:
                self.rejected += 1
                self._rejections.notify_all()
        except OSError:
            pass

    def wait_rejected(self, count: int, timeout: float = 5.0) -> int:
        """The refusal count once it reaches `count` or `timeout` passes: a handler thread may count a
        refused handshake after the proxy has already answered its client."""
        with self._rejections:
            self._rejections.wait_for(lambda: self.rejected >= count, timeout)
            return self.rejected
