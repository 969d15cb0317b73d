"""Mesh mTLS and L7 policy through real sidecar Envoys (no eBPF; the whole hop sidecar -> sidecar, and
node mode, run in tests/kernel/test_system_mesh_mtls_kernel.py).

As in test_mesh_envoy.py, nothing restores original destinations here, so listeners are bound where a
redirected connection would land. Every sidecar of a namespace binds its outbound listener on the same
VIP:port, so each test runs one side of the hop against a Python peer holding a certificate the same
CA issued (`cilia ca init` directory; the control plane issues the sidecars' workload certificates and
serves them over SDS):

* inbound: the server sidecar's inbound listener on its pod IP at the app's port; a Python mTLS client
  with a workload certificate of `client-sa` or `other-sa` (or none: plaintext) -> the app on 127.0.0.1;
* outbound: the client sidecar's outbound listener on the Service VIP; its cluster dials the endpoint
  (a mesh pod's IP), where a Python TLS server requiring client certificates records who came.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from cilia.security.ca import CertificateAuthority, init_ca_dir, load_ca_dir, new_ca
from cilia.translate.context import TranslateOptions
from support.backends import EchoBackend, echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.controlplane import policy_denials as denials
from support.envoy import Envoy
from support.net import free_port

pytestmark = pytest.mark.e2e

TD = "mesh.test"
VIP = "127.96.0.30"
CLIENT_IP, OTHER_IP, SERVER_IP, LEGACY_IP = "127.1.0.31", "127.1.0.32", "127.1.0.33", "127.0.0.34"
TYPES = ("listeners", "clusters", "secrets")  # and whatever else was sent
SETTLE_S = 2.0  # a policy change must be in force within this


def _json_docs(*objs: dict[str, Any]) -> str:
    return "\n---\n".join(json.dumps(o) for o in objs) + "\n"


def namespace(mtls: str | None) -> dict[str, Any]:
    annotations = {"cilia.io/mtls": mtls} if mtls else {}
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "pay", "labels": {"cilia.io/mesh": "sidecar"}, "annotations": annotations}}


def pod(name: str, ip: str, sa: str, app: str, ports: list[dict[str, Any]] | None = None,
        ns: str = "pay") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": "n1", "serviceAccountName": sa,
                     "containers": [{"name": "app", "image": "app", "ports": ports or []}]},
            "status": {"phase": "Running", "podIP": ip}}


def service(name: str, vip: str, port: int, target: int, selector: str, backend_ip: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "pay"},
             "spec": {"clusterIP": vip, "selector": {"app": selector},
                      "ports": [{"name": "http", "port": port, "targetPort": target}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-1", "namespace": "pay", "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4", "ports": [{"name": "http", "port": target}],
             "endpoints": [{"addresses": [backend_ip], "conditions": {"ready": True}}]}]


DENY_OTHER = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "server-no-other", "namespace": "pay"},
              "spec": {"endpointSelector": {"matchLabels": {"app": "server"}},
                       "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "other"}}]}]}}


def allow_get_public(port: int) -> dict[str, Any]:
    """GET /public from app=client only."""
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "server-public", "namespace": "pay"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                  "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}],
                                               "rules": {"http": [{"method": "GET", "path": "/public"}]}}]}]}}


@dataclass
class Mesh:
    md: ManifestDir
    ca_dir: Path
    port: int  # Service port = capture port
    app_port: int  # the server's container port = the sidecar inbound port here

    @property
    def ca(self) -> CertificateAuthority:
        return load_ca_dir(self.ca_dir)

    def control_plane(self, **serve: Any) -> ControlPlaneThread:
        opts = TranslateOptions(mesh_capture_port=self.port, mesh_sidecar_capture_address=VIP,
                                mesh_inbound_address="pod-ip", mesh_inbound_port=self.app_port)
        return ControlPlaneThread([str(self.md.path)], translate=opts, ca_dir=str(self.ca_dir), xds_tls=False,
                                  **serve).start()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    md = ManifestDir()
    ca_dir = tmp_path / "ca"
    init_ca_dir(ca_dir, TD)
    try:
        yield Mesh(md, ca_dir, free_port(), free_port())
    finally:
        md.cleanup()


def synced(cp: ControlPlaneThread, proxy: str, newer_than: str = "") -> bool:
    p = cp.admin_json("/debug/proxies").get(proxy)
    if not p or not p["connected"]:
        return False
    types = p["types"]
    for t in types.values():
        if t["state"] == "NACKED":
            raise AssertionError(f"{proxy} NACKed: {t['last_nack']}")
    if newer_than and types.get("listeners", {}).get("version_acked") == newer_than:
        return False
    return all(t in types for t in TYPES) and all(t["state"] == "SYNCED" for t in types.values())


def listeners_version(cp: ControlPlaneThread, proxy: str) -> str:
    return str(cp.admin_json("/debug/proxies")[proxy]["types"]["listeners"]["version_acked"])


def start(cp: ControlPlaneThread, proxy: str) -> Envoy:
    envoy = Envoy(proxy, cp.xds_port).start()
    try:
        envoy.wait_for(lambda: synced(cp, proxy), timeout=20, what=f"{proxy} synced")
        active(envoy)
    except BaseException:
        envoy.stop()
        raise
    return envoy


def active(envoy: Envoy) -> None:
    envoy.wait_for(lambda: envoy.stats("warming").get("listener_manager.total_listeners_warming") == 0,
                   what="listeners active")


def workload_files(ca: CertificateAuthority, sa: str, where: Path) -> tuple[Path, Path, Path]:
    leaf = ca.issue(uris=[f"spiffe://{TD}/ns/pay/sa/{sa}"], ttl=dt.timedelta(hours=1), server=True, client=True)
    cert, key, bundle = where / f"{sa}.pem", where / f"{sa}-key.pem", where / "bundle.pem"
    cert.write_bytes(leaf.cert_pem)
    key.write_bytes(leaf.key_pem)
    bundle.write_bytes(ca.bundle_pem)
    return cert, key, bundle


def mtls_client(ca: CertificateAuthority, sa: str | None, where: Path) -> ssl.SSLContext:
    """A mesh peer's TLS context: the CA's roots, and (unless `sa` is None) a workload certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False  # peers are identified by SPIFFE URI SANs, checked by the test
    ctx.load_verify_locations(cadata=ca.bundle_pem.decode())
    if sa is not None:
        cert, key, _ = workload_files(ca, sa, where)
        ctx.load_cert_chain(cert, key)
    return ctx


