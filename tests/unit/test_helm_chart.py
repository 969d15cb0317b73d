"""deploy/helm/cilia: `helm template` with the default values renders exactly the objects of deploy/ (as
`kubectl kustomize deploy/` builds them), each value changes what it should and nothing else, the values
schema rejects bad values, and `helm lint` passes. helm is built by scripts/helm.sh (scripts/setup.sh)."""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cilia"
CACHE = Path(os.environ.get("CILIA_CACHE", Path.home() / ".cache" / "cilia"))
HELM = CACHE / f"helm-{os.environ.get('HELM_VERSION', 'v4.3.2')}" / "bin" / "helm"
KUBECTL = CACHE / f"kube-{os.environ.get('KUBE_VERSION', 'v1.37.2')}" / "bin" / "kubectl"
# Labels the chart adds to every object's metadata (not to selectors or pod templates).
HELM_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version",
               "helm.sh/chart"}

pytestmark = pytest.mark.skipif(not HELM.is_file(), reason=f"{HELM} missing: run scripts/helm.sh (scripts/setup.sh)")

Obj = dict[str, Any]
Key = tuple[str, str, str]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def render(*sets: str, namespace: str = "cilia-system") -> dict[Key, Obj]:
    args = ["template", "cilia", str(CHART), "--namespace", namespace, "--include-crds"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    return by_key(d for d in yaml.safe_load_all(out.stdout) if d)


def by_key(objs: Any) -> dict[Key, Obj]:
    out: dict[Key, Obj] = {}
    for o in objs:
        key = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        assert key not in out, f"{key} twice"
        out[key] = normalise(o)
    return out


def normalise(o: Obj) -> Obj:
    o = copy.deepcopy(o)
    labels = o["metadata"].get("labels", {})
    for k in HELM_LABELS:
        labels.pop(k, None)
    return o


def kustomize_with(tmp: Path, *components: str) -> dict[Key, Obj]:
    """deploy/ with components of deploy/optional, built by an overlay as their comments tell users to."""
    if not KUBECTL.is_file():
        pytest.skip(f"{KUBECTL} missing: run scripts/local-cluster.sh")
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "deploy", tmp)],
        "components": [os.path.relpath(ROOT / "deploy" / "optional" / c, tmp) for c in components]}))
    out = subprocess.run([str(KUBECTL), "kustomize", str(tmp)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return by_key(d for d in yaml.safe_load_all(out.stdout) if d)


def deploy_objects() -> dict[Key, Obj]:
    """deploy/ as kustomize builds it (kubectl from scripts/local-cluster.sh), else its resources in order."""
    if KUBECTL.is_file():
        out = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "deploy")], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return by_key(d for d in yaml.safe_load_all(out.stdout) if d)
    kustomization = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    return by_key(d for r in kustomization["resources"]
                  for d in yaml.safe_load_all((ROOT / "deploy" / r).read_text()) if d)


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where a and b differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b), key=str)
                for p in (diff(a.get(k), b.get(k), f"{path}.{k}") if k in a and k in b else [f"{path}.{k}"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "."]


def changes(base: dict[Key, Obj], other: dict[Key, Obj]) -> dict[Key, list[str]]:
    out: dict[Key, list[str]] = {}
    for key in set(base) | set(other):
        if key not in base or key not in other:
            out[key] = ["added" if key in other else "removed"]
        elif d := diff(base[key], other[key]):
            out[key] = d
    return out


def container(objs: dict[Key, Obj], kind: str, name: str, container_name: str, init: bool = False) -> Obj:
    spec = next(o for k, o in objs.items() if k[0] == kind and k[2] == name)["spec"]["template"]["spec"]
    return next(c for c in spec["initContainers" if init else "containers"] if c["name"] == container_name)


def serve_args(objs: dict[Key, Obj]) -> Any:
    args = container(objs, "Deployment", "cilia", "cilia")["args"]
    args = [re.sub(r"\$\(POD_NAMESPACE\)", "cilia-system", a) for a in args]
    return build_parser().parse_args(args)


def test_defaults_render_the_objects_of_deploy() -> None:
    chart = render("namespace.create=true")
    want = deploy_objects()
    assert set(chart) == set(want), f"only in chart: {set(chart) - set(want)}; only in deploy/: " \
                                    f"{set(want) - set(chart)}"
    differing = {k: diff(want[k], chart[k]) for k in want if diff(want[k], chart[k])}
    assert not differing, f"chart and deploy/ differ at: {differing}"
    # Without namespace.create (helm install --create-namespace) the same, less the Namespace.
    assert changes(chart, render()) == {("Namespace", "", "cilia-system"): ["removed"]}


def test_each_value_changes_what_it_should() -> None:
    base = render()
    c = changes(base, render("replicas=3"))
    assert c == {("Deployment", "cilia-system", "cilia"): [".spec.replicas"]}

    img = render("image.repository=registry.local/cilia", "image.tag=9.9")
    assert {k: v for k, v in changes(base, img).items()} == {
        ("Deployment", "cilia-system", "cilia"): [".spec.template.spec.containers[0].image"],
        ("DaemonSet", "cilia-system", "cilia-envoy"): [".spec.template.spec.initContainers[0].image",
                                                       ".spec.template.spec.initContainers[1].image"]}
    assert container(img, "Deployment", "cilia", "cilia")["image"] == "registry.local/cilia:9.9"

    res = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    big = render("resources.requests.cpu=500m", "resources.requests.memory=2Gi", "resources.limits.memory=4Gi",
                 "nodeEnvoy.resources.limits.memory=3Gi")
    assert container(big, "Deployment", "cilia", "cilia")["resources"] == res
    assert container(big, "DaemonSet", "cilia-envoy", "envoy")["resources"]["limits"] == {"memory": "3Gi"}

    no_ds = changes(base, render("nodeEnvoy.enabled=false"))
    assert no_ds == {("DaemonSet", "cilia-system", "cilia-envoy"): ["removed"],
                     ("ServiceAccount", "cilia-system", "cilia-node-envoy"): ["removed"]}
    no_classes = changes(base, render("ingress.enabled=false", "gateway.enabled=false"))
    assert no_classes == {("IngressClass", "", "cilia"): ["removed"], ("GatewayClass", "", "cilia"): ["removed"]}


def test_secrets_namespaces_get_a_flag_and_a_role_each() -> None:
    base = render()
    objs = render("secretsNamespaces={cilia-secrets,team-a,cilia-system}")
    assert serve_args(objs).secrets_namespace == ["cilia-secrets", "team-a", "cilia-system"]
    for ns in ("team-a", "cilia-system"):
        assert objs[("Role", ns, "cilia-secrets")] == {**base[("Role", "cilia-secrets", "cilia-secrets")],
                                                       "metadata": {**base[("Role", "cilia-secrets",
                                                                                 "cilia-secrets")]["metadata"],
                                                                    "namespace": ns}}
        binding = objs[("RoleBinding", ns, "cilia-secrets")]
        assert binding["roleRef"]["name"] == "cilia-secrets"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cilia", "namespace": "cilia-system"}]
    # A Namespace for each, except the release namespace (helm's or namespace.create's to make).
    assert set(changes(base, objs)) == {
        ("Deployment", "cilia-system", "cilia"), ("Namespace", "", "team-a"),
        ("Role", "team-a", "cilia-secrets"), ("RoleBinding", "team-a", "cilia-secrets"),
        ("Role", "cilia-system", "cilia-secrets"), ("RoleBinding", "cilia-system", "cilia-secrets")}
    # Namespaces that exist already are not rendered; no Secrets anywhere in the ClusterRole.
    assert changes(base, render("namespace.createSecretsNamespaces=false")) == {
        ("Namespace", "", "cilia-secrets"): ["removed"]}
    assert all("secrets" not in r["resources"] for r in objs[("ClusterRole", "", "cilia")]["rules"])


def test_modes_become_flags_the_cli_accepts() -> None:
    base = serve_args(render())
    assert (base.ingress_default_mode, base.mesh_default_mode, base.fail_open) == ("dedicated", "off", False)
    assert base.xds_tls == "0.0.0.0:18443" and base.xds == "127.0.0.1:18000" and base.inject_xds_tls
    modes = serve_args(render("ingress.defaultMode=shared", "mesh.defaultMode=sidecar"))
    assert (modes.ingress_default_mode, modes.mesh_default_mode) == ("shared", "sidecar")

    ignore = render("webhook.failurePolicy=Ignore")
    assert serve_args(ignore).fail_open
    assert [w["failurePolicy"] for w in ignore[("MutatingWebhookConfiguration", "", "cilia-sidecar-injector")][
        "webhooks"]] == ["Ignore", "Ignore", "Ignore"]
    off = render("webhook.enabled=false")
    assert ("MutatingWebhookConfiguration", "", "cilia-sidecar-injector") not in off
    args = serve_args(off)
    assert args.webhook is None and not args.webhook_cert_from_ca
    assert not [a for a in container(off, "Deployment", "cilia", "cilia")["args"] if a.startswith("--inject-")]
    assert [p["name"] for p in off[("Service", "cilia-system", "cilia")]["spec"]["ports"]] == \
           ["grpc-xds-tls", "https-cert-issuer"]
    # Without the webhook, no grant on its configuration (the CA stays: xDS mTLS needs it).
    assert set(changes(render(), off)) == {
        ("MutatingWebhookConfiguration", "", "cilia-sidecar-injector"), ("ClusterRole", "", "cilia"),
        ("Deployment", "cilia-system", "cilia"), ("Service", "cilia-system", "cilia")}
    assert all(r["apiGroups"] != ["admissionregistration.k8s.io"] for r in off[("ClusterRole", "", "cilia")]["rules"])


@pytest.mark.parametrize(("sets", "components"), [
    (["webhook.failurePolicy=Ignore"], ["fail-open"]),
    (["mesh.defaultMode=sidecar"], ["mesh-everywhere"]),
    (["mesh.defaultMode=sidecar", "webhook.failurePolicy=Ignore"], ["mesh-everywhere", "fail-open"])])
def test_values_render_what_the_optional_components_do(tmp_path: Path, sets: list[str],
                                                        components: list[str]) -> None:
    """webhook.failurePolicy and mesh.defaultMode change the webhook entries (and the flags) exactly as the
    kustomize components in deploy/optional do; the flags may come in another order."""
    chart = render("namespace.create=true", *sets)
    want = kustomize_with(tmp_path, *components)
    assert set(chart) == set(want)
    key = ("Deployment", "cilia-system", "cilia")
    differing = {k: diff(want[k], chart[k]) for k in want if k != key and diff(want[k], chart[k])}
    assert not differing, f"chart and deploy/ with {components} differ at: {differing}"
    assert sorted(container(chart, "Deployment", "cilia", "cilia")["args"]) == \
           sorted(container(want, "Deployment", "cilia", "cilia")["args"])
    chart[key]["spec"]["template"]["spec"]["containers"][0]["args"] = []
    want[key]["spec"]["template"]["spec"]["containers"][0]["args"] = []
    assert not diff(want[key], chart[key])


def test_plaintext_xds_when_mtls_is_off() -> None:
    objs = render("xds.mtls=false")
    args = serve_args(objs)
    assert args.xds == "0.0.0.0:18000" and args.xds_insecure and args.xds_tls is None and args.cert_issuer is None
    assert args.inject_xds == "cilia.cilia-system.svc:18000" and not args.inject_xds_tls
    assert [(p["name"], p["port"]) for p in objs[("Service", "cilia-system", "cilia")]["spec"]["ports"]] == \
           [("grpc-xds", 18000), ("https-webhook", 443)]
    # No certificate issuance, so no TokenReviews; the CA stays for the webhook's certificate.
    assert all(r["apiGroups"] != ["authentication.k8s.io"] for r in objs[("ClusterRole", "", "cilia")]["rules"])
    assert ("Role", "cilia-system", "cilia-ca") in objs and args.webhook_cert_from_ca
    assert ("Role", "cilia-system", "cilia-ca") not in render("xds.mtls=false", "webhook.enabled=false")
    ds = objs[("DaemonSet", "cilia-system", "cilia-envoy")]["spec"]["template"]["spec"]
    assert [c["name"] for c in ds["initContainers"]] == ["bootstrap"]
    assert [v["name"] for v in ds["volumes"]] == ["bootstrap"]
    command = ds["initContainers"][0]["command"][2].split(">")[0].replace("$(NODE_NAME)", "n1")
    boot = build_parser().parse_args(shlex.split(command)[1:])
    assert boot.xds == "cilia.cilia-system.svc:18000" and boot.tls_dir is None and boot.proxy == "node~n1"


def test_release_namespace_is_used_everywhere() -> None:
    objs = render(namespace="mesh-ctl")
    # Everything in the release namespace but the Secrets reader in the secrets namespace.
    assert {k for k in objs if k[1] not in ("", "mesh-ctl")} == {("Role", "cilia-secrets", "cilia-secrets"),
                                                                 ("RoleBinding", "cilia-secrets", "cilia-secrets")}
    args = container(objs, "Deployment", "cilia", "cilia")["args"]
    assert "--webhook-dns-name=cilia.mesh-ctl.svc" in args and "--inject-xds=cilia.mesh-ctl.svc:18443" in args
    hooks = objs[("MutatingWebhookConfiguration", "", "cilia-sidecar-injector")]["webhooks"]
    assert len(hooks) == 3
    for hook in hooks:
        assert hook["clientConfig"]["service"]["namespace"] == "mesh-ctl"
        assert hook["namespaceSelector"]["matchExpressions"][-1] == {
            "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "mesh-ctl"]}
    for key in [("ClusterRoleBinding", "", "cilia"), ("RoleBinding", "cilia-secrets", "cilia-secrets"),
                ("RoleBinding", "mesh-ctl", "cilia-ca"), ("RoleBinding", "mesh-ctl", "cilia-leader-election")]:
        assert objs[key]["subjects"][0]["namespace"] == "mesh-ctl"
    assert "cilia.mesh-ctl.svc:18444" in container(objs, "DaemonSet", "cilia-envoy", "bootstrap", init=True)[
        "command"][2]


@pytest.mark.parametrize("bad", ["replicas=0", "webhook.failurePolicy=Maybe", "mesh.defaultMode=on",
                                 "ingress.defaultMode=both", "nodeEnvoy.logLevel=loud", "xds.mtls=yes-please",
                                 "replicaz=2", "resources.limits.memory=lots", "secretsNamespaces={}",
                                 "secretsNamespaces={Team_A}", "secretsNamespaces={a,a}"])
def test_values_schema_rejects(bad: str) -> None:
    out = helm("template", "cilia", str(CHART), "--namespace", "cilia-system", "--set", bad)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr, out.stderr


def test_helm_lint_and_crds_equal_deploy() -> None:
    out = helm("lint", str(CHART), "--strict")
    assert out.returncode == 0, out.stdout + out.stderr
    chart_crds = [d for d in yaml.safe_load_all((CHART / "crds" / "crds.yaml").read_text()) if d]
    deploy_crds = [d for d in yaml.safe_load_all((ROOT / "deploy" / "crds.yaml").read_text()) if d]
    assert chart_crds == deploy_crds
