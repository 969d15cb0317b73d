"""The CLI contract (DESIGN §5) and `cilia serve` as a real process: translate, bootstrap, status, restart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.backends import echo_backends
from support.controlplane import CiliaProcess, ManifestDir
from support.envoy import Envoy, envoy_binary
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def cilia(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cilia", *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


def test_translate_prints_the_contract_json() -> None:
    out = cilia("translate", "-f", str(ROOT / "examples/quickstart"), "--proxy", "node~local", "-o", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert list(data) == ["listeners", "routes", "clusters", "endpoints", "secrets"]
    for kind, items in data.items():
        names = [i.get("name") or i.get("clusterName") for i in items]
        assert names == sorted(names), kind
        assert all(i["@type"].startswith("type.googleapis.com/envoy.") for i in items)
    assert [li["name"] for li in data["listeners"]] == ["default/quickstart/listener"]
    assert [c["clusterName"] for c in data["endpoints"]] == ["default/echo-v1", "default/echo-v2"]


def test_translate_reports_rejected_objects_and_still_prints(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples/quickstart", tmp_path / "m", ignore=shutil.ignore_patterns("*.py"))
    (tmp_path / "m" / "broken.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  ports: [{port: -1}]\n")
    out = cilia("translate", "-f", str(tmp_path / "m"), "--proxy", "node~local", "-o", "yaml")
    assert out.returncode == 1
    assert "broken.yaml#0: Service broken: spec.ports[0].port: must be >= 1, got -1" in out.stderr
    assert "default/quickstart/listener" in out.stdout


def test_translate_unknown_role_is_an_error() -> None:
    out = cilia("translate", "-f", str(ROOT / "examples/quickstart"), "--proxy", "robot~x")
    assert out.returncode == 2 and "unknown role" in out.stderr


@pytest.mark.parametrize("proxy", ["node~n1", "sidecar~default/web-0", "gateway~default/gw", "ingress~cilia"])
@pytest.mark.parametrize("variant", ["--delta", "--sotw"])
def test_bootstrap_passes_envoy_validation(tmp_path: Path, proxy: str, variant: str) -> None:
    out = cilia("bootstrap", "--proxy", proxy, "--xds", "127.0.0.1:18000", variant, "-o", "yaml")
    assert out.returncode == 0, out.stderr
    cfg = tmp_path / "b.yaml"
    cfg.write_text(out.stdout)
    check = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(cfg)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert ("DELTA_GRPC" in out.stdout) == (variant == "--delta")


def _cec(listener_port: int, bad: bool = False) -> str:
    chains = [{"filters": []}, {"filters": []}] if bad else [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
                                  "v3.HttpConnectionManager",
                         "stat_prefix": "t", "route_config": {"name": "r", "virtual_hosts": [{
                             "name": "a", "domains": ["*"],
                             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "default/echo"}}]}]},
                         "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                             "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]
    return json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
                       "metadata": {"name": "t", "namespace": "default"},
                       "spec": {"backendServices": [{"name": "echo", "namespace": "default"}], "resources": [
                           {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l",
                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                            "filter_chains": chains},
                           {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "default/echo",
                            "type": "EDS", "connect_timeout": "1s"}]}})


def test_restart_keeps_envoy_serving_and_status_shows_nacks() -> None:
    md = ManifestDir()
    port = free_port()
    with echo_backends(("a", "127.0.0.2"), ("b", "127.0.0.3")) as (a, b):
        md.write("svc.yaml", docs(service("echo"), endpoint_slice("echo", [(a.host, a.port)])))
        md.write("cec.yaml", _cec(port))
        cp = CiliaProcess([str(md.path)]).start()
        envoy = Envoy("node~restart", cp.xds_port).start()
        url = f"http://127.0.0.1:{port}/"
        try:
            envoy.wait_for(lambda: get(url).status == 200, what="initial config")
            # The control plane goes away: Envoy keeps serving what it has.
            cp.stop()
            for _ in range(20):
                assert get(url).json()["backend"] == "a"
                time.sleep(0.02)
            # Meanwhile the config changes; a new control plane on the same port brings Envoy up to date.
            md.write("svc.yaml", docs(service("echo"), endpoint_slice("echo", [(b.host, b.port)])))
            cp = CiliaProcess([str(md.path)], xds_port=cp.xds_port).start()
            envoy.wait_for(lambda: get(url).json()["backend"] == "b", timeout=15, what="reconverged")
            # A NACK shows in /debug/proxies and `cilia status` within a second.
            md.write("cec.yaml", _cec(port, bad=True))
            t0 = time.monotonic()
            envoy.wait_for(lambda: cp.admin_json("/debug/proxies")["node~restart"]["types"]["listeners"]["state"]
                           == "NACKED", timeout=3, what="NACK")
            assert time.monotonic() - t0 < 1.5
            status = cilia("status", "--admin", f"127.0.0.1:{cp.admin_port}")
            assert status.returncode == 0
            line = next(ln for ln in status.stdout.splitlines() if ln.startswith("node~restart"))
            assert "NACKED" in line and "listeners: Error adding/updating listener(s) default/t/l" in line
            assert "SYNCED" in line, "types the reconnected proxy already held count as in sync"
            as_json = json.loads(cilia("status", "--admin", f"127.0.0.1:{cp.admin_port}", "-o", "json").stdout)
            assert "same matching rules" in as_json["proxies"]["node~restart"]["types"]["listeners"]["last_nack"]
            assert get(url).json()["backend"] == "b", "the last good listener still serves"
        finally:
            envoy.stop()
            cp.stop()
            md.cleanup()


def test_file_mode_debug_status_has_cec_conditions_including_nacks() -> None:
    md = ManifestDir()
    port = free_port()
    with echo_backends(("a", "127.0.0.2")) as (a,):
        md.write("svc.yaml", docs(service("echo"), endpoint_slice("echo", [(a.host, a.port)])))
        md.write("cec.yaml", _cec(port))
        cp = CiliaProcess([str(md.path)]).start()
        envoy = Envoy("node~status", cp.xds_port).start()
        try:
            def conditions() -> dict[str, tuple[str, str]]:
                (st,) = [s for s in cp.admin_json("/debug/status") if s["kind"] == "CiliumEnvoyConfig"]
                assert st["metadata"] == {"namespace": "default", "name": "t", "generation": 0}
                return {c["type"]: (c["status"], c["reason"]) for c in st["status"]["conditions"]}

            envoy.wait_for(lambda: get(f"http://127.0.0.1:{port}/").status == 200, what="served")
            assert conditions() == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
            md.write("cec.yaml", _cec(port, bad=True))
            envoy.wait_for(lambda: conditions()["Programmed"] == ("False", "Nacked"), timeout=5,
                           what="NACK in status")
            assert conditions()["Accepted"] == ("True", "Accepted")
        finally:
            envoy.stop()
            cp.stop()
            md.cleanup()
