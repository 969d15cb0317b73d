"""Per-node redirect policies for the eBPF agent, from Pods, Namespaces and Services."""

from __future__ import annotations

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
metadata: {name: shop, labels: {cilia.io/mesh: node}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, uid: u-1, annotations: {cilia.io/cgroup: pods/web-0}}
spec: {nodeName: n1, containers: [{name: app}]}
status: {podIP: 127.1.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, annotations: {cilia.io/mesh: sidecar}}
spec: {nodeName: n1, containers: [{name: app}]}
status: {podIP: 127.1.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: old-0, namespace: legacy}
spec: {nodeName: n1, containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: grpc-0, namespace: shop, annotations: {cilia.io/mesh: proxyless}}
spec: {nodeName: n1, containers: [{name: app}]}
status: {podIP: 127.1.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: bad-0, namespace: shop, annotations: {cilia.io/mesh: sometimes}}
spec: {nodeName: n1, containers: [{name: app}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 127.96.0.10, ports: [{name: http, port: 80}, {name: udp, port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, ports: [{port: 80}]}
"""


def policy_for(node: str) -> api.NodeRedirectPolicy | None:
    snap = InputSnapshot.of(parse_text(MANIFESTS, "m.yaml").objects)
    result = translate(snap, TranslateOptions(mesh_capture_port=15001, mesh_inbound_port=15006))
    assert [i.object for i in result.issues] == ["Pod shop/bad-0"], "reported once, by the mesh translator"
    world = render_world(result.ir)
    resources = world.for_proxy(ProxyId.parse(f"agent~{node}")).of(REDIRECT_POLICY)
    if not resources:
        return None
    msg = api.NodeRedirectPolicy()
    msg.ParseFromString(resources[node].body)
    return msg


def test_node_policy_lists_mesh_pods_and_tcp_vips() -> None:
    p = policy_for("n1")
    assert p is not None and p.node_name == "n1" and p.proxy_port == 15001 and p.inbound_port == 15006
    pods = {(x.namespace, x.name): x for x in p.pods}
    assert set(pods) == {("shop", "web-0"), ("shop", "db-0")}, \
        "legacy (off), proxyless (no redirect: gRPC dials endpoints itself) and invalid-mode pods are out"
    assert pods[("shop", "web-0")].mode == api.NODE and pods[("shop", "web-0")].cgroup_path == "pods/web-0"
    assert list(pods[("shop", "web-0")].pod_ips) == ["127.1.0.5"] and pods[("shop", "web-0")].uid == "u-1"
    assert pods[("shop", "db-0")].mode == api.SIDECAR
    assert [(s.vip, s.port) for s in p.services] == [("127.96.0.10", 80)]


def test_nodes_without_mesh_pods_get_an_empty_policy_and_others_nothing() -> None:
    p = policy_for("n2")
    assert p is not None and not p.pods and not p.services
    assert policy_for("n3") is None


def test_cec_services_point_their_vips_at_the_config_listener() -> None:
    cec = """
apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata: {name: lb, namespace: shop}
spec:
  services: [{name: web, namespace: shop, ports: [80]}]
  resources:
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: first
    address: {socket_address: {address: 127.0.0.1, port_value: 17000}}
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: second
"""
    snap = InputSnapshot.of(parse_text(MANIFESTS + "---\n" + cec, "m.yaml").objects)
    world = render_world(translate(snap).ir)
    msg = api.NodeRedirectPolicy()
    msg.ParseFromString(world.for_proxy(ProxyId.parse("agent~n1")).of(REDIRECT_POLICY)["n1"].body)
    # No `listener`: as in Cilium, the config's last listener (Cilium's agent takes the port of the last
    # one it sees); only the listed Service port.
    second = translate(snap).ir.redirects[0]
    assert second.listener == "shop/lb/second" and second.listener_port not in (0, 17000)
    assert [(s.vip, s.port, s.listener_port) for s in msg.services] == [("127.96.0.10", 80, second.listener_port)]
