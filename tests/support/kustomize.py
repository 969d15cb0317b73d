"""deploy/ with optional kustomize Components applied, in Python: the JSON 6902 patches that
deploy/optional/*/kustomization.yaml carry (the only kind of patch they use), applied to the base
manifests, so unit tests can check what an overlay would install without the kustomize binary."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import yaml

from support.rbac import DEPLOY, load_docs


def base_docs() -> list[dict[str, Any]]:
    kustomization = load_docs(DEPLOY / "kustomization.yaml")[0]
    return [d for f in kustomization["resources"] for d in load_docs(DEPLOY / f)]


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return (doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]
            and target.get("group", group) == group)


def render(*components: str) -> list[dict[str, Any]]:
    """The base manifests with `optional/<name>` Components applied in order."""
    docs = copy.deepcopy(base_docs())
    for name in components:
        comp = load_docs(DEPLOY / "optional" / name / "kustomization.yaml")[0]
        assert comp["kind"] == "Component", name
        for p in comp["patches"]:
            targets = [i for i, d in enumerate(docs) if _matches(d, p["target"])]
            assert len(targets) == 1, f"{name}: patch target {p['target']} matches {len(targets)} objects"
            ops = yaml.safe_load(p["patch"])
            docs[targets[0]] = jsonpatch.apply_patch(docs[targets[0]], ops)  # `test` ops guard the indexes
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
