"""Egress gateway goldens: tests/golden/egress/<case>/input.yaml (+ options.yaml) -> expected.yaml.

expected.yaml holds every served plan (steered pods, destinations less the excluded CIDRs, gateway
nodes, source address), every CiliumEgressGatewayPolicy status stanza and every issue; for the proxies
a case lists in proxy.txt, the Envoy config egress adds (capture-listener chains, tunnel listener,
clusters). Regenerate with
`--update-golden` and review the diff.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cilia.translate.egress import compile_egress
from support.golden import (
    assert_golden,
    case_options,
    case_proxies,
    golden_cases,
    issue_texts,
    load_case,
    proxy_config,
    translate_case,
)

CASES = golden_cases("egress")
GOLDEN_EGRESS = CASES[0].parent
DEFAULTS = {"mesh_default_mode": "node"}


def _egress_config(config: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The parts of a proxy's config egress gateways add: `egress|` resources and capture-listener chains."""
    out: dict[str, list[Any]] = {}
    for kind, items in config.items():
        for item in items:
            name = str(item.get("name", ""))
            if name.startswith("egress|"):
                out.setdefault(kind, []).append(item)
            elif kind == "listeners":
                chains = [c for c in item.get("filterChains", []) if str(c.get("name", "")).startswith("egress|")]
                if chains:
                    out.setdefault(kind, []).append({"name": name, "filterChains": chains})
    return out


def run_case(case: Path) -> dict[str, Any]:
    snapshot, parsed = load_case(case)
    opts = case_options(case, DEFAULTS)
    compiled = compile_egress(snapshot, opts)
    envoy = {}
    if (case / "proxy.txt").is_file():
        _, _, world = translate_case(case, opts)
        envoy = {p: _egress_config(proxy_config(world, p)) for p in case_proxies(case, ())}
    plans = [{"policy": p.policy, "pods": [{"key": x.key, "node": x.node, "ips": list(x.ips)} for x in p.pods],
              "destinations": list(p.destinations), "gatewayNodes": list(p.gateway_nodes), "egressIP": p.egress_ip}
             for p in compiled.plans]
    return {"plans": plans, "statuses": [s.as_dict() for s in compiled.statuses],
            "issues": issue_texts(case, parsed.issues, compiled.issues), **({"envoy": envoy} if envoy else {})}


def test_cases_present() -> None:
    assert {"basic", "overlap", "no-gateway", "interface", "mtls"} <= {c.name for c in CASES}


def test_mtls_tunnel_names_the_certificates_both_sides_need() -> None:
    """With a trust domain each gateway node's bundle names its node identity, and the client node's
    bundle names the certificate of the ServiceAccount its tunnel chain presents."""
    from cilia.ir.model import WorkloadCert

    case = GOLDEN_EGRESS / "mtls"
    _, result, _ = translate_case(case, case_options(case, DEFAULTS))
    certs = {b.key: b.workload_certs for b in result.ir.bundles if b.workload_certs}
    for gw in ("gw", "gw2"):
        assert certs[f"egress/gateway/{gw}"] == (WorkloadCert("cilia-node-identity", "", "", node=gw),)
    assert WorkloadCert("cilia-workload/shop/default", "shop", "default") in certs["mesh/node/a"]
    # Without one: no certificates, and the policy says its tunnel is unauthenticated.
    _, plain, _ = translate_case(GOLDEN_EGRESS / "basic", case_options(GOLDEN_EGRESS / "basic", DEFAULTS))
    assert not any(b.workload_certs for b in plain.ir.bundles)
    assert any("unauthenticated" in i.message and i.severity == "warning" for i in plain.issues)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_egress_golden(case: Path, update_golden: bool) -> None:
    assert_golden(case, run_case(case), update_golden)


def test_status_lists_egress_gateways() -> None:
    from cilia.obs.status_view import egress_table

    snapshot, _ = load_case(GOLDEN_EGRESS / "overlap")
    compiled = compile_egress(snapshot, case_options(GOLDEN_EGRESS / "overlap", DEFAULTS))
    lines = egress_table([s.as_dict() for s in compiled.statuses]).splitlines()
    assert lines[0].split() == ["EGRESS", "POLICY", "ACCEPTED", "PODS", "GATEWAY", "NODES", "EGRESS", "IP"]
    assert [line.split() for line in lines[1:]] == [["old", "True", "1", "gw,gw2", "127.0.9.1"],
                                                     ["young", "True", "1", "gw,gw2", "127.0.9.2"]]
    assert egress_table([]) == ""