def call(method: str, host: str, port: int, path: str, ctx: ssl.SSLContext | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=5, context=ctx) \
        if ctx is not None else http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        try:
            return resp.status, dict(json.loads(body))
        except ValueError:
            return resp.status, {"text": body.decode(errors="replace")}
    finally:
        conn.close()


def uri_of(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                .get_values_for_type(x509.UniformResourceIdentifier))


# -- inbound: the server sidecar ------------------------------------------------------------------------
def test_inbound_terminates_mtls_sets_xfcc_and_enforces_policy(mesh: Mesh, tmp_path: Path) -> None:
    with echo_backends(("app", "127.0.0.1")) as (app,):
        mesh.app_port = app.port

        def write(mtls: str, client_app: str = "client", policy: bool = True) -> None:
            mesh.md.write("mesh.yaml", _json_docs(
                namespace(mtls), pod("client", CLIENT_IP, "client-sa", client_app),
                pod("other", OTHER_IP, "other-sa", "other"),
                pod("server", SERVER_IP, "server-sa", "server", [{"name": "http", "containerPort": app.port}]),
                *([allow_get_public(app.port), DENY_OTHER] if policy else [])))

        write("permissive", policy=False)
        cp = mesh.control_plane()
        server = None
        try:
            server = start(cp, "sidecar~pay/server")
            ca = mesh.ca
            as_client, as_other = mtls_client(ca, "client-sa", tmp_path), mtls_client(ca, "other-sa", tmp_path)

            # mTLS from a workload of the trust domain: the app sees the verified identity.
            status, body = call("GET", SERVER_IP, app.port, "/hello", as_client,
                                {"x-forwarded-client-cert": "URI=spiffe://forged/ns/x/sa/y"})
            assert status == 200 and body["backend"] == "app" and body["path"] == "/hello", body
            xfcc = body["headers"]["x-forwarded-client-cert"]
            assert f"URI=spiffe://{TD}/ns/pay/sa/client-sa" in xfcc and "forged" not in xfcc, xfcc
            stats = server.stats("ssl.handshake")
            assert stats.get(f"listener.{SERVER_IP}_{app.port}.ssl.handshake", 0) >= 1, stats
            # The sidecar proves its own identity: the server certificate is server-sa's, from this CA.
            with ssl.create_connection((SERVER_IP, app.port), timeout=5) as raw, \
                    as_client.wrap_socket(raw) as tls:
                peer = tls.getpeercert(binary_form=True)
                assert peer is not None and uri_of(peer) == [f"spiffe://{TD}/ns/pay/sa/server-sa"]
            # A certificate from another CA is refused in the handshake.
            foreign = new_ca(TD)
            stranger = mtls_client(ca, None, tmp_path)
            cert, key, _ = workload_files(foreign, "client-sa", Path(tempfile.mkdtemp(dir=tmp_path)))
            stranger.load_cert_chain(cert, key)
            with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
                call("GET", SERVER_IP, app.port, "/stranger", stranger)

            # Permissive: plaintext is accepted, without identity (a forged header is removed).
            status, body = call("GET", SERVER_IP, app.port, "/plain", None,
                                {"x-forwarded-client-cert": "URI=spiffe://forged/ns/x/sa/y"})
            assert status == 200 and "x-forwarded-client-cert" not in body["headers"], body

            # Policy: GET /public from app=client only.
            version = listeners_version(cp, "sidecar~pay/server")
            write("permissive")
            server.wait_for(lambda: synced(cp, "sidecar~pay/server", version), timeout=10, what="policy")
            active(server)
            assert call("GET", SERVER_IP, app.port, "/public", as_client)[0] == 200
            assert call("POST", SERVER_IP, app.port, "/public", as_client)[0] == 403
            assert call("GET", SERVER_IP, app.port, "/private", as_client)[0] == 403
            assert call("GET", SERVER_IP, app.port, "/public", as_other)[0] == 403
            assert call("GET", SERVER_IP, app.port, "/public", None)[0] == 403  # plaintext: no identity
            denied = server.stats("rbac")
            assert denied.get(f"http.inbound_{app.port}.rbac.policy_default_deny.denied", 0) == 3, denied
            assert denied.get(f"http.inbound_{app.port}.rbac.policy_deny.denied", 0) == 1, denied  # deny wins
            st = [s for s in cp.admin_json("/debug/status") if s["kind"] == "CiliumNetworkPolicy"]
            assert [(s["metadata"]["name"], s["status"]["selectedPods"], s["status"]["enforcedPods"]) for s in st] \
                == [("server-no-other", 1, 1), ("server-public", 1, 1)], st
            # cilia counts the denials per policy from the inbound proxy's denial log.
            public, no_other = "CiliumNetworkPolicy pay/server-public", "CiliumNetworkPolicy pay/server-no-other"
            server.wait_for(lambda: denials(cp) == {(public, "default-deny"): 3, (no_other, "default-deny"): 3,
                                                    (no_other, "deny"): 1}, timeout=5, what="denials counted")
            assert st[0]["status"]["conditions"][0]["status"] == "True"

            # A label change on the client pod flips the outcome within SETTLE_S.
            write("permissive", client_app="not-client")
            t0 = time.monotonic()
            while call("GET", SERVER_IP, app.port, "/public", as_client)[0] != 403:
                assert time.monotonic() - t0 < SETTLE_S, "label change not enforced in time"
                time.sleep(0.05)
            write("permissive", client_app="client")
            t0 = time.monotonic()
            while call("GET", SERVER_IP, app.port, "/public", as_client)[0] != 200:
                assert time.monotonic() - t0 < SETTLE_S, "label change back not enforced in time"
                time.sleep(0.05)

            # Strict: plaintext is refused; mTLS still passes (and the policy still applies).
            version = listeners_version(cp, "sidecar~pay/server")
            write("strict")
            server.wait_for(lambda: synced(cp, "sidecar~pay/server", version), timeout=10, what="strict")
            active(server)
            with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
                call("GET", SERVER_IP, app.port, "/plain-refused")
            assert call("GET", SERVER_IP, app.port, "/public", as_client)[0] == 200
            refused = server.stats("plaintext_refused")
            assert refused.get(f"tcp.inbound_{app.port}_plaintext_refused.downstream_cx_total", 0) >= 1, refused
            assert not any(r["path"] == "/plain-refused" for r in app.requests)
        finally:
            if server is not None:
                server.stop()
            cp.stop()


