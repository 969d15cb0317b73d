"""Mesh goldens: tests/golden/mesh/<case>/input.yaml (+ options.yaml) -> expected.yaml.

expected.yaml holds the issues and, for every proxy the workloads imply (`node~NODE` for each node a
pod runs on, `sidecar~NS/POD` for each pod), the Envoy config it is served, as `cilia translate`
prints it. Regenerate with `--update-golden` (or CILIA_UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.identity import ProxyId
from cilia.k8s.manifest import parse_file
from cilia.k8s.store import InputSnapshot
from cilia.render.dump import proxy_config_json
from cilia.render.world import render_world
from cilia.translate import translate
from cilia.translate.context import TranslateOptions
from support.golden import assert_golden

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "mesh"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").is_file())


def _proxies(snapshot: InputSnapshot) -> list[str]:
    pods = list(snapshot.list("Pod"))
    nodes = sorted({p.spec.node_name for p in pods if p.spec.node_name})
    return [f"node~{n}" for n in nodes] + [f"sidecar~{p.meta.namespace}/{p.meta.name}" for p in pods]


def render_case(case: Path) -> dict[str, Any]:
    parsed = parse_file(case / "input.yaml")
    assert parsed.ok and not parsed.issues, parsed.issues
    options = case / "options.yaml"
    opts = TranslateOptions(**(yaml.safe_load(options.read_text()) or {})) if options.is_file() else TranslateOptions()
    snapshot = InputSnapshot.of(parsed.objects)
    result = translate(snapshot, opts)
    world = render_world(result.ir)
    issues = [str(i) for i in (*result.issues, *world.issues)]
    proxies = {pid: proxy_config_json(world.for_proxy(ProxyId.parse(pid))) for pid in _proxies(snapshot)}
    return {"issues": issues, "proxies": proxies}


def test_cases_present() -> None:
    assert {"workloads-node", "workloads-sidecar", "mixed"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_mesh_golden(name: str, update_golden: bool) -> None:
    assert_golden(GOLDEN / name, render_case(GOLDEN / name), update_golden)


def _listener_names(config: dict[str, Any]) -> list[str]:
    return [li["name"] for li in config["listeners"]]


def test_node_and_sidecar_serve_the_same_services() -> None:
    """The two topologies reach the same mesh destinations; they differ in who holds the listener."""
    node = render_case(GOLDEN / "workloads-node")
    side = render_case(GOLDEN / "workloads-sidecar")
    assert node["issues"] == side["issues"] == []
    assert _listener_names(node["proxies"]["node~node-1"]) == ["outbound|node"]
    assert all(_listener_names(c) == [] for p, c in node["proxies"].items() if p.startswith("sidecar~"))
    assert all(_listener_names(c) == [] for p, c in side["proxies"].items() if p.startswith("node~"))
    assert _listener_names(side["proxies"]["sidecar~pay/db-0"]) == ["inbound|sidecar|pay/db-0", "outbound|sidecar|pay"]

    def destinations(listener: dict[str, Any]) -> set[tuple[str, int]]:
        return {(r["addressPrefix"], fc["filterChainMatch"]["destinationPort"])
                for fc in listener["filterChains"] for r in fc["filterChainMatch"].get("prefixRanges", [])}

    node_listener = node["proxies"]["node~node-1"]["listeners"][0]
    side_listener = next(li for li in side["proxies"]["sidecar~shop/web-0"]["listeners"]
                         if li["name"] == "outbound|sidecar|shop")
    assert destinations(node_listener) == destinations(side_listener) == {
        ("127.96.0.10", 80), ("127.96.0.12", 9090), ("127.96.0.11", 5432)}
    assert [c["name"] for c in node["proxies"]["node~node-1"]["clusters"]] == [
        c["name"] for c in side["proxies"]["sidecar~shop/web-0"]["clusters"] if not c["name"].startswith("inbound|")]


def test_example_workloads_translate_cleanly() -> None:
    """examples/mesh: no issues, and each proxy gets the listeners its README promises."""
    example = GOLDEN.parent.parent.parent / "examples" / "mesh"
    parsed = parse_file(example / "workloads.yaml")
    assert parsed.ok and not parsed.issues, parsed.issues
    result = translate(InputSnapshot.of(parsed.objects), TranslateOptions())
    world = render_world(result.ir)
    assert result.issues == () and world.issues == ()
    node = proxy_config_json(world.for_proxy(ProxyId.parse("node~node-1")))
    side = proxy_config_json(world.for_proxy(ProxyId.parse("sidecar~pay/server-0")))
    assert _listener_names(node) == ["outbound|node"]
    assert _listener_names(side) == ["inbound|sidecar|pay/server-0", "outbound|sidecar|pay"]
