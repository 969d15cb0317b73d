"""`cilia serve --kubernetes` as a whole (ControlPlane with source, status writer and leader election)
against the fake API server: no rebuild on an unchanged relist, CEC status written once per change,
two replicas with one writer and failover, and every request allowed by deploy/rbac.yaml."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cilia.k8s.kubesource import DEFAULT_SECRETS_NAMESPACE
from cilia.k8s.rbac import Permission, cluster_permissions, namespace_permissions, secret_permissions
from kubefake import FakeApiServer
from support.kubecp import FAST_LEASE, KubeControlPlane, wait_until
from support.rbac import rbac_grants

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_FILTERS = [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]


def service(name: str, vip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80}]}}


def slice_(name: str, addr: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": [addr], "conditions": {"ready": True}}]}


def cec(port: int, cluster: str = "default/echo", *, bad_type: bool = False, name: str = "demo") -> dict[str, Any]:
    listener = {"@type": LISTENER, "name": "listener",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": {"@type": HCM, "stat_prefix": "demo",
                                                                 "rds": {"route_config_name": "routes"},
                                                                 "http_filters": HTTP_FILTERS}}]}]}
    resources: list[dict[str, Any]] = [
        listener,
        {"@type": ROUTE, "name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        {"@type": CLUSTER, "name": cluster, "type": "EDS", "connect_timeout": "1s"},
    ]
    if bad_type:
        resources.append({"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", "name": "x"})
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"backendServices": [{"name": cluster.split("/")[1], "namespace": "default"}],
                     "resources": resources}}


def edit(api: FakeApiServer, new: dict[str, Any]) -> None:
    """Change a CEC's spec the way a user's `kubectl apply` does: status stays as it is."""
    cur = api.get("cilium.io/v2", "CiliumEnvoyConfig", new["metadata"]["name"], "default")
    assert cur is not None
    api.update({**cur, "spec": new["spec"]})


def conditions(api: FakeApiServer, name: str = "demo") -> dict[str, dict[str, Any]]:
    obj = api.get("cilium.io/v2", "CiliumEnvoyConfig", name, "default") or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def status_writes(api: FakeApiServer, name: str = "demo") -> list[Any]:
    return api.find_requests(verb="patch", subresource="status", name=name)


async def fetch(plane: KubeControlPlane, path: str) -> str:
    """GET from the admin server (in a thread: the server runs on this loop)."""
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{plane.cp.admin_port}{path}", timeout=5) as resp:
            return str(resp.read().decode())
    return await asyncio.to_thread(get)


async def settle(plane: KubeControlPlane, quiet: float = 0.3, within: float = 5.0) -> None:
    """Wait until no rebuild happened for `quiet` seconds."""
    deadline = time.monotonic() + within
    last, since = plane.cp.counters.rebuilds, time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "control plane did not settle"
        await asyncio.sleep(0.02)
        if plane.cp.counters.rebuilds != last:
            last, since = plane.cp.counters.rebuilds, time.monotonic()


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(bookmark_interval=0.1) as server:
        server.create(service("echo", "127.96.0.10"))
        server.create(slice_("echo", "127.1.0.5", 8080))
        server.create(cec(15080))
        yield server
        assert server.server_errors == []


async def test_status_once_per_change_and_relist_without_rebuild(api: FakeApiServer) -> None:
    plane = await KubeControlPlane(api, leader_election=False).start()
    try:
        await wait_until(lambda: conditions(api).get("Accepted", {}).get("status") == "True", what="Accepted")
        assert conditions(api)["Programmed"]["status"] == "True"
        config = plane.cp.proxy_config("node~n1")
        assert any(r["name"] == "default/demo/listener" for r in config["listeners"])
        await settle(plane)
        assert len(status_writes(api)) == 1
        rebuilds, revision = plane.cp.counters.rebuilds, plane.cp.store.revision
        world = plane.cp.cache.world
        source = plane.kube.source
        served = sum(1 for k in source._kinds if source.served(k))

        # Every watch expires (410): relist everything, change nothing, rebuild and push nothing.
        relists = source.relists
        api.drop_watches()
        api.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",  # a kind cilia does not read
                    "metadata": {"name": "bump", "namespace": "default"}})
        api.compact()
        await wait_until(lambda: source.relists >= relists + served, what="all kinds relisted")
        await asyncio.sleep(0.3)
        assert plane.cp.counters.rebuilds == rebuilds and plane.cp.store.revision == revision
        assert plane.cp.cache.world is world  # nothing new was handed to the xDS streams
        assert source.watch_restarts[("Service", "expired")] == 1
        assert len(status_writes(api)) == 1
        metrics = await fetch(plane, "/metrics")
        restarts = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("cilia_kubernetes_watch_restarts_total{"))
        assert restarts == sum(source.watch_restarts.values())

        # An unrelated change rebuilds but writes no status.
        api.create(service("other", "127.96.0.11"))
        await wait_until(lambda: plane.cp.counters.rebuilds > rebuilds, what="rebuild")
        await settle(plane)
        assert len(status_writes(api)) == 1

        # The config gets rejected: exactly one write; then fixed: exactly one more.
        edit(api, cec(15080, bad_type=True))
        await wait_until(lambda: conditions(api)["Accepted"]["status"] == "False", what="Accepted=False")
        assert "unsupported resource type" in conditions(api)["Accepted"]["message"]
        assert conditions(api)["Programmed"]["reason"] == "Invalid"
        await settle(plane)
        assert len(status_writes(api)) == 2
        edit(api, cec(15080))
        await wait_until(lambda: conditions(api)["Accepted"]["status"] == "True", what="Accepted again")
        await settle(plane)
        assert len(status_writes(api)) == 3
        issues = json.loads(await fetch(plane, "/debug/issues"))
        assert issues == []
        shown = json.loads(await fetch(plane, "/debug/status"))  # what is written, as the admin API shows it
        (demo,) = [s for s in shown if s["kind"] == "CiliumEnvoyConfig"]
        assert demo["metadata"] == {"namespace": "default", "name": "demo", "generation": 3}
        assert [(c["type"], c["status"]) for c in demo["status"]["conditions"]] == [("Accepted", "True"),
                                                                                    ("Programmed", "True")]
    finally:
        await plane.stop()


async def test_two_replicas_one_writer_failover_and_rbac(api: FakeApiServer) -> None:
    a = await KubeControlPlane(api, identity="a").start()
    b = await KubeControlPlane(api, identity="b").start()
    planes = [a, b]
    try:
        await wait_until(lambda: sum(p.kube.is_leader() for p in planes) == 1, what="one leader")
        leader, follower = (a, b) if a.kube.is_leader() else (b, a)
        await wait_until(lambda: conditions(api).get("Accepted", {}).get("status") == "True", what="status")
        await settle(leader)
        await settle(follower)
        assert leader.kube.writer.stats.writes == 1 and follower.kube.writer.stats.writes == 0
        for p in planes:  # both serve the same config
            assert any(r["name"] == "default/demo/listener" for r in p.cp.proxy_config("node~n1")["listeners"])

        await leader.crash()  # no release: the follower must wait for the lease to expire
        t0 = time.monotonic()
        await wait_until(lambda: follower.kube.is_leader(), within=5, what="failover")
        took = time.monotonic() - t0
        assert took <= FAST_LEASE.lease_duration_s + 2 * 1.2 * FAST_LEASE.retry_period_s + 0.6  # loaded machine
        edit(api, cec(15080, bad_type=True))
        await wait_until(lambda: conditions(api)["Accepted"]["status"] == "False", what="new leader writes")
        assert follower.kube.writer.stats.writes == 1
        assert leader.kube.writer.stats.writes == 1  # the old leader wrote nothing more
    finally:
        for p in planes:
            await p.stop()

    # Every request both replicas made is allowed by deploy/rbac.yaml ...
    grants = rbac_grants()
    seen = set()
    for r in api.requests:
        assert r.verb in ("list", "watch", "get", "create", "update", "patch"), (r.method, r.path)
        resource = r.plural + (f"/{r.subresource}" if r.subresource else "")
        assert grants.allows(r.group, resource, r.verb, r.namespace, r.name, lease_namespace=FAST_LEASE.namespace), \
            f"{r.verb} {r.group}/{resource} {r.namespace}/{r.name} is not granted"
        seen.add(Permission(r.group, resource, r.verb))
    # ... the client's own count of its calls agrees, and only declared permissions were used.
    declared = cluster_permissions() | namespace_permissions() | secret_permissions()
    assert seen <= declared
    # Secrets were read in the secrets namespace only, never across namespaces.
    secret_reads = {r.namespace for r in api.requests if r.plural == "secrets"}
    assert secret_reads == {DEFAULT_SECRETS_NAMESPACE}
    for p in planes:
        calls = {Permission(g, res, v) for (v, g, res) in p.kube.api.calls}
        assert calls <= declared
    assert {"list", "watch", "get", "create", "update", "patch"} == {p.verb for p in seen}


GATEWAY_OBJECTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: cilia}
spec: {controllerName: cilia.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default, generation: 2}
spec:
  gatewayClassName: cilia
  listeners:
  - {name: http, port: 80, protocol: HTTP}
status:  # what the API server gives a new Gateway
  conditions:
  - {type: Accepted, status: Unknown, reason: Pending, message: Waiting for controller,
     lastTransitionTime: "1970-01-01T00:00:00Z"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default, generation: 3}
spec:
  parentRefs: [{name: gw}]
  hostnames: [web.example.com]
  rules:
  - backendRefs: [{name: echo, port: 80}]
status:
  parents:
  - parentRef: {name: other-gw}
    controllerName: example.com/other-controller
    conditions:
    - {type: Accepted, status: "True", reason: Accepted, message: theirs, lastTransitionTime: "2020-01-01T00:00:00Z"}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: cilia}
spec: {controller: cilia.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: site, namespace: default}
spec:
  ingressClassName: cilia
  rules:
  - host: site.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}
"""


