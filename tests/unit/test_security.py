"""The CA, identities, authorization and issuance decisions, redaction, and exposure refusals."""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cilia.app import ServeOptions, check_exposure
from cilia.identity import ProxyId
from cilia.ir import model as ir
from cilia.render.dump import public_any, resource_json
from cilia.render.envoy import render_secret
from cilia.render.resources import SECRET, Resource
from cilia.security import ca as ca_mod
from cilia.security.authz import LOCAL_PEER, Authorizer, Peer, PermissionDenied
from cilia.security.issuer import IssuancePolicy, NotEntitled, TokenReview, entitle, make_issuer_app
from cilia.security.spiffe import SpiffeId

TD = "cluster.local"


def _uris(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


# -- CA directory -------------------------------------------------------------------------------------------
def test_ca_init_key_mode_trust_domain_and_refuses_overwrite(tmp_path: Path) -> None:
    ca = ca_mod.init_ca_dir(tmp_path / "ca", "mesh.test")
    key = tmp_path / "ca" / "ca-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert ca.trust_domain == "mesh.test"
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(ca_mod.CAError, match="exists already"):
        ca_mod.init_ca_dir(tmp_path / "ca")
    key.chmod(0o644)
    with pytest.raises(ca_mod.CAError, match="readable by others"):
        ca_mod.load_ca_dir(tmp_path / "ca")


def test_issued_leaf_names_the_identity_and_never_outlives_the_ca(tmp_path: Path) -> None:
    ca = ca_mod.new_ca(TD, ttl=dt.timedelta(hours=2))
    leaf = ca.issue(uris=["spiffe://cluster.local/proxy/sidecar/ns/pod"], ttl=dt.timedelta(days=30))
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    assert _uris(leaf.cert_pem) == ["spiffe://cluster.local/proxy/sidecar/ns/pod"]
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.cert)
    with pytest.raises(ca_mod.CAError):
        ca.issue()


