"""deploy/grafana/cilia.json: every metric the dashboard queries, and every label it groups or filters by,
exists in a live `/metrics` of cilia in Kubernetes mode (fake API server) serving a real Envoy, and in that
Envoy's own `/stats/prometheus`, after pushes, ACKs, a NACK, a watch restart and status writes."""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_kube_envoy import cec, endpoint_slice, service

from support.backends import EchoBackend, echo_backends
from support.envoy import Envoy
from support.http import get
from support.kubecp import KubeWorld
from support.net import free_port

pytestmark = pytest.mark.e2e
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "cilia.json"
METRIC = re.compile(r"\b((?:cilia|envoy)_[a-z0-9_]+)")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"[^\"]*\"")
LABEL_VALUES = re.compile(r"label_values\(\s*([a-z0-9_]+)\s*,\s*([a-z0-9_]+)\s*\)")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')
SCRAPE_LABELS = {"job", "instance", "le"}  # added by Prometheus / used by histogram_quantile


def queries(dash: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", ())]
    out += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return out


def metric_names(expr: str) -> list[str]:
    """The cilia_/envoy_ metrics an expression reads (label names in `by (...)` and matchers left out)."""
    bare = MATCHER.sub("", BY.sub("", LABEL_VALUES.sub(r"\1", expr)))
    return METRIC.findall(bare)


def used_labels(expr: str) -> set[str]:
    labels = {lab.strip() for group in BY.findall(expr) for lab in group.split(",") if lab.strip()}
    return labels | set(MATCHER.findall(expr)) | {m[1] for m in LABEL_VALUES.findall(expr)}


def series_labels(text: str) -> dict[str, set[str]]:
    """metric name -> the label names its series carry."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            out.setdefault(m.group(1), set()).update(LABEL.findall(m.group(2) or ""))
    return out


@pytest.fixture
def world() -> Iterator[tuple[KubeWorld, list[EchoBackend]]]:
    with echo_backends(("echo-a", "127.0.0.2"), ("other", "127.0.0.4")) as backends:
        kw = KubeWorld().start()
        try:
            yield kw, backends
        finally:
            kw.stop()


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "cilia-control-plane" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "envoy_job"} <= names
    for p in dash["panels"]:
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["title"] and p["description"] and p["targets"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert metric_names(t["expr"]), t["expr"]
    # What the issue asks the dashboard to show.
    exprs = " ".join(queries(dash))
    for needed in ("cilia_xds_proxy_sync", "cilia_xds_connected_proxies", "cilia_xds_pushes_total",
                   "cilia_xds_convergence_seconds_bucket", "cilia_xds_nacks_total", "cilia_translate_duration_seconds",
                   "cilia_render_duration_seconds", "cilia_kubernetes_watch_restarts_total",
                   "cilia_status_writes_total", "envoy_control_plane_connected_state"):
        assert needed in exprs, needed


def test_every_queried_metric_exists_live(world: tuple[KubeWorld, list[EchoBackend]]) -> None:
    kw, (a, other) = world
    api = kw.api
    assert api is not None
    port = free_port()
    kw.call(api.create, service("echo", "127.96.0.10"))
    kw.call(api.create, endpoint_slice("echo", [a]))
    kw.call(api.create, service("other", "127.96.0.11"))
    kw.call(api.create, endpoint_slice("other", [other]))
    kw.call(api.create, cec(port, [("/", "default/echo")]))
    plane = kw.control_plane()  # with leader election: it writes status
    envoy = Envoy("node~kind-worker", plane.cp.xds_port, delta=True).start()
    url = f"http://127.0.0.1:{port}"

    def edit(new: dict[str, Any]) -> None:
        cur = api.get("cilium.io/v2", "CiliumEnvoyConfig", "demo", "default")
        assert cur is not None
        api.update({**copy.deepcopy(cur), "spec": new["spec"]})

    def scrape(u: str) -> str:
        with urllib.request.urlopen(u, timeout=5) as resp:
            return str(resp.read().decode())

    cilia_metrics = f"http://127.0.0.1:{plane.cp.admin_port}/metrics"
    try:
        envoy.wait_for(lambda: get(url + "/x").status == 200, what="CEC listener serving")
        kw.call(edit, cec(port, [("/other", "default/other"), ("/", "default/echo")]))
        envoy.wait_for(lambda: get(url + "/other").json()["backend"] == "other", what="new route")
        kw.call(edit, cec(port, [("/other", "default/other"), ("/", "default/echo")], bad_listener=True))
        envoy.wait_for(lambda: "cilia_xds_nacks_total" in scrape(cilia_metrics), timeout=5, what="a NACK")
        kw.call(api.send_watch_error, 410, "Expired")
        envoy.wait_for(lambda: "cilia_kubernetes_watch_restarts_total" in scrape(cilia_metrics), timeout=5,
                       what="a watch restart")
        envoy.wait_for(lambda: 'cilia_status_writes_total{result="written"} 0' not in scrape(cilia_metrics),
                       timeout=5, what="a status write")
        time.sleep(0.2)
        live = {"cilia": series_labels(scrape(cilia_metrics)),
                "envoy": series_labels(scrape(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus"))}
    finally:
        envoy.stop()

    assert live["cilia"]['cilia_xds_proxy_sync'] == {"role", "state"}
    dash = json.loads(DASHBOARD.read_text())
    checked = set()
    for expr in queries(dash):
        metrics = metric_names(expr)
        for name in metrics:
            source = live[name.split("_", 1)[0]]
            assert name in source, f"{name} (in {expr!r}) is not in a live /metrics"
            checked.add(name)
        labels = used_labels(expr)
        have = set().union(*(live[n.split("_", 1)[0]][n] for n in metrics))
        assert labels - SCRAPE_LABELS <= have, f"{expr!r}: labels {sorted(labels - SCRAPE_LABELS - have)} unknown"
    assert len({n for n in checked if n.startswith("cilia_")}) >= 15
    assert len({n for n in checked if n.startswith("envoy_")}) >= 8
