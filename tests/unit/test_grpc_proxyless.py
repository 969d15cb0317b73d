"""Proxyless gRPC: the grpc~ role, its scopes, the translator's targets, what gRPC's xDS client is sent
(only fields and specifiers it accepts), and its bootstrap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from cilia.errors import UnknownProxyRole
from cilia.identity import ProxyId
from cilia.ir import model as ir
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import InputSnapshot
from cilia.mesh.bootstrap import grpc_bootstrap_config
from cilia.render import envoy as r
from cilia.render.resources import ENDPOINT, LISTENER, ROUTE
from cilia.render.world import RenderedWorld, ResourceCache, render_world
from cilia.translate import TranslationResult, translate
from cilia.translate.context import TranslateOptions
from cilia.translate.grpc import target_names

GOLDEN_INPUT = Path(__file__).resolve().parent.parent / "golden" / "translate" / "grpc-proxyless" / "input.yaml"


def world_of(text: str, opts: TranslateOptions | None = None) -> tuple[TranslationResult, RenderedWorld]:
    parsed = parse_text(text, "test")
    assert parsed.ok, parsed.issues
    result = translate(InputSnapshot.of(parsed.objects), opts)
    return result, render_world(result.ir, ResourceCache())


# -- identity and scopes -----------------------------------------------------------------------------------------
def test_grpc_role_is_namespace_and_pod() -> None:
    p = ProxyId.parse("grpc~shop/web-0")
    assert (p.role, p.namespace, p.short_name) == ("grpc", "shop", "web-0")
    for bad in ("grpc~web-0", "grpc~shop/", "grpc~/web-0", "grpc~a/b/c"):
        with pytest.raises(UnknownProxyRole, match="NAMESPACE/NAME"):
            ProxyId.parse(bad)


def test_scope_exclusion_and_overlap() -> None:
    everyone = ir.ProxyScope(frozenset({"grpc"}))
    but_client = ir.ProxyScope(frozenset({"grpc"}), exclude_namespaces=frozenset({"client"}))
    client = ir.ProxyScope(frozenset({"grpc"}), namespaces=frozenset({"client"}))
    assert but_client.matches("grpc", "default/a", {}) and not but_client.matches("grpc", "client/a", {})
    assert client.matches("grpc", "client/a", {}) and not client.matches("grpc", "default/a", {})
    assert not but_client.may_overlap(client) and not client.may_overlap(but_client)
    assert everyone.may_overlap(client) and everyone.may_overlap(but_client)
    other = ir.ProxyScope(frozenset({"grpc"}), namespaces=frozenset({"other"}))
    assert not other.may_overlap(client)
    # A node proxy is in every namespace: namespaces never separate scopes that include the node role.
    mesh = ir.ProxyScope(frozenset({"node", "grpc"}), namespaces=frozenset({"client"}))
    assert mesh.may_overlap(ir.ProxyScope(frozenset({"node"}), namespaces=frozenset({"other"})))


# -- translation ------------------------------------------------------------------------------------------------
def test_three_names_per_tcp_port_of_services_with_endpoints() -> None:
    _, world = world_of(GOLDEN_INPUT.read_text())
    view = world.for_proxy(ProxyId.parse("grpc~default/app"))
    listeners = view.of(LISTENER)
    want = {n for svc, port in (("echo", 7070), ("echo-v2", 7070), ("peers", 9000))
            for n in target_names("default", svc, port, "cluster.local")}
    assert set(listeners) == want  # no UDP port, no ExternalName Service
    for name, res in listeners.items():
        li = listener_pb2.Listener.FromString(res.body)
        hcm = hcm_pb2.HttpConnectionManager()
        assert li.api_listener.api_listener.Unpack(hcm) and not li.HasField("address")
        full = name.split(".")[0] + ".default.svc.cluster.local:" + name.rsplit(":", 1)[1]
        assert hcm.rds.route_config_name == full
    routes = view.of(ROUTE)
    rc = route_pb2.RouteConfiguration.FromString(routes["echo.default.svc.cluster.local:7070"].body)
    assert list(rc.virtual_hosts[0].domains) == list(target_names("default", "echo", 7070, "cluster.local"))
    # Envoy proxies get none of it.
    assert not world.for_proxy(ProxyId.parse("sidecar~default/app")).of(LISTENER)


def test_consumer_routes_only_for_clients_in_that_namespace() -> None:
    _, world = world_of(GOLDEN_INPUT.read_text())
    assert not world.issues  # the two views of one route config name never reach the same client

    def echo_routes(proxy: str) -> list[str]:
        body = world.for_proxy(ProxyId.parse(proxy)).of(ROUTE)["echo.default.svc.cluster.local:7070"].body
        return [rt.name for rt in route_pb2.RouteConfiguration.FromString(body).virtual_hosts[0].routes]

    assert all("/HTTPRoute/client/" in n for n in echo_routes("grpc~client/c1"))
    assert all("/GRPCRoute/default/" in n for n in echo_routes("grpc~default/app"))
    assert echo_routes("grpc~elsewhere/x") == echo_routes("grpc~default/app")


def test_cluster_domain_option() -> None:
    _, world = world_of(GOLDEN_INPUT.read_text(), TranslateOptions(cluster_domain="corp.example"))
    names = set(world.for_proxy(ProxyId.parse("grpc~default/app")).of(LISTENER))
    assert "echo.default.svc.corp.example:7070" in names and "echo.default.svc.cluster.local:7070" not in names


def test_unchanged_services_keep_their_objects() -> None:
    """Per-Service memo: re-translating after an unrelated change hands rendering the very same nodes."""
    text = GOLDEN_INPUT.read_text()
    first, _ = world_of(text)
    second, _ = world_of(text + "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: new, namespace: x}\n"
                                "spec: {clusterIP: 127.96.0.99, ports: [{port: 1}]}\n")
    a = next(b for b in first.ir.bundles if b.key == "grpc").api_listeners
    b = next(b for b in second.ir.bundles if b.key == "grpc").api_listeners
    same = {x.name: x for x in a}
    assert all(same[x.name] is x for x in b if x.name in same) and len(b) == len(a) + 3


# -- rendering for gRPC -----------------------------------------------------------------------------------------
def test_api_listener_bytes_are_the_protobuf_serialisation() -> None:
    for name in ("echo.default.svc.cluster.local:7070", "x" * 300 + ".ns:1"):
        al = ir.ApiListener(name, name.upper())
        assert r.api_listener_bytes(al) == r.render_api_listener(al).SerializeToString(deterministic=True)


def _grpc_route(route: ir.Route) -> route_pb2.Route:
    rc = ir.RouteConfig("t", (ir.VirtualHost("t", ("t:1",), (route,)),), client="grpc")
    return r.render_route_config(rc).virtual_hosts[0].routes[0]


@pytest.mark.parametrize(("path", "field", "value"), [
    (None, "prefix", "/"),
    (ir.PathMatch("prefix", "/"), "prefix", "/"),
    (ir.PathMatch("prefix", "/echo.Echo/"), "safe_regex", r"/echo\.Echo(/.*)?"),
    (ir.PathMatch("raw_prefix", "/echo.Echo/"), "prefix", "/echo.Echo/"),
    (ir.PathMatch("exact", "/echo.Echo/Call"), "path", "/echo.Echo/Call"),
    (ir.PathMatch("regex", "/[^/]+/Call"), "safe_regex", "/[^/]+/Call"),
])
def test_grpc_path_specifiers(path: ir.PathMatch | None, field: str, value: str) -> None:
    """gRPC accepts prefix, path and safe_regex only (path_separated_prefix is a NACK)."""
    route = _grpc_route(ir.Route("r", ir.RouteMatch(path=path), (ir.Backend("c"),)))
    assert route.match.WhichOneof("path_specifier") == field
    got = route.match.safe_regex.regex if field == "safe_regex" else getattr(route.match, field)
    assert got == value


def test_grpc_route_actions() -> None:
    plain = _grpc_route(ir.Route("r", ir.RouteMatch(), (ir.Backend("c"),), timeout_ms=0,
                                 request_headers=ir.HeaderMods(set=(("x", "y"),)), mirrors=(ir.Mirror("m"),)))
    assert plain.route.cluster == "c" and not plain.route.HasField("max_stream_duration")
    assert not plain.request_headers_to_add and not plain.route.request_mirror_policies
    assert not plain.route.upgrade_configs and not plain.route.HasField("timeout")
    timed = _grpc_route(ir.Route("r", ir.RouteMatch(), (ir.Backend("a", 3), ir.Backend("b", 1), ir.Backend("z", 0)),
                                 timeout_ms=3000, per_try_timeout_ms=1500))
    assert timed.route.max_stream_duration.max_stream_duration.ToMilliseconds() == 1500
    assert [(c.name, c.weight.value) for c in timed.route.weighted_clusters.clusters] == [("a", 3), ("b", 1)]
    redirect = _grpc_route(ir.Route("r", ir.RouteMatch(), redirect=ir.Redirect(host="x", status_code=301)))
    assert redirect.direct_response.status == 301 and not redirect.HasField("redirect")


def test_endpoints_always_have_locality_and_weight() -> None:
    es = ir.EndpointSet("e", (ir.LocalityEndpoints((ir.Endpoint("127.1.0.1", 1), ir.Endpoint("127.1.0.2", 1))),
                              ir.LocalityEndpoints((ir.Endpoint("127.1.0.3", 1),), zone="z", priority=1)))
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(r.render_endpoints(es).SerializeToString())
    assert [(e.HasField("locality"), e.load_balancing_weight.value) for e in cla.endpoints] == [(True, 2), (True, 1)]
    _, world = world_of(GOLDEN_INPUT.read_text())
    for res in world.pool.values():
        assert res.type_url == ENDPOINT
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(res.body)
        assert all(e.HasField("locality") and e.load_balancing_weight.value >= 1 for e in cla.endpoints)


# -- bootstrap --------------------------------------------------------------------------------------------------
def test_grpc_bootstrap() -> None:
    cfg = grpc_bootstrap_config(ProxyId.parse("grpc~shop/web-0"), "cilia.cilia-system.svc:18000", env={},
                                pod_ip="127.1.0.5")
    assert cfg["xds_servers"] == [{"server_uri": "cilia.cilia-system.svc:18000",
                                   "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}]
    assert cfg["node"]["id"] == "grpc~shop/web-0" and cfg["node"]["cluster"] == "cilia-grpc"
    assert cfg["node"]["metadata"]["pod_name"] == "web-0" and cfg["node"]["metadata"]["pod_ip"] == "127.1.0.5"
    tls = grpc_bootstrap_config(ProxyId.parse("grpc~shop/web-0"), "[::1]:18443", env={}, tls_dir="/etc/cilia/tls")
    server = tls["xds_servers"][0]
    assert server["server_uri"] == "[::1]:18443"
    assert server["channel_creds"][0]["type"] == "tls"
    assert server["channel_creds"][0]["config"]["private_key_file"] == "/etc/cilia/tls/key.pem"
    with pytest.raises(ValueError, match="grpc~NAMESPACE/POD"):
        grpc_bootstrap_config(ProxyId.parse("sidecar~shop/web-0"))


def test_bootstrap_cli() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cilia", "bootstrap", *args], capture_output=True, text=True,
                              timeout=60)

    out = run("--proxy", "grpc~default/client", "--grpc", "--xds", "127.0.0.1:18000")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["node"]["id"] == "grpc~default/client"
    out = run("--proxy", "grpc~default/client")
    assert out.returncode == 2 and "add --grpc" in out.stderr
    out = run("--proxy", "node~n1", "--grpc")
    assert out.returncode == 2 and "grpc~NAMESPACE/POD" in out.stderr


# -- ring hash when the Service asks ----------------------------------------------------------------------------
RING = """apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default, annotations: ANNOTATIONS}
spec: {clusterIP: 127.96.0.73, ports: [{name: grpc, port: 7070}]}
"""


def _sticky(annotations: str) -> tuple[TranslationResult, RenderedWorld]:
    return world_of(RING.replace("ANNOTATIONS", annotations))


@pytest.mark.parametrize(("annotations", "policies"), [
    ('{"cilia.io/lb-policy": ring-hash, "cilia.io/hash-header": X-User}', [("header", "x-user")]),
    ('{"cilia.io/lb-policy": ring-hash}', [("connection_properties", ""), ("filter_state", "io.grpc.channel_id")]),
])
def test_ring_hash_cluster_and_route_hash_policy(annotations: str, policies: list[tuple[str, str]]) -> None:
    result, world = _sticky(annotations)
    assert not result.issues
    view = world.for_proxy(ProxyId.parse("grpc~default/c"))
    cluster = view.of("type.googleapis.com/envoy.config.cluster.v3.Cluster")["default/sticky:7070"]
    assert cluster_pb2.Cluster.FromString(cluster.body).lb_policy == cluster_pb2.Cluster.RING_HASH
    rc = route_pb2.RouteConfiguration.FromString(view.of(ROUTE)["sticky.default.svc.cluster.local:7070"].body)
    got = []
    for hp in rc.virtual_hosts[0].routes[0].route.hash_policy:
        kind = hp.WhichOneof("policy_specifier")
        got.append((kind, hp.header.header_name if kind == "header" else
                    hp.filter_state.key if kind == "filter_state" else ""))
    assert got == policies


def test_lb_policy_annotation_errors_are_reported() -> None:
    result, world = _sticky('{"cilia.io/lb-policy": maglev}')
    assert any("cilia.io/lb-policy" in i.field and "round-robin" in i.message for i in result.issues)
    result, _ = _sticky('{"cilia.io/hash-header": x-user}')
    assert any("no effect without" in i.message for i in result.issues)
    rc = world.for_proxy(ProxyId.parse("grpc~default/c")).of(ROUTE)["sticky.default.svc.cluster.local:7070"]
    assert not route_pb2.RouteConfiguration.FromString(rc.body).virtual_hosts[0].routes[0].route.hash_policy


# -- HTTPRoute retry ---------------------------------------------------------------------------------------------
RETRY_ROUTE = """apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {clusterIP: 127.96.0.70, ports: [{name: grpc, port: 7070}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - backendRefs: [{name: echo, port: 7070}]
    timeouts: {request: 5s, backendRequest: 1s}
    retry: RETRY
"""


def test_http_route_retry_for_envoy_and_grpc() -> None:
    result, world = world_of(RETRY_ROUTE.replace("RETRY", "{codes: [503, 500, 400], attempts: 3, backoff: 50ms}"))
    assert not result.issues
    grpc_rc = world.for_proxy(ProxyId.parse("grpc~default/c")).of(ROUTE)["echo.default.svc.cluster.local:7070"]
    action = route_pb2.RouteConfiguration.FromString(grpc_rc.body).virtual_hosts[0].routes[0].route
    assert action.retry_policy.retry_on == "unavailable,internal"  # 500 has no gRPC status to retry on
    assert action.retry_policy.num_retries.value == 3
    assert action.retry_policy.retry_back_off.base_interval.ToMilliseconds() == 50
    assert action.max_stream_duration.max_stream_duration.ToMilliseconds() == 5000  # all tries together
    rc = next(rc for b in result.ir.bundles for rc in b.routes if rc.name == "mesh/default/echo:7070")
    envoy = r.render_route_config(rc).virtual_hosts[0].routes[0].route.retry_policy
    assert envoy.retry_on == "retriable-status-codes,connect-failure,refused-stream,reset"
    assert list(envoy.retriable_status_codes) == [503, 500, 400] and envoy.num_retries.value == 3
    assert envoy.per_try_timeout.ToMilliseconds() == 1000


@pytest.mark.parametrize(("retry", "message"), [
    ("{codes: [200]}", "400-599"),
    ("{attempts: -1}", ">= 0"),
    ("{backoff: soon}", "not a duration"),
])
def test_http_route_retry_errors(retry: str, message: str) -> None:
    parsed = parse_text(RETRY_ROUTE.replace("RETRY", retry), "test")
    assert any("retry" in i.field and message in i.message for i in parsed.issues), parsed.issues


def test_zero_attempts_means_no_retry() -> None:
    _, world = world_of(RETRY_ROUTE.replace("RETRY", "{attempts: 0}"))
    grpc_rc = world.for_proxy(ProxyId.parse("grpc~default/c")).of(ROUTE)["echo.default.svc.cluster.local:7070"]
    assert not route_pb2.RouteConfiguration.FromString(grpc_rc.body).virtual_hosts[0].routes[0].route.HasField(
        "retry_policy")


def test_default_target_routes_are_the_mesh_default_shaped_for_grpc() -> None:
    from cilia.translate.grpc import _for_grpc, _service_targets
    from cilia.translate.mesh import default_route_config

    text = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: ns, annotations: {cilia.io/lb-policy: ring-hash, cilia.io/hash-header: x-user}}
spec: {clusterIP: 127.96.0.7, ports: [{name: grpc, port: 9000}, {name: web, port: 8080}]}
"""
    parsed = parse_text(text, "test")
    snapshot = InputSnapshot.of(parsed.objects)
    obj = next(snapshot.list("Service"))
    targets = _service_targets(obj, snapshot, "cluster.local").targets
    assert [t.port for t in targets] == [9000, 8080]
    for t in targets:
        expected = _for_grpc(default_route_config(t.names[0], t.cluster.name, (str(obj.ref),),
                                                  t.cluster.hash_policy), t.names)
        assert t.default_routes == expected
        assert t.cluster.hash_policy  # the annotation's hashing carried into the route