def test_rotation_keeps_the_old_root_trusted_for_the_overlap_only(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    old = ca_mod.init_ca_dir(d)
    old_leaf = old.issue(uris=["spiffe://cluster.local/proxy/node/a"])
    new = ca_mod.rotate_ca_dir(d, overlap=dt.timedelta(hours=1))
    assert new.cert.serial_number != old.cert.serial_number and new.trust_domain == old.trust_domain
    assert [c.serial_number for c in new.bundle] == [new.cert.serial_number, old.cert.serial_number]
    x509.load_pem_x509_certificate(old_leaf.cert_pem).verify_directly_issued_by(new.bundle[1])
    assert (d / "bundle.pem").read_bytes() == new.bundle_pem
    # the overlap ends: the old root leaves the bundle
    until = next((d / "previous").glob("*.until"))
    until.write_text((dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat())
    assert [c.serial_number for c in ca_mod.load_ca_dir(d).bundle] == [new.cert.serial_number]


def test_ca_dir_source_rereads_only_on_change(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca_mod.init_ca_dir(d)
    source = ca_mod.CaDirSource(d)
    first = source()
    assert source() is first
    ca_mod.rotate_ca_dir(d)
    assert source().cert.serial_number != first.cert.serial_number


def test_secret_round_trip() -> None:
    ca = ca_mod.new_ca("a.b")
    again = ca_mod.CertificateAuthority.from_secret_data(ca.secret_data())
    assert again.cert == ca.cert and again.trust_domain == "a.b"
    other = ca_mod.new_ca("a.b")
    with pytest.raises(ca_mod.CAError, match="does not belong"):
        ca_mod.CertificateAuthority.from_secret_data({**ca.secret_data(), "ca-key.pem": ca_mod.key_pem(other.key)})


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert ca_mod.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "h", "0h", "-1h", "1.5h", "10", "3w"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        ca_mod.parse_duration(bad)


# -- identities and authorization -----------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "proxy", "workload", "admin"), [
    ("spiffe://td/proxy/node/n1", "node~n1", None, False),
    ("spiffe://td/proxy/sidecar/ns/p", "sidecar~ns/p", None, False),
    ("spiffe://td/proxy/gateway/ns/gw", "gateway~ns/gw", None, False),
    ("spiffe://td/proxy/bogus/x", None, None, False),
    ("spiffe://td/ns/shop/sa/web", None, ("shop", "web"), False),
    ("spiffe://td/admin/ops", None, None, True),
    ("spiffe://td/admin/", None, None, False),
])
def test_spiffe_id_kinds(uri: str, proxy: str | None, workload: tuple[str, str] | None, admin: bool) -> None:
    sid = SpiffeId.parse(uri)
    assert (str(sid.proxy) if sid.proxy else None) == proxy
    assert sid.workload == workload and sid.is_admin == admin


PODS = {("shop", "web-0"): "web"}
AUTHZ = Authorizer(TD, lambda ns, pod: PODS.get((ns, pod)))


@pytest.mark.parametrize(("uris", "claim", "allowed"), [
    (("spiffe://cluster.local/proxy/node/a",), "node~a", True),
    (("spiffe://cluster.local/proxy/node/a",), "node~b", False),
    (("spiffe://cluster.local/proxy/node/a",), "agent~a", False),
    (("spiffe://cluster.local/proxy/node/a",), "ingress~cilia", False),
    (("spiffe://cluster.local/proxy/gateway/ns/gw",), "gateway~ns/gw", True),
    (("spiffe://cluster.local/proxy/gateway/ns/gw",), "gateway~other/gw", False),
    (("spiffe://cluster.local/ns/shop/sa/web",), "sidecar~shop/web-0", True),
    (("spiffe://cluster.local/ns/shop/sa/web",), "sidecar~shop/unknown", False),
    (("spiffe://cluster.local/ns/shop/sa/other",), "sidecar~shop/web-0", False),
    (("spiffe://cluster.local/ns/shop/sa/web",), "node~a", False),
    # a proxyless gRPC client is entitled as the pod it is: its proxy identity or its pod's workload identity
    (("spiffe://cluster.local/proxy/grpc/shop/web-0",), "grpc~shop/web-0", True),
    (("spiffe://cluster.local/proxy/grpc/shop/web-0",), "grpc~shop/web-1", False),
    (("spiffe://cluster.local/proxy/grpc/shop/web-0",), "sidecar~shop/web-0", False),
    (("spiffe://cluster.local/proxy/sidecar/shop/web-0",), "grpc~shop/web-0", False),
    (("spiffe://cluster.local/ns/shop/sa/web",), "grpc~shop/web-0", True),
    (("spiffe://cluster.local/ns/shop/sa/other",), "grpc~shop/web-0", False),
    (("spiffe://cluster.local/ns/shop/sa/web",), "grpc~shop/unknown", False),
    (("spiffe://other.domain/proxy/node/a",), "node~a", False),
    (("spiffe://cluster.local/admin/ops",), "node~a", False),
    ((), "node~a", False),
])
def test_authorizer_table(uris: tuple[str, ...], claim: str, allowed: bool) -> None:
    peer = Peer(True, uris)
    if allowed:
        AUTHZ.check_proxy(peer, ProxyId.parse(claim))
    else:
        with pytest.raises(PermissionDenied, match=claim.replace("~", "~")):
            AUTHZ.check_proxy(peer, ProxyId.parse(claim))


def test_local_plaintext_peer_is_trusted_and_admin() -> None:
    AUTHZ.check_proxy(LOCAL_PEER, ProxyId.parse("ingress~x"))
    assert AUTHZ.is_admin(LOCAL_PEER)
    assert AUTHZ.is_admin(Peer(True, ("spiffe://cluster.local/admin/ops",)))
    assert not AUTHZ.is_admin(Peer(True, ("spiffe://cluster.local/proxy/node/a",)))
    assert not AUTHZ.is_admin(Peer(True, ("spiffe://evil/admin/ops",)))


# -- issuance (Kubernetes mode) ---------------------------------------------------------------------------------
POLICY = IssuancePolicy(trust_domain=TD)


def review(user: str, *, pod: str = "", node: str = "", audiences: tuple[str, ...] = ("cilia",),
           ok: bool = True) -> TokenReview:
    extra: dict[str, tuple[str, ...]] = {}
    if pod:
        extra["authentication.kubernetes.io/pod-name"] = (pod,)
    if node:
        extra["authentication.kubernetes.io/node-name"] = (node,)
    return TokenReview(ok, user, audiences, extra)


@pytest.mark.parametrize(("rev", "claim", "want"), [
    (review("system:serviceaccount:shop:web", pod="web-0"), "sidecar~shop/web-0",
     ("spiffe://cluster.local/proxy/sidecar/shop/web-0", "spiffe://cluster.local/ns/shop/sa/web")),
    (review("system:serviceaccount:shop:web", pod="web-1"), "sidecar~shop/web-0", "belongs to pod shop/web-1"),
    (review("system:serviceaccount:shop:web"), "sidecar~shop/web-0", "not bound to a pod"),
    (review("system:serviceaccount:other:web", pod="web-0"), "sidecar~shop/web-0", "belongs to pod other/web-0"),
    (review("system:serviceaccount:shop:web", pod="web-0"), "grpc~shop/web-0",
     ("spiffe://cluster.local/proxy/grpc/shop/web-0", "spiffe://cluster.local/ns/shop/sa/web")),
    (review("system:serviceaccount:shop:web", pod="web-1"), "grpc~shop/web-0", "belongs to pod shop/web-1"),
    (review("system:serviceaccount:shop:web"), "grpc~shop/web-0", "not bound to a pod"),
    (review("system:serviceaccount:cilia-system:cilia-node-envoy", pod="e", node="n1"), "node~n1",
     ("spiffe://cluster.local/proxy/node/n1",)),
    (review("system:serviceaccount:cilia-system:cilia-node-envoy", pod="e", node="n2"), "node~n1", "node 'n2'"),
    (review("system:serviceaccount:shop:web", pod="web-0", node="n1"), "node~n1", "may not act for node"),
    (review("system:serviceaccount:cilia-system:cilia-agent", pod="a", node="n1"), "agent~n1",
     ("spiffe://cluster.local/proxy/agent/n1",)),
    (review("system:serviceaccount:cilia-system:cilia-node-envoy", pod="e", node="n1"), "agent~n1", "may not act"),
    (review("system:serviceaccount:cilia-system:cilia-ingress"), "ingress~cilia",
     ("spiffe://cluster.local/proxy/ingress/cilia",)),
    (review("system:serviceaccount:shop:cilia-gateway"), "gateway~shop/gw", ("spiffe://cluster.local/proxy/gateway/shop/gw",)),
    (review("system:serviceaccount:shop:cilia-gateway"), "gateway~other/gw", "may not act for gateway~other/gw"),
    (review("system:serviceaccount:shop:web", pod="web-0", audiences=("https://kubernetes.default.svc",)),
     "sidecar~shop/web-0", "not for audience"),
    (review("alice"), "sidecar~shop/web-0", "not a ServiceAccount"),
    (review("system:serviceaccount:shop:web", pod="web-0", ok=False), "sidecar~shop/web-0", "not accepted"),
])
def test_entitlement_table(rev: TokenReview, claim: str, want: tuple[str, ...] | str) -> None:
    if isinstance(want, tuple):
        assert entitle(rev, ProxyId.parse(claim), POLICY) == want
    else:
        with pytest.raises(NotEntitled, match=want):
            entitle(rev, ProxyId.parse(claim), POLICY)


def _csr(key: ec.EllipticCurvePrivateKey, uri: str) -> str:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode())


