"""Types are loaded per package when first met; every outcome must be what loading everything gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
BODIES = [
    ("type.googleapis.com/envoy.config.cluster.v3.Cluster", {"name": "c", "type": "EDS", "connect_timeout": "1s"}),
    ("type.googleapis.com/envoy.config.listener.v3.Listener", {
        "name": "l", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": HCM, "stat_prefix": "s", "rds": {"route_config_name": "r", "config_source": {"ads": {}}},
            "http_filters": [
                {"name": "lua", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": "x"}}},
                {"name": "r", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}),
    ("type.googleapis.com/envoy.config.listener.v3.Listener", {"name": "l", "filter_chains": [{"filters": [
        {"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.nope.v3.Nope"}}]}]}),
    ("type.googleapis.com/envoy.config.listener.v3.Listener", {"name": "l", "filter_chains": [{"filters": [
        {"name": "x", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"}}]}]}),
    ("type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute", {"disabled": True}),
    ("type.googleapis.com/envoy.config.route.v3.RouteConfiguration.Nope", {}),
    ("type.googleapis.com/os.path.Nope", {}),
    ("type.googleapis.com/google.protobuf.Duration", {}),
]

SCRIPT = """
import json, sys
from cilia.render import raw
mode, bodies = sys.argv[1], json.loads(sys.argv[2])
if mode == "all":
    raw.load_all_envoy_types()
out = []
for type_url, body in bodies:
    try:
        out.append(raw.parse_raw(type_url, dict(body, **{"@type": type_url})).SerializeToString().hex())
    except raw.RawParseError as exc:
        out.append(f"{type(exc).__name__}: {exc}")
print(json.dumps([out, raw._loaded]))
"""


def _run(mode: str) -> list[object]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, json.dumps(BODIES)], capture_output=True,
                          text=True, env=env, check=True, timeout=120)
    result: list[object] = json.loads(done.stdout)
    return result


def test_lazy_loading_gives_the_results_of_loading_everything() -> None:
    lazy, eager = _run("lazy"), _run("all")
    assert lazy[0] == eager[0]
    outcomes = lazy[0]
    assert isinstance(outcomes, list)
    assert not outcomes[1].startswith("RawParseError")  # nested Anys of packages not imported before
    assert "unknown type" in outcomes[5]


def test_a_known_type_needs_no_full_load() -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, "lazy", json.dumps(BODIES[:2])], capture_output=True,
                          text=True, env=env, check=True, timeout=120)
    outcomes, loaded = json.loads(done.stdout)
    assert loaded is False
    assert all(not o.startswith("RawParseError") for o in outcomes)
