"""Egress gateway goldens: tests/golden/egress/<case>/input.yaml (+ options.yaml) -> expected.yaml.

expected.yaml holds every served plan (steered pods, destinations less the excluded CIDRs, gateway
nodes, source address), every CiliumEgressGatewayPolicy status stanza and every issue. Regenerate with
`--update-golden` and review the diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cilia.translate.egress import compile_egress
from support.golden import assert_golden, case_options, golden_cases, issue_texts, load_case

CASES = golden_cases("egress")
DEFAULTS = {"mesh_default_mode": "node"}


def run_case(case: Path) -> dict[str, Any]:
    snapshot, parsed = load_case(case)
    compiled = compile_egress(snapshot, case_options(case, DEFAULTS))
    plans = [{"policy": p.policy, "pods": [{"key": x.key, "node": x.node, "ips": list(x.ips)} for x in p.pods],
              "destinations": list(p.destinations), "gatewayNodes": list(p.gateway_nodes), "egressIP": p.egress_ip}
             for p in compiled.plans]
    return {"plans": plans, "statuses": [s.as_dict() for s in compiled.statuses],
            "issues": issue_texts(case, parsed.issues, compiled.issues)}


def test_cases_present() -> None:
    assert {"basic", "overlap", "no-gateway", "interface"} <= {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_egress_golden(case: Path, update_golden: bool) -> None:
    assert_golden(case, run_case(case), update_golden)