async def test_issuer_signs_the_sans_it_chose_not_the_csrs() -> None:
    ca = ca_mod.new_ca(TD)
    reviews = {"good": review("system:serviceaccount:shop:web", pod="web-0")}

    async def reviewer(token: str) -> TokenReview:
        return reviews.get(token, TokenReview(False, error="invalid token"))

    app = make_issuer_app(lambda: ca, reviewer, POLICY)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(key, "spiffe://cluster.local/admin/root")  # asks for far more than it may have
    async with TestClient(TestServer(app)) as client:
        ok = await client.post("/v1/certificates", json={"proxy": "sidecar~shop/web-0", "csr": csr},
                               headers={"Authorization": "Bearer good"})
        assert ok.status == 200
        body = await ok.json()
        assert _uris(body["certificate"].encode()) == ["spiffe://cluster.local/proxy/sidecar/shop/web-0",
                                                       "spiffe://cluster.local/ns/shop/sa/web"]
        assert body["ca"] == ca.bundle_pem.decode()
        assert (await client.post("/v1/certificates", json={"proxy": "sidecar~shop/web-1", "csr": csr},
                                  headers={"Authorization": "Bearer good"})).status == 403
        assert (await client.post("/v1/certificates", json={"proxy": "sidecar~shop/web-0", "csr": csr},
                                  headers={"Authorization": "Bearer stolen"})).status == 401
        assert (await client.post("/v1/certificates", json={"proxy": "sidecar~shop/web-0", "csr": csr})).status == 401
        bad = await client.post("/v1/certificates", data=b"{not json", headers={"Authorization": "Bearer good"})
        assert bad.status == 400
        rsa_like = await client.post("/v1/certificates", json={"proxy": "sidecar~shop/web-0", "csr": "nope"},
                                     headers={"Authorization": "Bearer good"})
        assert rsa_like.status == 400 and "csr" in (await rsa_like.json())["error"]


# -- redaction -----------------------------------------------------------------------------------------------
def test_public_any_keeps_certificates_and_drops_keys() -> None:
    secret = render_secret(ir.Secret("s", certificate_chain=b"CERT", private_key=b"-----BEGIN PRIVATE KEY-----x"))
    res = Resource.of(SECRET, "s", secret)
    shown = public_any(res).SerializeToString()
    assert b"CERT" in shown and b"PRIVATE KEY" not in shown and b"[redacted]" in shown
    def key_of(doc: dict[str, Any]) -> bytes:
        return base64.b64decode(doc["tlsCertificate"]["privateKey"]["inlineBytes"])

    assert key_of(resource_json(res)) == b"[redacted]"
    assert key_of(resource_json(res, redact=False)).startswith(b"-----BEGIN PRIVATE KEY")