# -- outbound: the client sidecar -----------------------------------------------------------------------
def tls_server_context(ca: CertificateAuthority, sa: str, where: Path) -> ssl.SSLContext:
    """A mesh server: requires a client certificate of the CA, presents `sa`'s, offers the cilia ALPNs."""
    cert, key, bundle = workload_files(ca, sa, where)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(bundle)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["cilia-http/1.1", "cilia-h2", "cilia-tcp"])
    return ctx


def test_outbound_wraps_mesh_endpoints_in_mtls_with_the_source_identity(mesh: Mesh, tmp_path: Path) -> None:
    ca = mesh.ca
    server = EchoBackend("server", SERVER_IP, tls=tls_server_context(ca, "server-sa", tmp_path)).start()
    legacy = EchoBackend("legacy", LEGACY_IP).start()  # not a mesh pod: plaintext, as before
    mesh.app_port = server.port
    # One Service, two endpoints: a mesh pod (mTLS) and an address outside the mesh (plaintext, as before).
    svc, mesh_slice = service("server", VIP, mesh.port, server.port, "server", SERVER_IP)
    _, legacy_slice = service("server", VIP, mesh.port, legacy.port, "server", LEGACY_IP)
    legacy_slice["metadata"]["name"] = "server-legacy"
    mesh.md.write("mesh.yaml", _json_docs(
        namespace(None), pod("client", CLIENT_IP, "client-sa", "client"),
        pod("server", SERVER_IP, "server-sa", "server", [{"name": "http", "containerPort": server.port}]),
        svc, mesh_slice, legacy_slice))
    cp = mesh.control_plane()
    client = None
    try:
        client = start(cp, "sidecar~pay/client")
        answered = [call("GET", VIP, mesh.port, f"/r{i}") for i in range(6)]
        assert all(status == 200 for status, _ in answered), answered
        assert {body["backend"] for _, body in answered} == {"server", "legacy"}  # round robin over both
        seen = server.requests[-1]
        assert uri_of(seen["peer_cert"]) == [f"spiffe://{TD}/ns/pay/sa/client-sa"]
        assert seen["alpn"] == "cilia-http/1.1"
        assert legacy.requests and all("alpn" not in r for r in legacy.requests)  # plaintext HTTP
        stats = client.stats("ssl.handshake")
        assert stats.get(f"cluster.pay/server_{mesh.port}|mtls.ssl.handshake", 0) >= 1, stats

        ids = cp.admin_json("/debug/identities")
        assert ids["mesh_mtls"] is True and ids["trust_domain"] == TD
        mine = ids["proxies"]["sidecar~pay/client"]
        assert [i["identity"] for i in mine] == [f"spiffe://{TD}/ns/pay/sa/client-sa"]
        assert mine[0]["serial"] == f"{x509.load_der_x509_certificate(seen['peer_cert']).serial_number:x}"
        # `cilia status` lists it, with its expiry.
        out = subprocess.run([sys.executable, "-m", "cilia", "status", "--admin", f"127.0.0.1:{cp.admin_port}"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        assert f"MESH mTLS: on (trust domain {TD})" in out, out
        row = next(line.split() for line in out.splitlines() if line.startswith("sidecar~pay/client ") and
                   "spiffe://" in line)
        assert row[1:4] == [f"spiffe://{TD}/ns/pay/sa/client-sa", mine[0]["not_after"], mine[0]["serial"]], out
    finally:
        if client is not None:
            client.stop()
        cp.stop()
        server.stop()
        legacy.stop()


def test_rotation_during_a_request_loop_fails_nothing(mesh: Mesh, tmp_path: Path) -> None:
    """Workload certificates of 3 s are renewed every 2 s while requests flow: none fails, long-lived
    connections survive, new handshakes present the new certificate."""
    ca = mesh.ca
    server = EchoBackend("server", SERVER_IP, tls=tls_server_context(ca, "server-sa", tmp_path)).start()
    mesh.app_port = server.port
    mesh.md.write("mesh.yaml", _json_docs(
        namespace(None), pod("client", CLIENT_IP, "client-sa", "client"),
        pod("server", SERVER_IP, "server-sa", "server", [{"name": "http", "containerPort": server.port}]),
        *service("server", VIP, mesh.port, server.port, "server", SERVER_IP)))
    cp = mesh.control_plane(workload_cert_ttl_s=3.0)
    client = None
    try:
        client = start(cp, "sidecar~pay/client")
        kept = http.client.HTTPConnection(VIP, mesh.port, timeout=5)  # one downstream connection throughout
        failures, done = [], 0
        deadline = time.monotonic() + 7.0
        while time.monotonic() < deadline and done < 2000:
            try:
                status, _ = call("GET", VIP, mesh.port, f"/new/{done}", headers={"x-close": "1"})
                kept.request("GET", f"/kept/{done}")
                resp = kept.getresponse()
                resp.read()
                if status != 200 or resp.status != 200:
                    failures.append((done, status, resp.status))
            except (OSError, http.client.HTTPException) as exc:
                failures.append((done, repr(exc)))
            done += 2
            time.sleep(0.02)
        kept.close()
        assert done >= 50 and failures == [], failures[:5]
        serials = {x509.load_der_x509_certificate(r["peer_cert"]).serial_number for r in server.requests}
        assert len(serials) >= 3, f"expected renewals every 2 s, saw {len(serials)} certificate(s)"
        assert cp.cp is not None and cp.cp.workloads.issued_total >= 3
        updates = client.stats("sds.cilia-workload.update_success").get("sds.cilia-workload.update_success", 0)
        assert updates >= 3
    finally:
        if client is not None:
            client.stop()
        cp.stop()
        server.stop()
