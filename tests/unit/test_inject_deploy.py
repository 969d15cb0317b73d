"""deploy/webhook.yaml (and the optional Components) agree with the webhook server and the mode rules:
opt-in only, never a pod sent twice, every pod whose labels ask for a sidecar sent with the failure
policy that matches --fail-open, nothing that says nothing sent at all."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cilia.cli import _inject_config, build_parser
from cilia.k8s.selector import parse_label_selector
from cilia.mesh.inject import InjectConfig, InjectError, inject_pod_spec, is_injected
from cilia.mesh.mode import MESH_MODE_KEY, resolve_mesh_mode
from cilia.mesh.webhook import make_webhook_app
from support.kustomize import find, render

VARIANTS = [(), ("mesh-everywhere",), ("fail-open",), ("mesh-everywhere", "fail-open")]
LABELS = (None, "sidecar", "node", "off", "maybe")  # absent, each mode, and a bad value
ANNOTATIONS = (None, "sidecar", "off")


def _hooks(components: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    config = find(render(*components), "MutatingWebhookConfiguration", "cilia-sidecar-injector")
    assert config["apiVersion"] == "admissionregistration.k8s.io/v1"
    return config["webhooks"]  # type: ignore[no-any-return]


def _cilia_config(components: tuple[str, ...]) -> InjectConfig:
    """What `cilia serve` with the (patched) Deployment's args would inject with."""
    args = find(render(*components), "Deployment", "cilia")["spec"]["template"]["spec"]["containers"][0]["args"]
    args = [a.replace("$(POD_NAMESPACE)", "cilia-system") for a in args]
    cfg: InjectConfig = _inject_config(build_parser().parse_args(args))
    return cfg


def _sent_by(hooks: list[dict[str, Any]], ns_labels: dict[str, str], pod_labels: dict[str, str]) -> list[str]:
    """The entries whose selectors match, as the API server evaluates them."""
    return [h["name"] for h in hooks
            if parse_label_selector(h.get("namespaceSelector"), "namespaceSelector").matches(ns_labels)
            and parse_label_selector(h.get("objectSelector"), "objectSelector").matches(pod_labels)]


def _labels(value: str | None, **more: str) -> dict[str, str]:
    return {**more, **({MESH_MODE_KEY: value} if value is not None else {})}


def _pod(labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop", "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/app"}]}}


def test_every_entry_targets_the_mutate_route() -> None:
    app = make_webhook_app(InjectConfig(), lambda _ns: None)
    posts = {r.resource.canonical for r in app.router.routes() if r.method == "POST" and r.resource}
    hooks = _hooks()
    assert [h["name"] for h in hooks] == ["sidecar-namespace.injector.cilia.io", "sidecar-pod.injector.cilia.io",
                                          "node-namespace.injector.cilia.io"]
    for hook in hooks:
        assert hook["admissionReviewVersions"] == ["v1"] and hook["sideEffects"] == "None"
        assert hook["failurePolicy"] in ("Fail", "Ignore") and hook["reinvocationPolicy"] == "Never"
        assert hook["clientConfig"]["service"] == {"name": "cilia", "namespace": "cilia-system", "port": 443,
                                                   "path": "/mutate"}
        assert hook["clientConfig"]["service"]["path"] in posts
        assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                  "resources": ["pods"], "scope": "Namespaced"}]


@pytest.mark.parametrize("components", VARIANTS, ids=lambda c: "+".join(c) or "base")
def test_selectors_agree_with_the_mode_rules(components: tuple[str, ...]) -> None:
    hooks = _hooks(components)
    policy = {h["name"]: h["failurePolicy"] for h in hooks}
    cfg = _cilia_config(components)
    checked = 0
    for ns_label, pod_label, annotation in itertools.product(LABELS, LABELS, ANNOTATIONS):
        ns_labels = _labels(ns_label, **{"kubernetes.io/metadata.name": "shop"})
        pod_labels = _labels(pod_label, app="web")
        annotations = _labels(annotation)
        case = f"namespace {ns_label} pod label {pod_label} annotation {annotation}"
        sent = _sent_by(hooks, ns_labels, pod_labels)
        assert len(sent) <= 1, f"{case}: sent {len(sent)} times ({sent})"
        # What cilia decides when asked: inject, refuse (bad value), or leave alone.
        try:
            injects = is_injected(inject_pod_spec(_pod(pod_labels, annotations), "shop", ns_labels, {}, cfg))
            refuses = False
        except InjectError:
            injects, refuses = False, True
        # What the labels alone decide (all the API server can see).
        try:
            by_labels = resolve_mesh_mode(ns_labels, None, pod_labels, None, cfg.default_mode)
        except ValueError:
            by_labels = "invalid"
        if by_labels == "sidecar":  # labels (or the mesh-everywhere default) ask for a sidecar: always sent
            assert sent, f"{case}: a pod that asks for a sidecar is not sent to cilia"
            assert policy[sent[0]] == ("Ignore" if cfg.fail_open else "Fail"), case
        if sent and policy[sent[0]] == "Fail":  # only what asked for a sidecar may be blocked on cilia
            assert by_labels in ("sidecar", "invalid"), f"{case}: blocked on cilia although it needs no sidecar"
        if (injects or refuses) and not sent:
            # Only an annotation (which the API server cannot see) asks for what is not sent; and a bad value
            # on a namespace does not block its pods on cilia (cilia reports it on the Namespace instead).
            assert annotation is not None or (ns_label == "maybe" and pod_label is None), f"{case}: not sent"
        if ns_label is None and pod_label is None and cfg.default_mode == "off":
            assert not sent, f"{case}: a pod that says nothing is sent to cilia"
        # The control plane's and the cluster's own namespaces are never sent, whatever they say.
        for system in ("kube-system", "cilia-system"):
            assert not _sent_by(hooks, _labels(ns_label, **{"kubernetes.io/metadata.name": system}), pod_labels)
        checked += 1
    assert checked == len(LABELS) ** 2 * len(ANNOTATIONS)


