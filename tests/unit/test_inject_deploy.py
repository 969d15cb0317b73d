"""deploy/webhook.yaml agrees with the webhook server and the mode rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cilia.mesh.inject import InjectConfig
from cilia.mesh.mode import MESH_MODE_KEY, MESH_MODES
from cilia.mesh.webhook import make_webhook_app

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "webhook.yaml"


def _webhook() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert [d["kind"] for d in docs] == ["MutatingWebhookConfiguration"]
    assert docs[0]["apiVersion"] == "admissionregistration.k8s.io/v1"
    (hook,) = docs[0]["webhooks"]
    return hook


def test_webhook_targets_the_mutate_route() -> None:
    hook = _webhook()
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] in ("Fail", "Ignore")
    assert hook["clientConfig"]["service"] == {
        "name": "cilia", "namespace": "cilia-system", "port": 443, "path": "/mutate",
    }
    app = make_webhook_app(InjectConfig(), lambda _ns: None)
    posts = {r.resource.canonical for r in app.router.routes() if r.method == "POST" and r.resource}
    assert hook["clientConfig"]["service"]["path"] in posts
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]


def test_selectors_exclude_system_namespaces_and_opt_out() -> None:
    hook = _webhook()
    (ns_expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert ns_expr["key"] == "kubernetes.io/metadata.name" and ns_expr["operator"] == "NotIn"
    assert set(ns_expr["values"]) == {"kube-system", "cilia-system"}
    (obj_expr,) = hook["objectSelector"]["matchExpressions"]
    assert obj_expr == {"key": MESH_MODE_KEY, "operator": "NotIn", "values": ["off"]}
    assert set(obj_expr["values"]) <= set(MESH_MODES)
