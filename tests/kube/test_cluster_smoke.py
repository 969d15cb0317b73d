"""The real control plane works as the other kube tests assume: RBAC, tokens, EndpointSlices."""

from __future__ import annotations

import json

from support.realkube import RealCluster


def test_endpointslice_controller_writes_slices_for_ready_pods(cluster: RealCluster) -> None:
    ns = "smoke"
    cluster.kubectl("create", "namespace", ns)
    cluster.ensure_node("node-a")
    cluster.apply([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": ns, "labels": {"app": "web"}},
         "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "example.invalid/web"}]}},
    ])
    svc = cluster.get("service", "web", "-n", ns)
    assert svc["spec"]["clusterIP"].startswith("127.96.")
    cluster.set_pod_status(ns, "web-0", "198.18.0.10")

    def ready_addresses() -> list[str]:
        slices = cluster.get("endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web")["items"]
        return [a for s in slices for e in s.get("endpoints") or () if e["conditions"].get("ready")
                for a in e["addresses"]]

    assert cluster.wait_for("a ready endpoint", ready_addresses) == ["198.18.0.10"]


def test_bound_token_carries_pod_and_node_claims(cluster: RealCluster) -> None:
    ns = "smoke-token"
    cluster.kubectl("create", "namespace", ns)
    cluster.wait_for("default ServiceAccount", lambda: cluster.kubectl(
        "get", "sa", "default", "-n", ns, check=False).returncode == 0)
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns},
                   "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "example.invalid/x"}]}})
    token = cluster.token(ns, "default", bound_pod="p")
    review = json.loads(cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["cilia"]}})).stdout)["status"]
    assert review["authenticated"] is True
    assert review["user"]["username"] == f"system:serviceaccount:{ns}:default"
    extra = review["user"]["extra"]
    assert extra["authentication.kubernetes.io/pod-name"] == ["p"]
    assert extra["authentication.kubernetes.io/node-name"] == ["node-a"]
    # a token for another audience is not accepted for cilia's
    other = cluster.token(ns, "default", audience="someone-else")
    review = json.loads(cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": other, "audiences": ["cilia"]}})).stdout)["status"]
    assert not review.get("authenticated")