def test_opt_in_examples() -> None:
    """The rows of the outage table in deploy/README.md, for the base install."""
    hooks = _hooks()

    def entry(ns: str | None, pod: str | None) -> str | None:
        sent = _sent_by(hooks, _labels(ns, **{"kubernetes.io/metadata.name": "shop"}), _labels(pod))
        return sent[0].split(".")[0] if sent else None

    assert entry(None, None) is None and entry("off", None) is None and entry(None, "off") is None
    assert entry("sidecar", None) == "sidecar-namespace" and entry("sidecar", "maybe") == "sidecar-namespace"
    assert entry(None, "sidecar") == "sidecar-pod" and entry("node", "sidecar") == "sidecar-pod"
    assert entry("off", "sidecar") == "sidecar-pod" and entry("sidecar", "sidecar") == "sidecar-namespace"
    assert entry("sidecar", "off") is None and entry("sidecar", "node") is None
    assert entry("node", None) == "node-namespace" and entry("node", "off") is None and entry(None, "node") is None
    assert entry(None, "maybe") == "sidecar-pod" and entry("node", "maybe") == "sidecar-pod"  # refused with why


def _review(pod: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": namespace, "operation": "CREATE", "object": pod}}


async def _post(app: Any, review: dict[str, Any]) -> dict[str, Any]:
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/mutate", json=review)
        assert resp.status == 200
        out: dict[str, Any] = (await resp.json())["response"]
        return out


def _patched_containers(response: dict[str, Any]) -> set[str]:
    ops = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
    return {c["name"] for op in ops if op["path"].startswith("/spec/initContainers")
            for c in (op["value"] if isinstance(op["value"], list) else [op["value"]])}


async def test_webhook_honours_the_pod_label() -> None:
    """A pod labelled sidecar in a namespace that says nothing (the sidecar-pod entry) is injected; one
    labelled off in a sidecar namespace is not."""
    cfg = InjectConfig(default_mode="off")
    plain = {"shop": ({"kubernetes.io/metadata.name": "shop"}, {})}
    app = make_webhook_app(cfg, plain.get)
    out = await _post(app, _review(_pod({MESH_MODE_KEY: "sidecar"}, {})))
    assert out["allowed"] is True and _patched_containers(out)
    out = await _post(make_webhook_app(cfg, plain.get), _review(_pod({}, {})))
    assert out == {"uid": "1", "allowed": True}
    meshed = {"shop": ({MESH_MODE_KEY: "sidecar"}, {})}
    out = await _post(make_webhook_app(cfg, meshed.get), _review(_pod({MESH_MODE_KEY: "off"}, {})))
    assert out == {"uid": "1", "allowed": True}


async def test_webhook_waits_for_a_namespace_the_watch_has_not_delivered_yet() -> None:
    """Kubernetes mode: a pod created right after its namespace is decided with the namespace's labels."""
    known: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    calls = 0

    def lookup(ns: str) -> tuple[dict[str, str], dict[str, str]] | None:
        nonlocal calls
        calls += 1
        if calls == 3:  # the watch catches up while the review waits
            known["shop"] = ({MESH_MODE_KEY: "sidecar"}, {})
        return known.get(ns)

    async def wait(ns: str) -> None:  # as the control plane's: until the lookup knows it, bounded
        for _ in range(40):
            if lookup(ns) is not None:
                return
            await asyncio.sleep(0.05)

    out = await _post(make_webhook_app(InjectConfig(default_mode="off"), lookup, namespace_wait=wait),
                      _review(_pod({}, {})))
    assert _patched_containers(out)
    calls, known = 0, {}
    out = await _post(make_webhook_app(InjectConfig(default_mode="off"), lookup), _review(_pod({}, {})))
    assert "patch" not in out  # without the wait (file mode) an unknown namespace says nothing
