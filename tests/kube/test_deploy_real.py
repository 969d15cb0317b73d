"""deploy/ against a real API server: every object accepted (CRD structural schemas included), invalid objects
refused by the schema the way users see it, and cilia's ServiceAccount allowed exactly what the code uses."""

from __future__ import annotations

import json
from typing import Any

import yaml

import cilia.k8s.kinds  # noqa: F401
from cilia.k8s.kubesource import DEFAULT_SECRETS_NAMESPACE
from cilia.k8s.rbac import NAMED, Permission, cluster_permissions, namespace_permissions, secret_permissions
from support.realkube import API_AUDIENCE, DEPLOY, RealCluster


def _docs() -> list[dict[str, Any]]:
    kustomize = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    out = []
    for name in kustomize["resources"]:
        out += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return out


def test_every_deploy_object_is_accepted(cluster: RealCluster, deployed: str) -> None:
    docs = _docs()
    assert len(docs) >= 15
    for d in docs:
        if d["kind"] == "MutatingWebhookConfiguration":
            continue  # created (checked by the fixture), then removed: nothing here serves it
        ns = d["metadata"].get("namespace")
        got = cluster.get(d["kind"].lower(), d["metadata"]["name"], *(["-n", ns] if ns else []))
        assert got["metadata"]["name"] == d["metadata"]["name"], d["kind"]
    # The CRDs are structural (no NonStructuralSchema condition), their names accepted, and established;
    # the status subresource is served.
    for name in ("ciliumenvoyconfigs.cilium.io", "ciliumclusterwideenvoyconfigs.cilium.io"):
        crd = cluster.get("crd", name)
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds.get("Established") == "True" and conds.get("NamesAccepted") == "True", conds
        assert "NonStructuralSchema" not in conds
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    # The server (dry run) still accepts all of it, and applying again would change nothing but bring back
    # the webhook configuration the fixture removed.
    again = cluster.kubectl("apply", "-k", str(DEPLOY), "--dry-run=server").stdout
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/cilia-sidecar-injector created" in again
    diff = cluster.kubectl("diff", "-k", str(DEPLOY), check=False)
    assert diff.returncode == 1, diff.stderr
    changed = [line for line in diff.stdout.splitlines() if line.startswith("diff ")]
    assert len(changed) == 1 and "MutatingWebhookConfiguration..cilia-sidecar-injector" in changed[0], changed


CEC = """
apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata: {name: NAME, namespace: schema-check}
spec:
  services:
  - {name: echo, namespace: schema-check, ports: PORTS}
  resources:
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: l
"""

ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "bad-path", "namespace": "schema-check"},
    "spec": {"parentRefs": [{"name": "gw"}],
             "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "no-leading-slash"}}],
                        "backendRefs": [{"name": "echo", "port": 80}]}]},
}


def test_schema_rejects_invalid_objects(cluster: RealCluster, deployed: str) -> None:
    cluster.kubectl("create", "namespace", "schema-check")
    # A valid CiliumEnvoyConfig in Cilium's shape is stored as given.
    cluster.apply(CEC.replace("NAME", "good").replace("PORTS", "[80, 8080]"))
    assert cluster.get("cec", "good", "-n", "schema-check")["spec"]["services"][0]["ports"] == [80, 8080]

    # A wrong field type: refused by the CRD's schema, naming the field, as `kubectl apply` shows it.
    res = cluster.kubectl("apply", "-f", "-", input=CEC.replace("NAME", "bad").replace("PORTS", '["eighty"]'),
                          check=False)
    assert res.returncode != 0
    assert 'The CiliumEnvoyConfig "bad" is invalid' in res.stderr
    assert "spec.services[0].ports[0]" in res.stderr and "must be of type integer" in res.stderr
    # resources must be a list of objects.
    bad = yaml.safe_load(CEC.replace("NAME", "bad2").replace("PORTS", "[80]"))
    bad["spec"]["resources"] = ["not an object"]
    res = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert res.returncode != 0 and "spec.resources[0]" in res.stderr and "must be of type object" in res.stderr
    # An unknown field is refused too (kubectl asks for strict field validation).
    bad = yaml.safe_load(CEC.replace("NAME", "bad3").replace("PORTS", "[80]"))
    bad["spec"]["services"][0]["listenr"] = "typo"
    res = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert res.returncode != 0 and 'unknown field "spec.services[0].listenr"' in res.stderr

    # Gateway API's own validation (CEL rules in its CRDs): a path that is not absolute.
    res = cluster.kubectl("apply", "-f", "-", input=json.dumps(ROUTE), check=False)
    assert res.returncode != 0 and 'The HTTPRoute "bad-path" is invalid' in res.stderr
    assert "must be an absolute path" in res.stderr
    assert cluster.kubectl("get", "cec,httproute", "-n", "schema-check", "-o", "name").stdout.split() == [
        "ciliumenvoyconfig.cilium.io/good"]

    # Status lives in the subresource: a status in the main resource is dropped, one through /status is kept.
    cond = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "x",
            "lastTransitionTime": "2025-01-01T00:00:00Z"}
    cluster.kubectl("patch", "cec", "good", "-n", "schema-check", "--type", "merge",
                    "-p", json.dumps({"status": {"conditions": [cond]}}))
    assert "status" not in cluster.get("cec", "good", "-n", "schema-check")
    cluster.kubectl("patch", "cec", "good", "-n", "schema-check", "--subresource", "status", "--type", "merge",
                    "-p", json.dumps({"status": {"conditions": [cond]}}))
    assert cluster.get("cec", "good", "-n", "schema-check")["status"]["conditions"][0]["reason"] == "Accepted"
    cluster.delete_namespace("schema-check")


