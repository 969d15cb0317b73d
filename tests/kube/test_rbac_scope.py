"""cilia's ServiceAccount, installed from deploy/rbac.yaml, may do exactly what deploy/README.md's permission
table says on a real API server: nothing more anywhere, and Secrets only in the secrets namespace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.kubeinstall import install
from support.rbac import CLUSTER, readme_permissions
from support.realkube import RealCluster

Rule = tuple[str, str, str, tuple[str, ...]]


def rules_review(cluster: RealCluster, token: str, namespace: str) -> tuple[set[Rule], set[tuple[str, str]]]:
    """SelfSubjectRulesReview as the token's user: (resource rules expanded, non-resource rules)."""
    body = json.dumps({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                       "spec": {"namespace": namespace}})
    # --validate=false: schema validation would need the CRD list, which cilia may not read.
    out = cluster.kubectl("create", "--validate=false", "-o", "json", "-f", "-", token=token, input=body)
    review = json.loads(out.stdout)["status"]
    assert not review.get("incomplete"), review.get("evaluationError")
    resource = {(g, r, v, tuple(rule.get("resourceNames") or ()))
                for rule in review["resourceRules"] for g in rule["apiGroups"] for r in rule["resources"]
                for v in rule["verbs"]}
    non_resource = {(u, v) for rule in review.get("nonResourceRules") or () for u in rule["nonResourceURLs"]
                    for v in rule["verbs"]}
    return resource, non_resource


def can_i(cluster: RealCluster, token: str, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", *args, token=token, check=False)
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


@pytest.mark.timeout(300)
def test_service_account_can_do_exactly_what_the_docs_list(cluster: RealCluster, tmp_path: Path) -> None:
    inst = install(cluster, "rbs", tmp_path)
    other = "rbs-apps"
    cluster.kubectl("create", "namespace", other)
    try:
        cluster.wait_for("ServiceAccount default", lambda: cluster.kubectl(
            "get", "sa", "default", "-n", inst.system, check=False).returncode == 0)
        cilia, baseline = inst.token("cilia"), inst.token("default")  # default: bound to nothing of ours
        table = readme_permissions()
        expected_ns = {inst.system: table["cilia-system"], inst.secrets: table["cilia-secrets"], other: set()}
        for namespace, own in expected_ns.items():
            got, got_urls = rules_review(cluster, cilia, namespace)
            base, base_urls = rules_review(cluster, baseline, namespace)
            extra = got - base  # what every authenticated user may do (discovery, self reviews) is not ours
            assert extra == table[CLUSTER] | own, (
                f"{namespace}: granted but not documented {sorted(extra - table[CLUSTER] - own)}, "
                f"documented but not granted {sorted(table[CLUSTER] | own - extra)}")
            assert got_urls == base_urls  # no non-resource URLs beyond the defaults
        # Secrets: list/watch in the secrets namespace only; nowhere else, and never get (not needed).
        assert can_i(cluster, cilia, "list", "secrets", "-n", inst.secrets)
        assert can_i(cluster, cilia, "watch", "secrets", "-n", inst.secrets)
        assert not can_i(cluster, cilia, "get", "secrets", "-n", inst.secrets)
        for ns in (inst.system, other, "default", "kube-system"):
            assert not can_i(cluster, cilia, "list", "secrets", "-n", ns), ns
        assert not can_i(cluster, cilia, "list", "secrets", "--all-namespaces")
        # The Lease: by name for get/update, create (which RBAC cannot limit by name) in cilia's namespace only.
        assert can_i(cluster, cilia, "update", "leases/cilia-leader", "-n", inst.system)
        assert not can_i(cluster, cilia, "update", "leases/other", "-n", inst.system)
        assert not can_i(cluster, cilia, "create", "leases", "-n", other)
        assert not can_i(cluster, cilia, "delete", "pods", "-n", other)
        assert can_i(cluster, cilia, "list", "pods", "--all-namespaces")
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
        inst.remove()
