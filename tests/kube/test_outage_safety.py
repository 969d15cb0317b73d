"""A cilia outage does not stop the cluster: deploy/webhook.yaml (its selectors and failure policies as
shipped, only pointed at 127.0.0.1) on a real API server, with cilia down, failing open, and up."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.mesh.inject import ANNOTATION_INJECTED, BOOTSTRAP_CONTAINER, PROXY_CONTAINER
from support.certs import TestCA
from support.kubeinstall import KubeCilia, install
from support.kustomize import find, render
from support.net import free_port
from support.realkube import RealCluster

WEBHOOK = "os-cilia-sidecar-injector"
PLAIN, SIDECAR, NODE = "os-plain", "os-sidecar", "os-node"


def webhook_config(port: int, ca_pem: bytes, *components: str) -> dict[str, Any]:
    """deploy/webhook.yaml (with `components` applied), calling https://127.0.0.1:PORT/mutate."""
    config = find(render(*components), "MutatingWebhookConfiguration", "cilia-sidecar-injector")
    config["metadata"] = {"name": WEBHOOK}
    for hook in config["webhooks"]:
        path = hook["clientConfig"]["service"]["path"]
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                "caBundle": base64.b64encode(ca_pem).decode()}
    return config


def pod(name: str, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web", **(labels or {})}},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/app"}]}}


def create(cluster: RealCluster, obj: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("create", "-o", "json", "-f", "-", *args, input=json.dumps(obj), check=False)


def injected(created: subprocess.CompletedProcess[str]) -> bool:
    assert created.returncode == 0, created.stderr
    obj = json.loads(created.stdout)
    names = {c["name"] for c in obj["spec"].get("initContainers") or ()}
    if (obj["metadata"].get("annotations") or {}).get(ANNOTATION_INJECTED) == "true":
        assert {BOOTSTRAP_CONTAINER, PROXY_CONTAINER} <= names
        return True
    assert not names & {BOOTSTRAP_CONTAINER, PROXY_CONTAINER}
    return False


def apply_webhook(cluster: RealCluster, config: dict[str, Any], *, sidecar_pods_admitted: bool) -> None:
    """Apply, then wait until the API server uses it (its webhook informer lags by a moment): a server-side
    dry run of a pod in the sidecar namespace is refused or admitted as the new configuration says."""
    cluster.apply(config)

    def in_force() -> bool:
        dry = create(cluster, pod("probe", SIDECAR), "--dry-run=server")
        return (dry.returncode == 0) == sidecar_pods_admitted
    cluster.wait_for("the webhook configuration in force", in_force, timeout=30)


@pytest.fixture
def namespaces(cluster: RealCluster) -> Iterator[None]:
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
                   for ns, labels in ((PLAIN, {}), (SIDECAR, {"cilia.io/mesh": "sidecar"}),
                                      (NODE, {"cilia.io/mesh": "node"}))])
    try:
        yield
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", PLAIN, SIDECAR, NODE, "os-sidecar-new", "--ignore-not-found",
                        "--wait=false", check=False)


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("namespaces")
def test_pods_while_cilia_is_down_fails_open_and_is_up(cluster: RealCluster, tmp_path: Path) -> None:
    ca = TestCA()
    leaf = ca.issue("127.0.0.1")
    (tmp_path / "tls.crt").write_bytes(leaf.cert)
    (tmp_path / "tls.key").write_bytes(leaf.key)
    port = free_port()  # nothing listens there until cilia starts

    # -- cilia down, failurePolicy Fail (the default) ---------------------------------------------------------
    apply_webhook(cluster, webhook_config(port, ca.pem), sidecar_pods_admitted=False)
    assert not injected(create(cluster, pod("plain", PLAIN)))  # namespaces that say nothing never wait on cilia
    assert not injected(create(cluster, pod("node", NODE)))  # node mode: Ignore
    assert not injected(create(cluster, pod("off", SIDECAR, {"cilia.io/mesh": "off"})))  # the pod opted out
    refused = create(cluster, pod("sidecar", SIDECAR))
    assert refused.returncode != 0
    assert 'failed calling webhook "sidecar-namespace.injector.cilia.io"' in refused.stderr, refused.stderr
    refused = create(cluster, pod("sidecar-pod", PLAIN, {"cilia.io/mesh": "sidecar"}))
    assert refused.returncode != 0 and 'failed calling webhook "sidecar-pod.injector.cilia.io"' in refused.stderr

    # -- cilia down, optional/fail-open: admitted unchanged ---------------------------------------------------
    apply_webhook(cluster, webhook_config(port, ca.pem, "fail-open"), sidecar_pods_admitted=True)
    assert not injected(create(cluster, pod("sidecar-open", SIDECAR)))
    assert not injected(create(cluster, pod("sidecar-pod-open", PLAIN, {"cilia.io/mesh": "sidecar"})))

    # -- cilia up (as its own ServiceAccount, deploy/rbac.yaml): injected ---------------------------------------
    inst = install(cluster, "os", tmp_path)
    cilia = KubeCilia(inst.kubeconfig, "--webhook", f"127.0.0.1:{port}", "--tls-cert", str(tmp_path / "tls.crt"),
                      "--tls-key", str(tmp_path / "tls.key"), "--lease-namespace", inst.system,
                      "--secrets-namespace", inst.secrets)
    try:
        cilia.start(timeout=60)
        apply_webhook(cluster, webhook_config(port, ca.pem), sidecar_pods_admitted=True)
        assert injected(create(cluster, pod("sidecar-up", SIDECAR)))
        assert injected(create(cluster, pod("sidecar-pod-up", PLAIN, {"cilia.io/mesh": "sidecar"})))
        assert not injected(create(cluster, pod("plain-up", PLAIN)))
        assert not injected(create(cluster, pod("off-up", SIDECAR, {"cilia.io/mesh": "off"})))
        refused = create(cluster, pod("bad-up", PLAIN, {"cilia.io/mesh": "maybe"}))
        assert refused.returncode != 0 and "invalid value 'maybe'" in refused.stderr, refused.stderr
        # A namespace opted in a moment ago (cilia's watch may not have it yet) still gets injected pods.
        cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "os-sidecar-new", "labels": {"cilia.io/mesh": "sidecar"}}})
        assert injected(create(cluster, pod("first", "os-sidecar-new")))
    finally:
        cilia.stop()
        inst.remove()
    assert "Traceback" not in cilia.logs()


@pytest.mark.parametrize("components", [("mesh-everywhere",), ("fail-open",), ("mesh-everywhere", "fail-open")])
def test_webhook_variants_are_valid_for_the_api_server(cluster: RealCluster, components: tuple[str, ...]) -> None:
    """The optional Components yield configurations the API server accepts (server-side validation)."""
    config = webhook_config(free_port(), TestCA().pem, *components)
    out = cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(config))
    hooks = json.loads(out.stdout)["webhooks"]
    assert [h["name"] for h in hooks] == [h["name"] for h in config["webhooks"]]
    assert [h["namespaceSelector"] for h in hooks] == [h["namespaceSelector"] for h in config["webhooks"]]
