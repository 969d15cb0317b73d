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
import yaml

from cilia.identity import ProxyId
from cilia.k8s.manifest import parse_file
from cilia.k8s.store import Store
from cilia.render.dump import proxy_config_json
from cilia.render.world import render_world
from cilia.translate import translate
from cilia.translate.context import TranslateOptions

CASES = sorted(p for p in (Path(__file__).parent.parent / "golden" / "ingress").iterdir() if p.is_dir())
DEFAULT_OPTIONS = {"ingress_address": "127.0.0.1", "ingress_http_port": 8080, "ingress_https_port": 8443}


def _redact(secret: dict[str, Any]) -> dict[str, Any]:
    for part in secret.get("tlsCertificate", {}).values():
        if isinstance(part, dict) and "inlineBytes" in part:
            part["inlineBytes"] = "sha256:" + hashlib.sha256(part["inlineBytes"].encode()).hexdigest()[:16]
    return secret


def run_case(case: Path) -> dict[str, Any]:
    store = Store()
    path = case / "input.yaml"
    store.replace_source(path.name, parse_file(path))
    options: dict[str, Any] = dict(DEFAULT_OPTIONS)
    if (case / "options.yaml").exists():
        options.update(yaml.safe_load((case / "options.yaml").read_text()))
    result = translate(store.snapshot(), TranslateOptions(**options))
    world = render_world(result.ir)
    proxies = (case / "proxy.txt").read_text().split() if (case / "proxy.txt").exists() else ["ingress~cilia"]
    out: dict[str, Any] = {}
    for p in proxies:
        cfg = proxy_config_json(world.for_proxy(ProxyId.parse(p)))
        cfg["secrets"] = [_redact(s) for s in cfg["secrets"]]
        out[p] = cfg
    out["statuses"] = [s.as_dict() for s in result.statuses]
    out["issues"] = [str(i).replace(str(case) + "/", "") for i in (*result.issues, *world.issues)]
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ingress_golden(case: Path, update_golden: bool) -> None:
    got = run_case(case)
    expected = case / "expected.yaml"
    if update_golden or not expected.exists():
        expected.write_text(yaml.safe_dump(got, sort_keys=False, width=120))
        if not update_golden:
            pytest.fail(f"{expected} did not exist; written, review it")
    assert got == yaml.safe_load(expected.read_text())
