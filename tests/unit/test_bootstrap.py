"""`cilia bootstrap`: per-role content, and every role's output accepted by `envoy --mode validate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.identity import ProxyId
from cilia.mesh.bootstrap import ADMIN_CLUSTER, READINESS_LISTENER, XDS_CLUSTER, bootstrap_config
from support.envoy import envoy_binary

ROLES = ["node~node-1", "sidecar~shop/web-0", "gateway~shop/gw", "ingress~cilia"]


def cli_bootstrap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cilia", "bootstrap", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sotw", [False, True], ids=["delta", "sotw"])
@pytest.mark.parametrize("proxy", ROLES)
def test_every_role_validates_in_envoy(proxy: str, sotw: bool, tmp_path: Path) -> None:
    args = ["--proxy", proxy, "--xds", "127.0.0.1:18000", "--admin-port", "15000", "--pod-ip", "127.1.0.5",
            "--node-name", "node-1"]
    if sotw:
        args.append("--sotw")
    out = cli_bootstrap(*args, "-o", "yaml")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["node"]["id"] == proxy
    assert cfg["dynamic_resources"]["ads_config"]["api_type"] == ("GRPC" if sotw else "DELTA_GRPC")
    path = tmp_path / "bootstrap.yaml"
    path.write_text(out.stdout)
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_validation_catches_a_broken_bootstrap(tmp_path: Path) -> None:
    """Control: the readiness route names the admin cluster; without it Envoy must refuse the file."""
    cfg = bootstrap_config(ProxyId.parse("sidecar~shop/web-0"), admin_port=15000, pod_ip="127.1.0.5", env={})
    cfg["static_resources"]["clusters"] = [c for c in cfg["static_resources"]["clusters"] if c["name"] != ADMIN_CLUSTER]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(cfg))
    result = envoy_validate(path)
    assert result.returncode != 0
    assert ADMIN_CLUSTER in result.stdout + result.stderr


def test_json_output_validates(tmp_path: Path) -> None:
    out = cli_bootstrap("--proxy", "sidecar~shop/web-0", "-o", "json", env={**os.environ, "POD_IP": "127.1.0.9"})
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["node"]["metadata"]["pod_ip"] == "127.1.0.9"  # from $POD_IP, as the injected init step sets it
    path = tmp_path / "bootstrap.json"
    path.write_text(out.stdout)
    assert envoy_validate(path).returncode == 0


def _tags(cfg: dict[str, Any]) -> dict[str, str]:
    return {t["tag_name"]: t["fixed_value"] for t in cfg["stats_config"]["stats_tags"]}


def test_metadata_and_stats_tags_per_role() -> None:
    env = {"POD_IP": "127.1.0.5", "NODE_NAME": "node-7"}
    node = bootstrap_config(ProxyId.parse("node~node-1"), env=env)
    assert node["node"]["cluster"] == "cilia-node"
    assert node["node"]["metadata"]["node_name"] == "node-1"  # the proxy name, not $NODE_NAME
    assert _tags(node) == {"cilia_role": "node", "cilia_proxy": "node-1", "cilia_node": "node-1"}

    side = bootstrap_config(ProxyId.parse("sidecar~shop/web-0"), env=env)
    md = side["node"]["metadata"]
    assert (md["role"], md["namespace"], md["pod_name"], md["pod_ip"], md["node_name"]) == (
        "sidecar", "shop", "web-0", "127.1.0.5", "node-7")
    assert _tags(side) == {"cilia_role": "sidecar", "cilia_proxy": "shop/web-0", "cilia_namespace": "shop",
                           "cilia_pod": "web-0"}

    gw = bootstrap_config(ProxyId.parse("gateway~infra/edge"), env={})
    assert gw["node"]["metadata"]["gateway"] == "edge" and "pod_ip" not in gw["node"]["metadata"]
    assert _tags(gw) == {"cilia_role": "gateway", "cilia_proxy": "infra/edge", "cilia_namespace": "infra",
                         "cilia_gateway": "edge"}

    ing = bootstrap_config(ProxyId.parse("ingress~cilia"), env={}, extra_metadata={"zone": "a"})
    assert ing["node"]["metadata"]["ingress_class"] == "cilia" and ing["node"]["metadata"]["zone"] == "a"
    assert _tags(ing) == {"cilia_role": "ingress", "cilia_proxy": "cilia", "cilia_ingress_class": "cilia"}

    # An explicit pod IP wins over the environment.
    assert bootstrap_config(ProxyId.parse("sidecar~a/b"), pod_ip="127.1.0.6", env=env)["node"]["metadata"][
        "pod_ip"] == "127.1.0.6"


def test_admin_on_loopback_and_ads_everywhere() -> None:
    cfg = bootstrap_config(ProxyId.parse("node~n"), "cilia.cilia-system.svc:18000", 15000, env={})
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    assert cfg["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert cfg["dynamic_resources"]["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    xds = cfg["static_resources"]["clusters"][0]
    assert xds["name"] == XDS_CLUSTER and xds["type"] == "STRICT_DNS"  # a host name is resolved
    gw = bootstrap_config(ProxyId.parse("gateway~infra/edge"), "cilia.cilia-system.svc:18000", env={})
    assert [c["name"] for c in gw["static_resources"]["clusters"]] == [XDS_CLUSTER]
    assert "listeners" not in cfg["static_resources"]  # no readiness listener for a node proxy by default
    ip = bootstrap_config(ProxyId.parse("node~n"), "[::1]:18000", env={})
    assert ip["static_resources"]["clusters"][0]["type"] == "STATIC"
    assert ip["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"] == {"address": "::1", "port_value": 18000}


def test_sidecar_readiness_listener() -> None:
    cfg = bootstrap_config(ProxyId.parse("sidecar~shop/web-0"), admin_port=15000, env={"POD_IP": "127.1.0.5"})
    (listener,) = cfg["static_resources"]["listeners"]
    assert listener["name"] == READINESS_LISTENER
    assert listener["address"]["socket_address"] == {"address": "127.1.0.5", "port_value": 15000}
    admin = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == ADMIN_CLUSTER)
    assert admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1", "port_value": 15000}
    # Another port when asked; none without a pod IP (the kubelet could not reach it anyway).
    other = bootstrap_config(ProxyId.parse("sidecar~shop/web-0"), admin_port=15000, pod_ip="127.1.0.5",
                             readiness_port=15021, env={})
    assert other["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 15021
    assert "listeners" not in bootstrap_config(ProxyId.parse("sidecar~shop/web-0"), env={})["static_resources"]
    # Not where admin itself listens (host-network pods): admin answers /ready there already.
    for ip in ("127.0.0.1", "0.0.0.0"):
        assert "listeners" not in bootstrap_config(ProxyId.parse("sidecar~a/b"), admin_port=15000, pod_ip=ip,
                                                   env={})["static_resources"]
    # Other roles only when a readiness port is given.
    gw = bootstrap_config(ProxyId.parse("gateway~a/b"), pod_ip="127.1.0.5", readiness_port=15021, env={})
    assert gw["static_resources"]["listeners"][0]["name"] == READINESS_LISTENER


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"xds": "nohost"}, "HOST:PORT"),
    ({"xds": "127.0.0.1:0"}, "1-65535"),
    ({"admin_port": 0}, "--admin-port"),
    ({"pod_ip": "web-0"}, "not an IP"),
    ({"readiness_port": 70000}, "--readiness-port"),
])
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_config(ProxyId.parse("sidecar~a/b"), env={}, **kwargs)


def test_cli_rejects_bad_input_with_exit_2() -> None:
    out = cli_bootstrap("--proxy", "sidecar~a/b", "--pod-ip", "not-an-ip")
    assert out.returncode == 2 and "not-an-ip" in out.stderr
    out = cli_bootstrap("--proxy", "nobody~x")
    assert out.returncode == 2 and "unknown role" in out.stderr


def test_node_proxy_has_ciliums_static_clusters() -> None:
    """CiliumEnvoyConfigs written for Cilium route to these names: the node bootstrap defines them."""
    cfg = bootstrap_config(ProxyId.parse("node~n"), "127.0.0.1:18000", 15123, env={})
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    assert set(clusters) == {XDS_CLUSTER, "/envoy-admin", "egress-cluster", "egress-cluster-tls",
                             "ingress-cluster", "ingress-cluster-tls"}
    admin = clusters["/envoy-admin"]
    assert admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"] == {"address": "127.0.0.1", "port_value": 15123}  # this Envoy's own admin
    for name in ("egress-cluster", "ingress-cluster", "egress-cluster-tls", "ingress-cluster-tls"):
        c = clusters[name]
        assert (c["type"], c["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
        tls = c.get("transport_socket", {}).get("typed_config", {}).get("@type", "")
        assert tls.endswith("UpstreamTlsContext") == name.endswith("-tls")