async def test_gateway_and_ingress_statuses_written_once_and_converge(api: FakeApiServer) -> None:
    import yaml

    for doc in yaml.safe_load_all(GATEWAY_OBJECTS):
        api.create(doc)
    plane = await KubeControlPlane(api, leader_election=False).start()
    try:
        writer = plane.kube.writer
        wanted = {(s.kind, s.name) for s in writer.desired()}
        assert {("GatewayClass", "cilia"), ("Gateway", "gw"), ("HTTPRoute", "web"), ("Ingress", "site"),
                ("CiliumEnvoyConfig", "demo")} <= wanted
        await wait_until(lambda: all(len(status_writes(api, name)) == 1 for _, name in wanted), what="written")
        await settle(plane, quiet=0.5)
        for _, name in wanted:  # statuses converge: one write each, however many rebuilds followed
            assert len(status_writes(api, name)) == 1, name
        gw = api.get("gateway.networking.k8s.io/v1", "Gateway", "gw", "default")
        assert gw is not None
        accepted = {c["type"]: c for c in gw["status"]["conditions"]}["Accepted"]
        assert accepted["status"] == "True" and accepted["lastTransitionTime"] != "1970-01-01T00:00:00Z"
        route = api.get("gateway.networking.k8s.io/v1", "HTTPRoute", "web", "default")
        assert route is not None
        controllers = sorted(p["controllerName"] for p in route["status"]["parents"])
        assert controllers == ["cilia.io/gateway-controller", "example.com/other-controller"]
        gc = api.get("gateway.networking.k8s.io/v1", "GatewayClass", "cilia")
        assert gc is not None and gc["status"]["conditions"][0]["status"] == "True"
        ing = api.get("networking.k8s.io/v1", "Ingress", "site", "default")
        assert ing is not None and "loadBalancer" in ing["status"]
        # Something unrelated changes: rebuilds, and not a single status write.
        before = len(api.find_requests(verb="patch", subresource="status"))
        rebuilds = plane.cp.counters.rebuilds
        api.create(service("third", "127.96.0.12"))
        await wait_until(lambda: plane.cp.counters.rebuilds > rebuilds, what="rebuild")
        await settle(plane)
        assert len(api.find_requests(verb="patch", subresource="status")) == before
    finally:
        await plane.stop()