def test_gateway_lets_a_policy_be_claimed_only_by_its_selected_workloads() -> None:
    """With mesh mTLS the gateway's route configuration carries default-deny RBAC: per policy, the
    policy header together with the workload identities of exactly the pods that policy selects."""
    from cilia.ir.model import HeaderMatch, PeerMatch
    from cilia.translate.egress import POLICY_HEADER, UNKNOWN_POLICY_ROUTE, tunnel_authz

    case = GOLDEN_EGRESS / "overlap"
    opts = case_options(case, DEFAULTS)
    snapshot, _ = load_case(case)
    compiled = compile_egress(snapshot, replace(opts, mesh_trust_domain="td.test"))
    authz = tunnel_authz(compiled.plans, "td.test")
    assert authz.default_deny and not authz.deny
    by_name = {r.name: r for r in authz.allow}
    for plan in compiled.plans:
        name = plan.policy.rpartition(" ")[2]
        rule = by_name[f"CiliumEgressGatewayPolicy/{name}"]
        assert rule.http is not None and rule.http[0].headers == (HeaderMatch(POLICY_HEADER, value=name),)
        assert set(rule.peers) == {PeerMatch("exact", f"spiffe://td.test/ns/{p.namespace}/sa/{p.service_account}")
                                   for p in plan.pods}
    # Rendered on every gateway node, with a catch-all route so an unserved policy is refused by RBAC.
    result = translate_case(case, replace(opts, mesh_trust_domain="td.test"))[1]
    gateways = [b for b in result.ir.bundles if b.key.startswith("egress/gateway/")]
    assert gateways
    for b in gateways:
        (vh,) = b.routes[0].virtual_hosts
        assert vh.authz is not None and vh.authz.allow == authz.allow
        assert vh.routes[-1].name == UNKNOWN_POLICY_ROUTE
    # Without mesh mTLS there is no identity to check: no RBAC.
    plain = translate_case(case, opts)[1]
    assert all(b.routes[0].virtual_hosts[0].authz is None
               for b in plain.ir.bundles if b.key.startswith("egress/gateway/"))


def test_status_egress_traffic_from_gateway_envoy_stats() -> None:
    """Envoy's /stats JSON -> per policy flows/bytes (policy names may hold dots); histograms and other
    clusters are ignored; an unreadable gateway Envoy shows up as an error row, not a crash."""
    from cilia.cli import egress_gateway_traffic
    from cilia.obs.status_view import egress_traffic, egress_traffic_table
    from support.net import free_port

    stats = {"stats": [
        {"name": "cluster.egress|legacy.db|upstream.upstream_cx_active", "value": 2},
        {"name": "cluster.egress|legacy.db|upstream.upstream_cx_total", "value": 7},
        {"name": "cluster.egress|legacy.db|upstream.upstream_cx_tx_bytes_total", "value": 1234},
        {"name": "cluster.egress|legacy.db|upstream.upstream_cx_rx_bytes_total", "value": 99},
        {"name": "cluster.egress|legacy.db|tunnel.upstream_cx_active", "value": 5},
        {"name": "cluster.other.upstream_cx_active", "value": 3},
        {"histograms": {"computed_quantiles": []}},
    ]}
    traffic = egress_traffic(stats)
    assert traffic == {"legacy.db": {"flows": 2, "total": 7, "bytes_sent": 1234, "bytes_received": 99}}
    down = f"127.0.0.1:{free_port()}"
    table = egress_traffic_table({"gw": {"policies": traffic}, **egress_gateway_traffic([f"gw2={down}"])})
    lines = table.splitlines()
    assert lines[0].split() == ["EGRESS", "POLICY", "GATEWAY", "NODE", "FLOWS", "TOTAL", "BYTES", "SENT", "BYTES",
                                "RECEIVED"]
    assert lines[1].split() == ["legacy.db", "gw", "2", "7", "1234", "99"]
    assert lines[2] == "egress gateway Envoy(s) not read:"
    assert lines[3].startswith(f"  gw2: cannot read Envoy admin at {down}")
    assert egress_traffic_table({}) == ""
