"""Golden tests for Ingress translation: tests/golden/ingress/<case>/input.yaml -> expected.yaml.

expected.yaml maps each proxy id in `proxy.txt` (default `ingress~cilia`) to what `cilia translate`
prints for it, plus `statuses` (the status stanzas, as /debug/status shows them) and `issues`.
Secret bytes are shown as a digest so the files stay readable. `options.yaml` may set
TranslateOptions fields (default: listeners on 127.0.0.1:8080/8443).
Regenerate with `pytest --update-golden` and review the diff.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from support.golden import (
    assert_golden,
    case_options,
    case_proxies,
    golden_cases,
    issue_texts,
    proxy_config,
    translate_case,
)

CASES = golden_cases("ingress")
DEFAULT_OPTIONS = {"ingress_address": "127.0.0.1", "ingress_http_port": 8080, "ingress_https_port": 8443}


def _redact(secret: dict[str, Any]) -> dict[str, Any]:
    for part in secret.get("tlsCertificate", {}).values():
        if isinstance(part, dict) and "inlineBytes" in part:
            part["inlineBytes"] = "sha256:" + hashlib.sha256(part["inlineBytes"].encode()).hexdigest()[:16]
    return secret


def run_case(case: Path) -> dict[str, Any]:
    _, result, world = translate_case(case, case_options(case, DEFAULT_OPTIONS))
    out: dict[str, Any] = {}
    for p in case_proxies(case, ["ingress~cilia"]):
        cfg = proxy_config(world, p)
        cfg["secrets"] = [_redact(s) for s in cfg["secrets"]]
        out[p] = cfg
    out["statuses"] = [s.as_dict() for s in result.statuses]
    out["issues"] = issue_texts(case, result.issues, world.issues)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ingress_golden(case: Path, update_golden: bool) -> None:
    assert_golden(case, run_case(case), update_golden)