async def test_broken_election_shows_in_metrics_readyz_debug_and_status(api: FakeApiServer) -> None:
    """--lease-namespace names a namespace that does not exist: every view says so, /readyz fails on the
    leader-election check after the lease duration, and creating the namespace heals it without a restart."""
    from cilia.cli import main
    from cilia.k8s.leader import LeaseConfig
    from cilia.obs.metrics import parse_prometheus

    lease = LeaseConfig("cilia-leader", "missing", "r1", FAST_LEASE.lease_duration_s, FAST_LEASE.renew_deadline_s,
                        FAST_LEASE.retry_period_s)
    plane = await KubeControlPlane(api, lease=lease).start()

    async def get(path: str) -> tuple[int, str]:
        try:
            return 200, await fetch(plane, path)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        await wait_until(lambda: plane.kube.elector.errors["namespace_not_found"] > 0, what="the error counted")
        metrics = parse_prometheus((await get("/metrics"))[1])
        assert metrics['cilia_leader{lease="missing/cilia-leader"}'] == 0
        assert metrics['cilia_leader_election_errors_total{reason="namespace_not_found"}'] >= 1
        assert metrics['cilia_leader_election_errors_total{reason="forbidden"}'] == 0
        leader = json.loads((await get("/debug/leader"))[1])
        assert leader["message"] == 'not leading: namespaces "missing" not found' and leader["leading"] is False
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert await asyncio.to_thread(main, ["status", "--admin", f"127.0.0.1:{plane.cp.admin_port}"]) == 0
        assert 'WARNING: leader election (missing/cilia-leader): not leading: namespaces "missing" not found' \
            in out.getvalue()
        # Ready until nobody has led for longer than the lease (plus a takeover), then not ready.
        await wait_until(lambda: not plane.cp.ready(), within=lease.stall_limit_s + 2, what="not ready")
        code, text = await get("/readyz?verbose")
        assert code == 503 and "[+]config ok" in text and "readyz check failed" in text
        assert '[-]leader-election failed: no replica has led for' in text and 'namespaces "missing" not found' in text
        assert await get("/readyz") == (503, "not ready: leader-election\n")
        assert await get("/readyz?exclude=leader-election") == (200, "ready\n")
        assert (await get("/readyz?exclude=nonsense"))[0] == 400
        assert conditions(api) == {}  # nobody writes status

        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "missing"}})
        await wait_until(lambda: plane.kube.is_leader(), within=3, what="leads without a restart")
        await wait_until(lambda: conditions(api).get("Accepted", {}).get("status") == "True", what="writes status")
        assert await get("/readyz") == (200, "ready\n")
        metrics = parse_prometheus((await get("/metrics"))[1])
        assert metrics['cilia_leader{lease="missing/cilia-leader"}'] == 1
        leader = json.loads((await get("/debug/leader"))[1])
        assert leader["leading"] is True and leader["error"] == "" and leader["errors"]["namespace_not_found"] >= 1
    finally:
        await plane.stop()


async def test_no_leader_election_has_no_election_check(api: FakeApiServer) -> None:
    plane = await KubeControlPlane(api, leader_election=False).start()
    try:
        assert [name for name, _, _ in plane.cp.ready_checks()] == ["config"]
        assert json.loads(await fetch(plane, "/debug/leader"))["enabled"] is False
        assert "cilia_leader{" not in await fetch(plane, "/metrics")
    finally:
        await plane.stop()
