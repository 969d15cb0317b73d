"""Injection goldens: tests/golden/inject/<case>/input.yaml -> expected.yaml.

Regenerate with `CILIA_UPDATE_GOLDEN=1 pytest tests/unit/test_inject_golden.py` (or
`--update-golden` where the top-level conftest defines it) and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from cilia.mesh.inject import (
    WORKLOAD_TEMPLATES,
    InjectConfig,
    inject_documents,
    inject_pod_spec,
    inject_yaml,
    json_patch_for,
    namespaces_from_documents,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "inject"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").is_file())


def _update(request: pytest.FixtureRequest) -> bool:
    if os.environ.get("CILIA_UPDATE_GOLDEN") == "1":
        return True
    return bool(request.config.getoption("--update-golden", default=False))


def _config(case: Path) -> InjectConfig:
    path = case / "config.yaml"
    return InjectConfig(**(yaml.safe_load(path.read_text()) or {})) if path.is_file() else InjectConfig()


def test_cases_present() -> None:
    want = {"pod-sidecar", "deployment", "statefulset", "daemonset", "job", "cronjob",
            "already-injected", "opt-out-off", "node-mode", "namespace-selected"}
    assert want <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_inject_golden(name: str, request: pytest.FixtureRequest) -> None:
    case = GOLDEN / name
    got = inject_yaml((case / "input.yaml").read_text(), _config(case))
    expected_path = case / "expected.yaml"
    if _update(request):
        expected_path.write_text(got)
    assert expected_path.is_file(), f"{expected_path} missing: run with CILIA_UPDATE_GOLDEN=1"
    assert got == expected_path.read_text()


@pytest.mark.parametrize("name", CASES)
def test_golden_output_is_a_fixed_point(name: str) -> None:
    """Injecting the expected output again changes nothing (idempotence)."""
    case = GOLDEN / name
    expected = (case / "expected.yaml").read_text()
    assert inject_yaml(expected, _config(case)) == expected


def _templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("kind") == "Pod":
        return [doc]
    if doc.get("kind") not in WORKLOAD_TEMPLATES:
        return []
    node: Any = doc
    for key in WORKLOAD_TEMPLATES[doc["kind"]][1]:
        node = node[key]
    return [node]


@pytest.mark.parametrize("name", CASES)
def test_json_patch_reproduces_injection(name: str) -> None:
    """For every pod (template) in the input, the JSON patch applied with jsonpatch equals
    inject_pod_spec's output, which equals the pod in inject_documents' output."""
    case = GOLDEN / name
    cfg = _config(case)
    docs = [d for d in yaml.safe_load_all((case / "input.yaml").read_text()) if d is not None]
    namespaces = namespaces_from_documents(docs)
    outputs = inject_documents(docs, cfg, namespaces)
    checked = 0
    for doc, out in zip(docs, outputs, strict=True):
        for before, after in zip(_templates(doc), _templates(out), strict=True):
            ns = doc.get("metadata", {}).get("namespace") or "default"
            labels, annotations = namespaces.get(ns, ({}, {}))
            mutated = inject_pod_spec(before, ns, labels, annotations, cfg)
            assert mutated == after
            patched = jsonpatch.apply_patch(before, json_patch_for(before, mutated))
            assert patched == mutated
            checked += 1
    assert checked > 0
