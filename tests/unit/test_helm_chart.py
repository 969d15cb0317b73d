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


def test_modes_become_flags_the_cli_accepts() -> None:
    base = serve_args(render())
    assert (base.ingress_default_mode, base.mesh_default_mode, base.fail_open) == ("dedicated", "off", False)
    assert base.xds_tls == "0.0.0.0:18443" and base.xds == "127.0.0.1:18000" and base.inject_xds_tls
    modes = serve_args(render("ingress.defaultMode=shared", "mesh.defaultMode=sidecar"))
    assert (modes.ingress_default_mode, modes.mesh_default_mode) == ("shared", "sidecar")

    ignore = render("webhook.failurePolicy=Ignore")
    assert serve_args(ignore).fail_open
    assert ignore[("MutatingWebhookConfiguration", "", "cilia-sidecar-injector")]["webhooks"][0][
        "failurePolicy"] == "Ignore"
    off = render("webhook.enabled=false")
    assert ("MutatingWebhookConfiguration", "", "cilia-sidecar-injector") not in off
    assert serve_args(off).webhook is None
    assert [p["name"] for p in off[("Service", "cilia-system", "cilia")]["spec"]["ports"]] == \
           ["grpc-xds-tls", "https-cert-issuer"]


def test_plaintext_xds_when_mtls_is_off() -> None:
    objs = render("xds.mtls=false")
    args = serve_args(objs)
    assert args.xds == "0.0.0.0:18000" and args.xds_insecure and args.xds_tls is None and args.cert_issuer is None
    assert args.inject_xds == "cilia.cilia-system.svc:18000" and not args.inject_xds_tls
    assert [(p["name"], p["port"]) for p in objs[("Service", "cilia-system", "cilia")]["spec"]["ports"]] == \
           [("grpc-xds", 18000), ("https-webhook", 443)]
    ds = objs[("DaemonSet", "cilia-system", "cilia-envoy")]["spec"]["template"]["spec"]
    assert [c["name"] for c in ds["initContainers"]] == ["bootstrap"]
    assert [v["name"] for v in ds["volumes"]] == ["bootstrap"]
    command = ds["initContainers"][0]["command"][2].split(">")[0].replace("$(NODE_NAME)", "n1")
    boot = build_parser().parse_args(shlex.split(command)[1:])
    assert boot.xds == "cilia.cilia-system.svc:18000" and boot.tls_dir is None and boot.proxy == "node~n1"


def test_release_namespace_is_used_everywhere() -> None:
    objs = render(namespace="mesh-ctl")
    assert {k[1] for k in objs if k[1]} == {"mesh-ctl"}
    args = container(objs, "Deployment", "cilia", "cilia")["args"]
    assert "--webhook-dns-name=cilia.mesh-ctl.svc" in args and "--inject-xds=cilia.mesh-ctl.svc:18443" in args
    hook = objs[("MutatingWebhookConfiguration", "", "cilia-sidecar-injector")]["webhooks"][0]
    assert hook["clientConfig"]["service"]["namespace"] == "mesh-ctl"
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", "mesh-ctl"]
    assert objs[("ClusterRoleBinding", "", "cilia")]["subjects"][0]["namespace"] == "mesh-ctl"
    assert "cilia.mesh-ctl.svc:18444" in container(objs, "DaemonSet", "cilia-envoy", "bootstrap", init=True)[
        "command"][2]


@pytest.mark.parametrize("bad", ["replicas=0", "webhook.failurePolicy=Maybe", "mesh.defaultMode=on",
                                 "ingress.defaultMode=both", "nodeEnvoy.logLevel=loud", "xds.mtls=yes-please",
                                 "replicaz=2", "resources.limits.memory=lots"])
def test_values_schema_rejects(bad: str) -> None:
    out = helm("template", "cilia", str(CHART), "--namespace", "cilia-system", "--set", bad)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr, out.stderr


def test_helm_lint_and_crds_equal_deploy() -> None:
    out = helm("lint", str(CHART), "--strict")
    assert out.returncode == 0, out.stdout + out.stderr
    chart_crds = [d for d in yaml.safe_load_all((CHART / "crds" / "crds.yaml").read_text()) if d]
    deploy_crds = [d for d in yaml.safe_load_all((ROOT / "deploy" / "crds.yaml").read_text()) if d]
    assert chart_crds == deploy_crds