def test_cilia_service_account_is_allowed_exactly_what_the_code_uses(cluster: RealCluster, deployed: str) -> None:
    token = cluster.token("cilia-system", "cilia", audience=API_AUDIENCE)

    def can(p: Permission, namespace: str = "", name: str = "") -> bool:
        resource, _, sub = p.resource.partition("/")
        return cluster.can_i(token, p.verb, p.group, resource, namespace=namespace, name=name, subresource=sub)

    # Everything the code uses: cluster-wide grants in any namespace, the Role's only in cilia-system,
    # named grants only on their object.
    for p in sorted(cluster_permissions()):
        names = NAMED.get(p, ("",))
        assert all(can(p, "some-namespace", n) for n in names), p
        if p in NAMED:
            assert not can(p, "", "something-else"), p
    for p in sorted(namespace_permissions()):
        for n in NAMED.get(p, ("",)):
            assert can(p, "cilia-system", n), p
            assert not can(p, "default", n), p
        if p in NAMED:
            assert not can(p, "cilia-system", "something-else"), p
    for p in sorted(secret_permissions()):  # Secrets: only in the secrets namespace (a Role there)
        assert can(p, DEFAULT_SECRETS_NAMESPACE), p
        assert not can(p, "default") and not can(p, "cilia-system"), p

    # And nothing it does not use.
    for verb, group, resource, ns, name, sub in (
            ("delete", "", "pods", "default", "", ""),
            ("create", "", "pods", "default", "", ""),
            ("update", "", "services", "default", "", ""),
            ("patch", "networking.k8s.io", "ingresses", "default", "", ""),  # the object, not its status
            ("update", "gateway.networking.k8s.io", "gateways", "default", "", "status"),  # patch only
            ("get", "", "secrets", "default", "", ""),
            ("get", "", "secrets", "cilia-system", "other-secret", ""),
            ("create", "", "secrets", "default", "", ""),
            ("delete", "events.k8s.io", "events", "default", "", ""),
            ("create", "coordination.k8s.io", "leases", "default", "", ""),
            ("update", "coordination.k8s.io", "leases", "cilia-system", "other-lease", ""),
            ("update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "other", ""),
            ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", ""),
            ("create", "authorization.k8s.io", "subjectaccessreviews", "", "", ""),
            ("escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", ""),
    ):
        assert not cluster.can_i(token, verb, group, resource, namespace=ns, name=name, subresource=sub), \
            (verb, group, resource, ns, name, sub)
    # The same answer as `kubectl auth can-i`, which users would ask.
    res = cluster.kubectl("auth", "can-i", "delete", "pods", "-n", "default", token=token, check=False)
    assert res.returncode == 1 and res.stdout.strip() == "no"
    res = cluster.kubectl("auth", "can-i", "patch", "gateways.gateway.networking.k8s.io", "--subresource", "status",
                          "-n", "default", token=token, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "yes"
