"""Ingress example: `cilia serve` + a real Envoy (`ingress~cilia`) + two local backends.

    python examples/ingress/run.py

Everything listens on 127.0.0.x. The manifests are copied to a temporary directory together with a
TLS Secret for web.example.com, signed by a CA made for this run; the script then sends a few
requests (host and path routing, the default backend, the HTTPS redirect, HTTPS with the client
verifying the certificate), rotates the certificate by rewriting the Secret, prints the Ingress
status cilia reports, and cleans up.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import http.server
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
BACKENDS = {"web": ("127.0.0.11", 18081), "api": ("127.0.0.12", 18082)}

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo_support import free_port, start_backend, stop_all, wait_until  # noqa: E402


class CA:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cilia example CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def secret(self, host: str) -> tuple[str, int]:
        """A kubernetes.io/tls Secret manifest for `host`, and the certificate's serial number."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .sign(self.key, hashes.SHA256()))
        crt = cert.public_bytes(serialization.Encoding.PEM)
        pkey = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        doc = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "web-tls", "namespace": "demo"},
               "data": {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(pkey).decode()}}
        return json.dumps(doc), cert.serial_number




def get(port: int, host: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read().decode().strip()
        return resp.status, resp.getheader("location") or body
    finally:
        conn.close()


def get_tls(port: int, host: str, path: str, ca_pem: str) -> tuple[int, str, int]:
    ctx = ssl.create_default_context(cadata=ca_pem)
    raw = socket.create_connection(("127.0.0.1", port), 5)
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        der = tls.getpeercert(binary_form=True) or b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode().strip(), x509.load_der_x509_certificate(der).serial_number


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="cilia-ingress-example-"))
    manifests = work / "manifests"
    manifests.mkdir()
    shutil.copy(HERE / "ingress.yaml", manifests / "ingress.yaml")
    ca = CA()
    secret, serial = ca.secret("web.example.com")
    (manifests / "secret.json").write_text(secret)
    servers = [start_backend(host, port, lambda req, n=name: f"{n} got {req.path} for host {req.headers.get('host')}\n")
               for name, (host, port) in BACKENDS.items()]
    xds, admin, http_port, https_port = free_port(), free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([
            sys.executable, "-m", "cilia", "--log-level", "warning", "serve", "-f", str(manifests),
            "--xds", f"127.0.0.1:{xds}", "--admin", f"127.0.0.1:{admin}", "--ingress-address", "127.0.0.1",
            "--ingress-http-port", str(http_port), "--ingress-https-port", str(https_port)]))
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).status == 200,
                   20, "cilia serve")
        bootstrap = subprocess.run([sys.executable, "-m", "cilia", "bootstrap", "--proxy", "ingress~cilia",
                                    "--xds", f"127.0.0.1:{xds}", "--admin-port", str(free_port())],
                                   check=True, capture_output=True, text=True).stdout
        (work / "envoy.yaml").write_text(bootstrap)
        envoy = shutil.which("envoy", path=str(BIN)) or "envoy"
        procs.append(subprocess.Popen([envoy, "-c", str(work / "envoy.yaml"), "--log-level", "error",
                                       "--disable-hot-restart", "--base-id", str(xds)],
                                      stdout=subprocess.DEVNULL))
        wait_until(lambda: get(http_port, "x", "/status")[0] == 200, 20, "Envoy serving the Ingress")
        print(f"Ingress listeners: http://127.0.0.1:{http_port}  https://127.0.0.1:{https_port}\n")
        for host, path in [("web.example.com", "/"), ("anything.example.org", "/status"),
                           ("anything.example.org", "/other"), ("a.apps.example.com", "/x"),
                           ("a.b.apps.example.com", "/x")]:
            status, text = get(http_port, host, path)
            print(f"http  {host:22} {path:8} -> {status} {text}")
        for path in ("/", "/api/v1", "/apis"):
            status, text, cert = get_tls(https_port, "web.example.com", path, ca.pem)
            print(f"https web.example.com      {path:8} -> {status} {text}  (certificate serial {cert:x})")
        assert cert == serial
        new_secret, new_serial = ca.secret("web.example.com")
        (manifests / "secret.json").write_text(new_secret)
        wait_until(lambda: get_tls(https_port, "web.example.com", "/", ca.pem)[2] == new_serial, 10,
                   "the rotated certificate")
        print(f"\nrotated the Secret: now serving certificate serial {new_serial:x} (same Envoy process)")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/debug/status", timeout=5) as resp:
            for s in json.load(resp):
                print(f"status {s['kind']} {s['metadata']['namespace']}/{s['metadata']['name']}: "
                      f"{json.dumps(s['status'])}")
        return 0
    except (urllib.error.URLError, AssertionError) as exc:
        print(f"example failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        stop_all(procs, servers, work)


if __name__ == "__main__":
    sys.exit(main())
