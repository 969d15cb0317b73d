"""Cilium's own CiliumEnvoyConfig parser cases, re-expressed as cilia golden tests.

Each tests/golden/cilium/<case>/ holds input.yaml (manifests of our own that re-express one case of
Cilium's parser tests, `cec_resource_parser_test.go`, or of its controller scripts, `testdata/*.txtar`),
expected.yaml (what `cilia translate` gives for `node~local`, or the proxies listed in proxy.txt, with
every endpoint of the pool, the
Service redirects, and the issue texts; regenerated with `--update-golden`), and cilium.yaml: the facts
Cilium's case asserts (qualified names, filled-in config sources and defaults, rejections), checked
against the output on their own, so a regenerated golden cannot quietly drop one.

cilium.yaml: `case:` the Cilium test it re-expresses; `expect:` a list of
`{at: PATH, is: VALUE}` (PATH: dotted keys and [index] into the output, keys as in expected.yaml),
`{at: PATH, has: SUBSTRING}` (the value's YAML contains it), `{issue: SUBSTRING}` (an issue says it),
`{rejected: OBJECT}` (that object has an error issue and nothing of it is served).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.identity import ProxyId
from cilia.render.dump import proxy_config_json
from support.golden import assert_golden, case_proxies, golden_cases, issue_texts, translate_case

CASES = golden_cases("cilium")
PROXY = "node~local"


def run_case(case: Path) -> dict[str, Any]:
    _, result, world = translate_case(case)
    out: dict[str, Any] = {p: proxy_config_json(world.for_proxy(ProxyId.parse(p)), only_referenced_endpoints=False)
                           for p in case_proxies(case, [PROXY])}
    out["redirects"] = [{"service": f"{r.namespace}/{r.service}", "ports": list(r.ports), "listener": r.listener,
                         "listener_port": r.listener_port} for r in result.ir.redirects]
    out["issues"] = issue_texts(case, result.issues, world.issues)
    return out


def lookup(data: Any, path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            data = data[int(part[1:-1])]
        elif isinstance(data, list):  # a list of named resources: pick by name
            matches = [x for x in data if isinstance(x, dict) and part in (x.get("name"), x.get("clusterName"))]
            assert matches, f"no item named {part!r} at {path}"
            data = matches[0]
        else:
            data = data[part]
    return data


def check_cilium_facts(case: Path, got: dict[str, Any]) -> int:
    spec = yaml.safe_load((case / "cilium.yaml").read_text())
    assert spec.get("case"), f"{case.name}/cilium.yaml names no Cilium case"
    issues = got["issues"]
    served = yaml.safe_dump({p: v for p, v in got.items() if "~" in p})
    for fact in spec["expect"]:
        if "issue" in fact:
            assert any(fact["issue"] in i for i in issues), f"{case.name}: no issue says {fact['issue']!r}: {issues}"
        elif "rejected" in fact:
            obj = fact["rejected"]
            assert any(i.startswith(obj + ":") or f": {obj}:" in i for i in issues
                       if not i.startswith(("warning:", "info:"))), f"{case.name}: {obj} not rejected: {issues}"
            short = obj.split()[-1]
            prefix = f"/{short}/" if obj.startswith("CiliumClusterwideEnvoyConfig") else f"{short}/"
            assert prefix not in served, f"{case.name}: something of rejected {obj} is served"
        elif "is" in fact:
            assert lookup(got, fact["at"]) == fact["is"], f"{case.name}: {fact['at']}"
        else:
            assert fact["has"] in yaml.safe_dump(lookup(got, fact["at"])), f"{case.name}: {fact['at']}"
    return len(spec["expect"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cilium_case(case: Path, update_golden: bool) -> None:
    got = run_case(case)
    assert check_cilium_facts(case, got) > 0
    assert_golden(case, got, update_golden)


def test_every_case_names_the_cilium_case_it_ports() -> None:
    ported = {yaml.safe_load((c / "cilium.yaml").read_text())["case"] for c in CASES}
    assert len(ported) == len(CASES) >= 20
