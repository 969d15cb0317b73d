"""Policy goldens: tests/golden/policy/<case>/input.yaml (+ options.yaml) -> expected.yaml.

expected.yaml holds, for every pod some CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy selects,
the Envoy RBAC its inbound proxy enforces: `http` (the per-route configuration of the two HTTP RBAC
filters, deny and default-deny) and `tcp` (the network RBAC filters of an L4 chain); plus every policy
status stanza and every issue. Regenerate with `--update-golden` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from cilia.render import envoy as r
from cilia.translate.policy import compile_policies
from support.golden import assert_golden, case_options, golden_cases, issue_texts, load_case

CASES = golden_cases("policy")
DEFAULTS = {"mesh_trust_domain": "cluster.local", "mesh_default_mode": "sidecar"}


def _json(message: Any) -> Any:
    return json.loads(json_format.MessageToJson(message))


def run_case(case: Path) -> dict[str, Any]:
    snapshot, parsed = load_case(case)
    assert parsed.ok and not parsed.issues, parsed.issues
    compiled = compile_policies(snapshot, case_options(case, DEFAULTS))
    pods = {}
    for key, authz in compiled.by_pod.items():
        pods[key] = {
            "default_deny": authz.default_deny,
            "http": {name: _json(per) for name, per in r.render_route_rbac(authz).items()},
            "tcp": [_json(f) for f in r.render_network_rbac(authz, "inbound")],
        }
    return {"pods": pods, "statuses": [s.as_dict() for s in compiled.statuses],
            "issues": issue_texts(case, compiled.issues)}


def test_cases_present() -> None:
    assert {"selectors", "deny", "multiple-policies", "host-and-headers", "not-enforced"} <= {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_policy_golden(case: Path, update_golden: bool) -> None:
    assert_golden(case, run_case(case), update_golden)
