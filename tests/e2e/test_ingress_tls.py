"""Ingress TLS through a real Envoy: certificates from a CA made in the test, verified by the client
for the SNI name it asked for; force-https redirects; a Secret rotated in the manifests is served by
the same Envoy process; a malformed Secret leaves its host plain-HTTP only, with an issue."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cilia.translate.context import TranslateOptions
from support.backends import EchoBackend, echo_backends
from support.certs import Pem, TestCA, serial_of, serial_of_pem, tls_secret
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e


class SniConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 while asking for (and verifying) the certificate of `sni`."""

    def __init__(self, address: str, port: int, sni: str, context: ssl.SSLContext) -> None:
        super().__init__(sni, port, context=context, timeout=5)
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


@dataclass
class Tls:
    http: str
    https_port: int
    ca: TestCA
    md: ManifestDir
    cp: ControlPlaneThread
    envoy: Envoy
    backend: EchoBackend

    def fetch(self, sni: str, path: str = "/") -> tuple[int, dict[str, Any], int]:
        """(status, echoed request, serial of the certificate the server presented)."""
        ctx = ssl.create_default_context(cadata=self.ca.pem.decode())
        conn = SniConnection("127.0.0.1", self.https_port, sni, ctx)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            cert = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            assert cert is not None
            return resp.status, json.loads(body) if resp.status == 200 else {}, serial_of(cert)
        finally:
            conn.close()


def ingresses(secure_hosts: list[str]) -> list[str]:
    def rule(host: str) -> dict[str, object]:
        return {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
            "service": {"name": "app", "port": {"number": 80}}}}]}}

    secure = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
              "metadata": {"name": "secure", "namespace": "default",
                           "annotations": {"ingress.cilia.io/force-https": "true"}},
              "spec": {"ingressClassName": "cilia",
                       "tls": [{"hosts": [h], "secretName": h.split(".")[0] + "-tls"} for h in secure_hosts],
                       "rules": [rule(h) for h in secure_hosts]}}
    broken = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
              "metadata": {"name": "broken", "namespace": "default",
                           "annotations": {"ingress.cilia.io/force-https": "true"}},
              "spec": {"ingressClassName": "cilia", "tls": [{"hosts": ["c.example.com"], "secretName": "c-tls"}],
                       "rules": [rule("c.example.com")]}}
    return [json.dumps(secure), json.dumps(broken)]


def write_all(md: ManifestDir, backend: EchoBackend, certs: dict[str, Pem]) -> None:
    md.write("all.yaml", docs(
        service("app", 80, vip="127.96.3.1"), endpoint_slice("app", [(backend.host, backend.port)]),
        *[tls_secret(f"{name}-tls", pem) for name, pem in certs.items()],
        tls_secret("c-tls", crt=b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n",
                   key=b"garbage"),
        *ingresses(["a.example.com", "b.example.com"]),
    ))


@pytest.fixture(scope="module")
def tls() -> Iterator[Tls]:
    md = ManifestDir()
    ca = TestCA()
    with echo_backends(("app", "127.0.0.2")) as (backend,):
        write_all(md, backend, {"a": ca.issue("a.example.com"), "b": ca.issue("b.example.com")})
        http_port, https_port = free_port(), free_port()
        opts = TranslateOptions(ingress_address="127.0.0.1", ingress_http_port=http_port,
                                ingress_https_port=https_port)
        cp = ControlPlaneThread([str(md.path)], translate=opts).start()
        envoy = Envoy("ingress~cilia", cp.xds_port)
        try:
            envoy.start()
            t = Tls(f"http://127.0.0.1:{http_port}", https_port, ca, md, cp, envoy, backend)
            envoy.wait_for(lambda: t.fetch("a.example.com")[0] == 200, what="https serving")
            yield t
        finally:
            envoy.stop()
            cp.stop()
            md.cleanup()


def test_sni_picks_the_right_verified_certificate(tls: Tls) -> None:
    secrets = {s["name"]: s for s in tls.cp.admin_json("/debug/config/ingress~cilia")["secrets"]}
    for host in ("a.example.com", "b.example.com"):
        status, seen, serial = tls.fetch(host, "/hello")
        assert status == 200 and seen["path"] == "/hello"
        assert seen["headers"]["x-forwarded-proto"] == "https"
        chain = secrets[f"default/{host.split('.')[0]}-tls"]["tlsCertificate"]["certificateChain"]
        pem = base64.b64decode(chain["inlineBytes"])
        assert serial == serial_of_pem(pem)
    # No certificate is handed out for a name no TLS entry lists (no filter chain matches that SNI).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls.fetch("unknown.example.com")
    # Verification is real: a client trusting another CA refuses the certificate.
    stranger = ssl.create_default_context(cadata=TestCA("other CA").pem.decode())
    with socket.create_connection(("127.0.0.1", tls.https_port), 5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            with stranger.wrap_socket(raw, server_hostname="a.example.com"):
                pass


def test_force_https_redirect_and_bad_secret(tls: Tls) -> None:
    r = get(tls.http + "/p?q=1", {"Host": "a.example.com"})
    assert r.status == 301
    assert r.headers["location"] == f"https://a.example.com:{tls.https_port}/p?q=1"
    # c.example.com's Secret is malformed: not served over TLS, not redirected, served over HTTP.
    r = get(tls.http + "/c", {"Host": "c.example.com"})
    assert r.status == 200 and r.json()["path"] == "/c"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls.fetch("c.example.com")
    issues = [i for i in tls.cp.admin_json("/debug/issues") if i["object"] == "Ingress default/broken"]
    assert [(i["field"], i["severity"]) for i in issues] == [("spec.tls[0].secretName", "error")]
    assert "c.example.com not served over TLS" in issues[0]["message"]


def test_rotated_secret_served_without_restart(tls: Tls) -> None:
    pid = tls.envoy.proc.pid if tls.envoy.proc else None
    modified = tls.envoy.stats("listener_manager.listener_modified")
    assert "listener_manager.listener_modified" in modified
    _, _, old_serial = tls.fetch("a.example.com")
    new = tls.ca.issue("a.example.com")
    write_all(tls.md, tls.backend, {"a": new, "b": tls.ca.issue("b.example.com")})
    tls.envoy.wait_for(lambda: tls.fetch("a.example.com")[2] == serial_of_pem(new.cert), timeout=5,
                       what="rotated certificate served")
    assert serial_of_pem(new.cert) != old_serial
    assert tls.envoy.proc is not None and tls.envoy.proc.pid == pid and tls.envoy.proc.poll() is None
    # Only the SDS secret changed: the listener was not replaced (no drain of open connections).
    assert tls.envoy.stats("listener_manager.listener_modified") == modified
    assert tls.fetch("b.example.com")[0] == 200
