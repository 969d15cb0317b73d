"""Mesh mTLS and policy units: workload certificates (issue, reuse, renewal, CA rotation), policy parsing
and compilation (label changes, default deny), endpoint mTLS tags, namespace modes, the node inbound
capture in the agent's policy and plan."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from cilia.api import redirect_v1 as api
from cilia.bpf.policy import Endpoint, InboundPlan, build_plan
from cilia.identity import ProxyId
from cilia.ir.model import TRUST_BUNDLE_SECRET, Bundle, MeshIR, ProxyScope, WorkloadCert
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import InputSnapshot
from cilia.render.resources import REDIRECT_POLICY
from cilia.render.world import render_world
from cilia.security.ca import CaDirSource, init_ca_dir, rotate_ca_dir
from cilia.security.workload import WorkloadCertificates
from cilia.translate import translate
from cilia.translate.context import TranslateOptions
from cilia.translate.policy import compile_policies
from cilia.translate.services import translate_services

TD = "unit.test"
MTLS = TranslateOptions(mesh_trust_domain=TD)


def snapshot(text: str) -> InputSnapshot:
    parsed = parse_text(text, "test.yaml")
    assert parsed.ok and not parsed.issues, parsed.issues
    return InputSnapshot.of(parsed.objects)


def docs(*objs: dict[str, Any]) -> str:
    return "\n---\n".join(yaml.safe_dump(o) for o in objs)


def pod(ns: str, name: str, ip: str, sa: str = "", labels: dict[str, str] | None = None, node: str = "n1",
        ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "c", "image": "i", "ports": ports or []}]}
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns,
                                                           "labels": labels or {"app": name}},
            "spec": spec, "status": {"phase": "Running", "podIP": ip}}


def ns(name: str, mode: str, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"cilia.io/mesh": mode}, "annotations": annotations}}


# -- workload certificates ------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _model(*certs: WorkloadCert, key: str = "b") -> MeshIR:
    return MeshIR((Bundle(key, ProxyScope(frozenset({"sidecar"}), frozenset({"ns/p"})), workload_certs=certs),))


def _uri(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                .get_values_for_type(x509.UniformResourceIdentifier))


def test_workload_certificates_issue_reuse_renew_and_rotate(tmp_path: Path) -> None:
    init_ca_dir(tmp_path / "ca", TD)
    clock = Clock()
    wc = WorkloadCertificates(CaDirSource(tmp_path / "ca"), dt.timedelta(hours=3), clock)
    want = WorkloadCert("cilia-workload", "shop", "web")
    out = wc.apply(_model(want))
    extra = [b for b in out.bundles if b.key == "b|workload-certs"]
    assert len(extra) == 1 and extra[0].scope == out.bundles[0].scope
    secrets = {s.name: s for s in extra[0].secrets}
    assert set(secrets) == {"cilia-workload", TRUST_BUNDLE_SECRET}
    assert _uri(secrets["cilia-workload"].certificate_chain) == [f"spiffe://{TD}/ns/shop/sa/web"]
    assert secrets["cilia-workload"].private_key.startswith(b"-----BEGIN PRIVATE KEY")
    assert secrets[TRUST_BUNDLE_SECRET].trusted_ca == (tmp_path / "ca" / "bundle.pem").read_bytes()
    first = secrets["cilia-workload"].certificate_chain

    # Reused until 2/3 of its life, then renewed; `due` and `next_check` say when.
    clock.now += 3600
    assert not wc.due()
    assert wc.next_check() == pytest.approx(5.0)  # polls the CA meanwhile
    again = {s.name: s for b in wc.apply(_model(want)).bundles for s in b.secrets}
    assert again["cilia-workload"].certificate_chain == first and wc.issued_total == 1
    clock.now += 3601
    assert wc.due()
    renewed = {s.name: s for b in wc.apply(_model(want)).bundles for s in b.secrets}
    assert renewed["cilia-workload"].certificate_chain != first and wc.issued_total == 2
    assert not wc.due()

    # A rotated CA: every certificate is reissued by the new one, and the bundle carries both roots.
    rotate_ca_dir(tmp_path / "ca")
    assert wc.due()
    rotated = {s.name: s for b in wc.apply(_model(want)).bundles for s in b.secrets}
    assert wc.issued_total == 3
    assert len(x509.load_pem_x509_certificates(rotated[TRUST_BUNDLE_SECRET].trusted_ca)) == 2

    # Shared by bundles naming the same ServiceAccount; forgotten when nobody names it.
    two = wc.apply(MeshIR((*_model(want, key="a").bundles, *_model(want, key="b").bundles)))
    chains = {s.certificate_chain for b in two.bundles for s in b.secrets if s.name == "cilia-workload"}
    assert len(chains) == 1 and wc.issued_total == 3
    wc.apply(MeshIR())
    assert wc.summary()["certificates"] == [] and not wc.due()


def test_served_identities_per_proxy(tmp_path: Path) -> None:
    init_ca_dir(tmp_path / "ca", TD)
    wc = WorkloadCertificates(CaDirSource(tmp_path / "ca"))
    node = Bundle("mesh/node/n1", ProxyScope(frozenset({"node"}), frozenset({"n1"})), workload_certs=(
        WorkloadCert("cilia-workload/a/x", "a", "x"), WorkloadCert("cilia-workload/b/y", "b", "y")))
    wc.apply(MeshIR((node,)))
    proxy = ProxyId.parse("node~n1")
    served = wc.served_by(lambda s: s.matches(proxy.role, proxy.name, {}))
    assert [(s.secret, s.uri) for s in served] == [("cilia-workload/a/x", f"spiffe://{TD}/ns/a/sa/x"),
                                                  ("cilia-workload/b/y", f"spiffe://{TD}/ns/b/sa/y")]
    assert wc.served_by(lambda s: s.matches("node", "n2", {})) == []


# -- policy parsing ---------------------------------------------------------------------------------------
def cnp(spec: dict[str, Any], name: str = "p", namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.mark.parametrize(("spec", "field"), [
    ({"ingress": []}, "spec"),
    ({"endpointSelector": {"matchLabels": "x"}}, "spec.endpointSelector.matchLabels"),
    ({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "70000"}]}]}]},
     "spec.ingress[0].toPorts[0].ports[0].port"),
    ({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "http_x"}]}]}]},
     "spec.ingress[0].toPorts[0].ports[0].port"),
    ({"endpointSelector": {}, "ingressDeny": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {
        "http": [{"path": "/"}]}}]}]}, "spec.ingressDeny[0].toPorts[0].rules"),
    ({"endpointSelector": {}, "ingress": [{"toPorts": [{"rules": {"http": [{"path": "(?=x)"}]}}]}]},
     "spec.ingress[0].toPorts[0].rules.http[0].path"),
    ({"endpointSelector": {}, "ingress": [{"fromEntities": ["everyone"]}]}, "spec.ingress[0].fromEntities[0]"),
])
def test_invalid_policies_are_rejected_naming_the_field(spec: dict[str, Any], field: str) -> None:
    parsed = parse_text(docs(cnp(spec)), "p.yaml")
    assert parsed.rejected == (("CiliumNetworkPolicy", "shop", "p"),)
    assert any(i.field == field for i in parsed.issues), parsed.issues


def _allowed_peers(snap: InputSnapshot, key: str) -> list[str]:
    authz = compile_policies(snap, MTLS).by_pod[key]
    return sorted(p.value for r in authz.allow for p in r.peers)


def test_peers_follow_pod_labels() -> None:
    policy = cnp({"endpointSelector": {"matchLabels": {"app": "web"}},
                  "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "client"}}]}]})
    base = [ns("shop", "sidecar"), pod("shop", "web", "127.1.0.1", "web"), policy]
    before = snapshot(docs(*base, pod("shop", "a", "127.1.0.2", "a-sa", {"role": "client"}),
                           pod("shop", "b", "127.1.0.3", "b-sa", {"role": "other"})))
    assert _allowed_peers(before, "shop/web") == [f"spiffe://{TD}/ns/shop/sa/a-sa"]
    after = snapshot(docs(*base, pod("shop", "a", "127.1.0.2", "a-sa", {"role": "other"}),
                          pod("shop", "b", "127.1.0.3", "b-sa", {"role": "client"})))
    assert _allowed_peers(after, "shop/web") == [f"spiffe://{TD}/ns/shop/sa/b-sa"]


def test_default_deny_follows_cilium() -> None:
    pods = [ns("shop", "sidecar"), pod("shop", "a", "127.1.0.1"), pod("shop", "b", "127.1.0.2"),
            pod("shop", "c", "127.1.0.3")]
    snap = snapshot(docs(*pods,
                         cnp({"endpointSelector": {"matchLabels": {"app": "a"}}, "ingress": [{}]}, "a"),
                         cnp({"endpointSelector": {"matchLabels": {"app": "b"}},
                              "enableDefaultDeny": {"ingress": False},
                              "ingressDeny": [{"toPorts": [{"ports": [{"port": "22"}]}]}]}, "b"),
                         cnp({"endpointSelector": {"matchLabels": {"app": "c"}}, "egress": [{}]}, "c")))
    by_pod = compile_policies(snap, MTLS).by_pod
    assert by_pod["shop/a"].default_deny and by_pod["shop/a"].allow == ()  # `{}` allows nothing
    assert not by_pod["shop/b"].default_deny and by_pod["shop/b"].deny[0].ports == ((22, 22),)
    assert by_pod["shop/c"].default_deny is False and by_pod["shop/c"].allow == ()  # egress only: no ingress effect


def test_without_mtls_policies_still_compile_and_say_what_is_missing() -> None:
    snap = snapshot(docs(ns("shop", "node"), pod("shop", "a", "127.1.0.1"), pod("shop", "b", "127.1.0.2"),
                         cnp({"endpointSelector": {"matchLabels": {"app": "a"}},
                              "ingress": [{"fromEndpoints": [{}]}]})))
    compiled = compile_policies(snap, TranslateOptions())
    assert compiled.by_pod["shop/a"].allow == () and compiled.by_pod["shop/a"].default_deny
    (status,) = compiled.statuses
    assert status.status["selectedPods"] == 1 and status.status["enforcedPods"] == 0  # node mode needs mTLS
    assert any("no identity" in n for n in status.status["notEnforced"])
    assert any("without a mesh inbound proxy" in i.message for i in compiled.issues)


# -- mesh translation ---------------------------------------------------------------------------------------
def test_endpoints_are_tagged_for_mtls_only_with_a_trust_domain() -> None:
    text = docs(ns("pay", "sidecar"), ns("shop", "node"), pod("pay", "s", "127.1.0.1"), pod("shop", "n", "127.1.0.2"),
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "pay"},
                 "spec": {"clusterIP": "127.96.0.1", "ports": [{"name": "http", "port": 80}]}},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "x-1", "namespace": "pay", "labels": {"kubernetes.io/service-name": "x"}},
                 "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                 "endpoints": [{"addresses": [a]} for a in ("127.1.0.1", "127.1.0.2", "127.0.0.9")]})
    snap = snapshot(text)
    tags = {e.address: e.mesh_tls for loc in translate_services(snap, MTLS).endpoints["pay/x:80"].localities
            for e in loc.endpoints}
    assert tags == {"127.1.0.1": "sidecar", "127.1.0.2": "node/n1", "127.0.0.9": ""}
    plain = translate_services(snap, TranslateOptions()).endpoints["pay/x:80"]
    assert {e.mesh_tls for loc in plain.localities for e in loc.endpoints} == {""}


def test_bad_mtls_annotation_is_reported_and_the_default_used() -> None:
    snap = snapshot(docs(ns("pay", "sidecar", **{"cilia.io/mtls": "sometimes"}), pod("pay", "s", "127.1.0.1",
                                                                                     ports=[{"containerPort": 80}])))
    result = translate(snap, MTLS)
    assert [i.field for i in result.issues] == ["metadata.annotations.cilia.io/mtls"]
    world = render_world(result.ir)
    chains = [fc.name for b in result.ir.bundles for li in b.listeners for fc in li.filter_chains]
    assert "inbound|80" in chains and "inbound|80|plaintext-refused" not in chains  # permissive
    assert world.issues == ()


def test_node_inbound_capture_is_in_the_agent_policy_only_with_mtls() -> None:
    text = docs(ns("shop", "node"), pod("shop", "a", "127.1.0.1"), pod("shop", "b", "127.1.0.2", node="n2"))

    def policy(opts: TranslateOptions) -> Any:
        world = render_world(translate(snapshot(text), opts).ir)
        res = world.for_proxy(ProxyId.parse("agent~n1")).of(REDIRECT_POLICY)["n1"]
        msg = api.NodeRedirectPolicy()
        msg.ParseFromString(res.body)
        return msg

    plain = policy(TranslateOptions(mesh_inbound_port=15006))
    assert (plain.node_inbound_port, plain.node_inbound_mark) == (0, 0)
    on = policy(TranslateOptions(mesh_trust_domain=TD, mesh_inbound_port=15006))
    assert (on.node_inbound_port, on.node_inbound_mark, on.node_inbound_address) == (15006, 0xC1A0, "127.0.0.1")

    ids = {"/cg/proxy": 1, "/cg/a": 2}
    r = build_plan(on, lambda rel, uid: "/cg/a", Endpoint("127.0.0.1", 15001), "/cg/proxy", 1,
                   cgroup_id_of=ids.__getitem__)
    assert r.errors == ()
    assert r.plan.inbound == (InboundPlan("127.1.0.1", 0, Endpoint("127.0.0.1", 15006), 0),)
    assert r.plan.inbound_mark == 0xC1A0


def test_denials_are_counted_per_policy() -> None:
    from cilia.obs.metrics import XdsMetrics

    m = XdsMetrics()
    m.access_denied("sidecar~pay/server", "CiliumNetworkPolicy/pay/no-other:spec.ingressDeny[0]", "x")
    m.access_denied("node~n1", "CiliumClusterwideNetworkPolicy/guard:specs[1].ingressDeny[0]", "x")
    m.access_denied("sidecar~pay/server", "none", "CiliumNetworkPolicy pay/a,CiliumClusterwideNetworkPolicy b")
    m.access_denied("sidecar~pay/server", "none", "default")
    assert m.policy_denials == {("CiliumNetworkPolicy pay/no-other", "deny"): 1,
                                ("CiliumClusterwideNetworkPolicy guard", "deny"): 1,
                                ("CiliumNetworkPolicy pay/a", "default-deny"): 1,
                                ("CiliumClusterwideNetworkPolicy b", "default-deny"): 1,
                                ("(unknown)", "default-deny"): 1}


def test_node_identity_certificates_for_egress_gateways(tmp_path: Path) -> None:
    """A WorkloadCert naming a node is issued as `spiffe://TD/node/NODE`, apart from any ServiceAccount."""
    init_ca_dir(tmp_path / "ca", TD)
    wc = WorkloadCertificates(CaDirSource(tmp_path / "ca"))
    node = WorkloadCert("cilia-node-identity", "", "", node="gw")
    sa = WorkloadCert("cilia-workload", "gw", "default")  # would clash with a (namespace, sa) key scheme
    secrets = {s.name: s for b in wc.apply(_model(node, sa)).bundles for s in b.secrets}
    assert _uri(secrets["cilia-node-identity"].certificate_chain) == [f"spiffe://{TD}/node/gw"]
    assert _uri(secrets["cilia-workload"].certificate_chain) == [f"spiffe://{TD}/ns/gw/sa/default"]
    assert wc.issued_total == 2
    wc.apply(_model(node))
    assert [c["uri"] for c in wc.summary()["certificates"]] == [f"spiffe://{TD}/node/gw"]
