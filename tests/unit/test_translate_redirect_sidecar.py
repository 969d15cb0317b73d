"""Sidecar pods in the node redirect policy: the sidecar's cgroup and capture address reach the agent."""

from __future__ import annotations

import pytest

from cilia.api import redirect_v1 as api
from cilia.identity import ProxyId
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import InputSnapshot
from cilia.render.resources import REDIRECT_POLICY
from cilia.render.world import render_world
from cilia.translate import translate
from cilia.translate.context import TranslateOptions

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: pay, labels: {cilia.io/mesh: sidecar}}
---
apiVersion: v1
kind: Pod
metadata:
  name: server-0
  namespace: pay
  annotations: {cilia.io/cgroup: pods/server-0, cilia.io/sidecar-cgroup: sidecars/server-0}
spec: {nodeName: n1, containers: [{name: app}]}
status: {podIP: 127.1.0.22}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: pay, annotations: {cilia.io/mesh: node, cilia.io/sidecar-cgroup: x}}
spec: {nodeName: n1, containers: [{name: app}]}
status: {podIP: 127.1.0.23}
"""


def pods(opts: TranslateOptions) -> dict[str, api.MeshPod]:
    snap = InputSnapshot.of(parse_text(MANIFESTS, "m.yaml").objects)
    result = translate(snap, opts)
    assert result.issues == ()
    res = render_world(result.ir).for_proxy(ProxyId.parse("agent~n1")).of(REDIRECT_POLICY)["n1"]
    msg = api.NodeRedirectPolicy()
    msg.ParseFromString(res.body)
    return {p.name: p for p in msg.pods}


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1", "127.0.0.1"),
    ("0.0.0.0", ""),  # listens everywhere: the agent's default (127.0.0.1) reaches it
    ("pod-ip", "127.1.0.22"),
    ("127.0.0.9", "127.0.0.9"),
])
def test_sidecar_pod_carries_its_sidecar_cgroup_and_capture_address(address: str, expected: str) -> None:
    got = pods(TranslateOptions(mesh_capture_port=15101, mesh_sidecar_capture_address=address))
    sc = got["server-0"]
    assert sc.mode == api.SIDECAR and sc.cgroup_path == "pods/server-0"
    assert sc.sidecar_cgroup_path == "sidecars/server-0"
    assert (sc.sidecar_address, sc.sidecar_port) == (expected, 15101)


def test_node_pod_has_no_sidecar_fields() -> None:
    node = pods(TranslateOptions(mesh_sidecar_capture_address="pod-ip"))["web-0"]
    assert node.mode == api.NODE
    assert (node.sidecar_address, node.sidecar_port, node.sidecar_cgroup_path) == ("", 0, "")
