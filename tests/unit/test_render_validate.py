"""Envoy's field rules, checked on CiliumEnvoyConfig resources before they are sent (render/validate.py):
each broken rule named by its field path, valid resources untouched, and Envoy itself agreeing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.render.raw import RawParseError, RawValidationError, parse_raw
from support.envoy import envoy_binary

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def listener(port: Any = 18900, stat_prefix: str = "web", domains: list[str] | None = None) -> dict[str, Any]:
    address: dict[str, Any] = {"address": "127.0.0.1"}
    if port is not None:
        address["port_value"] = port
    return {"@type": LISTENER, "name": "l", "address": {"socket_address": address},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": HCM, "stat_prefix": stat_prefix,
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"] if domains is None else domains,
                                                    "routes": [{"match": {"prefix": "/"},
                                                                "direct_response": {"status": 200}}]}]},
                "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}]}}]}]}


def errors_of(body: dict[str, Any]) -> str:
    with pytest.raises(RawValidationError) as exc:
        parse_raw(body["@type"], body)
    return str(exc.value)


def test_valid_resources_pass() -> None:
    assert parse_raw(LISTENER, listener()).name == "l"
    parse_raw(CLUSTER, {"@type": CLUSTER, "name": "c", "type": "STATIC", "connect_timeout": "1s",
                        "circuit_breakers": {"thresholds": [{"max_retries": 128}]}})
    parse_raw(ROUTE, {"@type": ROUTE, "name": "r"})  # no virtual hosts: allowed


@pytest.mark.parametrize(("body", "expected"), [
    (listener(port=None), "address.socket_address.port_specifier: one of port_value, named_port is required"),
    (listener(port=70000), "address.socket_address.port_value: must be <= 65535, got 70000"),
    (listener(stat_prefix=""), "filter_chains[0].filters[0].typed_config.stat_prefix: is required"),
    (listener(domains=[]), "route_config.virtual_hosts[0].domains: must have at least 1 item(s), has 0"),
    ({"@type": CLUSTER, "name": "c", "connect_timeout": "0s"}, "connect_timeout: must be > 0s, got 0s"),
    ({"@type": CLUSTER, "name": "c", "lb_policy": 42}, "lb_policy: 42 is not a value of LbPolicy"),
    ({"@type": ROUTE, "name": "r", "virtual_hosts": [{"name": "", "domains": ["*"]}]},
     "virtual_hosts[0].name: is required"),
], ids=["oneof-required", "uint32-bound", "string-in-any", "min-items", "duration", "enum", "string"])
def test_each_broken_rule_is_named(body: dict[str, Any], expected: str) -> None:
    assert expected in errors_of(body)


def test_a_parse_error_is_not_a_validation_error() -> None:
    with pytest.raises(RawParseError) as exc:
        parse_raw(CLUSTER, {"@type": CLUSTER, "name": "c", "nope": 1})
    assert not isinstance(exc.value, RawValidationError)


def test_at_most_five_errors() -> None:
    body = {"@type": ROUTE, "name": "r", "virtual_hosts": [{"name": "", "domains": []} for _ in range(4)]}
    assert errors_of(body).count(";") == 4


def test_envoy_agrees_with_what_is_rejected(tmp_path: Path) -> None:
    """What is rejected here, Envoy rejects too (a static listener in a bootstrap, `--mode validate`)."""
    import subprocess

    for body, ok in ((listener(), True), (listener(port=None), False), (listener(domains=[]), False)):
        cfg = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
               "static_resources": {"listeners": [{k: v for k, v in body.items() if k != "@type"}]}}
        path = tmp_path / "b.yaml"
        path.write_text(yaml.safe_dump(cfg))
        run = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True,
                             text=True, timeout=60)
        assert (run.returncode == 0) == ok, run.stdout[-2000:] + run.stderr[-2000:]