# -- exposure ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("opts", "refused"), [
    (ServeOptions(paths=("x",)), []),
    (ServeOptions(paths=("x",), xds_address="0.0.0.0:18000"), ["--xds 0.0.0.0:18000"]),
    (ServeOptions(paths=("x",), xds_address="[::]:18000"), ["--xds [::]:18000"]),
    (ServeOptions(paths=("x",), xds_address="0.0.0.0:18000", xds_insecure=True), []),
    (ServeOptions(paths=("x",), xds_address="localhost:18000"), []),
    (ServeOptions(paths=("x",), admin_address="0.0.0.0:19000"), ["--admin 0.0.0.0:19000"]),
    (ServeOptions(paths=("x",), admin_address="0.0.0.0:19000", admin_insecure=True), []),
    (ServeOptions(paths=("x",), xds_tls_address="0.0.0.0:18443"), ["--xds-tls needs --ca-dir"]),
    (ServeOptions(paths=("x",), xds_tls_address="0.0.0.0:18443", ca_dir="/ca"), []),
    (ServeOptions(paths=("x",), xds_address=None), ["no xDS listener"]),
])
def test_exposure_refusals(opts: ServeOptions, refused: list[str]) -> None:
    got = check_exposure(opts)
    assert len(got) == len(refused)
    for message, want in zip(got, refused, strict=True):
        assert want in message


def test_serve_refuses_plaintext_beyond_loopback_at_start(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("")
    proc = subprocess.run([sys.executable, "-m", "cilia", "serve", "-f", str(tmp_path), "--xds", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=30, env={**os.environ})
    assert proc.returncode == 2
    assert "plaintext beyond loopback" in proc.stderr and "--xds-insecure" in proc.stderr


# -- injection with mTLS ---------------------------------------------------------------------------------------
def test_injected_sidecar_gets_a_certificate_step_a_renewer_and_a_projected_token() -> None:
    from cilia.mesh.inject import InjectConfig, inject_pod_spec

    cfg = InjectConfig(xds_address="cilia.cilia-system.svc:18443", xds_tls=True,
                       ca_bundle="-----BEGIN CERTIFICATE-----")
    pod = {"metadata": {"name": "web-0", "labels": {"cilia.io/mesh": "sidecar"}},
           "spec": {"containers": [{"name": "app", "image": "app"}]}}
    out = inject_pod_spec(pod, "shop", {}, {}, cfg)
    init = {c["name"]: c for c in out["spec"]["initContainers"]}
    assert list(init) == ["cilia-bootstrap", "cilia-cert", "cilia-proxy"]
    boot = init["cilia-bootstrap"]["args"][0]
    assert boot.startswith("cilia cert --kubernetes") and "--token-file /var/run/secrets/cilia/token" in boot
    assert "&& cilia bootstrap" in boot and "--tls-dir /etc/cilia/tls" in boot
    assert "--renew" in init["cilia-cert"]["args"][0] and init["cilia-cert"]["restartPolicy"] == "Always"
    env = {e["name"]: e.get("value") for e in init["cilia-cert"]["env"]}
    assert env["CILIA_CA_BUNDLE"] == "-----BEGIN CERTIFICATE-----"
    token = next(v for v in out["spec"]["volumes"] if v["name"] == "cilia-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "cilia"
    plain = inject_pod_spec(pod, "shop", {}, {}, InjectConfig())
    assert "cilia-cert" not in {c["name"] for c in plain["spec"]["initContainers"]}
    assert "--tls-dir" not in plain["spec"]["initContainers"][0]["args"][0]


async def test_metrics_app_shows_no_debug_views() -> None:
    from cilia.obs.admin import make_admin_app

    class View:
        def healthy(self) -> bool:
            return True

        def ready(self) -> bool:
            return True

        def metrics_text(self) -> str:
            return "cilia_up 1\n"

        def proxies(self) -> dict[str, Any]:
            return {"node~a": {}}

        def proxy_config(self, proxy_id: str) -> dict[str, Any]:
            return {"secrets": ["x"]}

        def object_statuses(self) -> list[dict[str, Any]]:
            return []

        def issues(self) -> list[dict[str, Any]]:
            return []

        def agents(self) -> dict[str, Any]:
            return {}

    async with TestClient(TestServer(make_admin_app(View(), debug=False))) as client:
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/readyz")).status == 200
        for path in ("/debug/proxies", "/debug/config/node~a", "/debug/status", "/debug/security"):
            assert (await client.get(path)).status == 404, path
    async with TestClient(TestServer(make_admin_app(View()))) as client:
        assert (await client.get("/debug/config/node~a")).status == 200
