"""`cilia serve --kubernetes` against a real API server, as cilia's ServiceAccount (deploy/rbac.yaml only).

One cilia process and one node Envoy serve the whole module: Services and Pods (status set by the test,
there is no kubelet) -> EndpointSlices written by the real controller -> EDS; an Ingress, a Gateway with an
HTTPRoute and a CiliumEnvoyConfig -> traffic through Envoy to backends in a network namespace of the
test's own (198.18.0.0/15); statuses written through the status subresource; Events for a broken config;
the API server calling cilia's injection webhook; TokenReview-based certificates that open an mTLS xDS
stream; and watches that survive etcd compaction and an API server restart without a config re-push.
The tests run in file order and share the process; before the API server restarts (the last test), one
checks that no request cilia made was refused by authorization.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

import cilia.k8s.kinds  # noqa: F401
from cilia.k8s.rbac import Permission, cluster_permissions, namespace_permissions, secret_permissions
from cilia.k8s.registry import known_kinds
from support.controlplane import CiliaProcess
from support.envoy import Envoy
from support.http import get
from support.net import free_port
from support.netns import NetNamespace, netns
from support.realkube import CILIA_USER, RealCluster, ref

pytestmark = pytest.mark.e2e

NS = "kube-e2e"
NODE = "kind-worker"
GATEWAY_CONTROLLER = "cilia.io/gateway-controller"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CDS = CLUSTER
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


@dataclass
class Stack:
    cluster: RealCluster
    net: NetNamespace
    cilia: CiliaProcess
    envoy: Envoy
    ports: dict[str, int]
    ips: dict[str, str] = field(default_factory=dict)

    def url(self, what: str) -> str:
        return f"http://127.0.0.1:{self.ports[what]}"

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """A counter's series in cilia's /metrics, by their labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.cilia.admin_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(rf"^{name}(?:_total)?(?:{{(.*)}})? ([0-9.e+-]+)$", line)
            if m:
                out[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))] = float(m.group(2))
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a counter over the series matching `labels`."""
        return sum(v for k, v in self.series(name).items() if all(dict(k).get(a) == b for a, b in labels.items()))


def pod(name: str, labels: dict[str, str], namespace: str = NS, sa: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": NODE, "containers": [{"name": "app", "image": "example.invalid/app",
                                                                "ports": [{"containerPort": 8080}]}]}
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec}


def cec(name: str, port: int, *, broken: bool = False) -> dict[str, Any]:
    resources: list[dict[str, Any]] = [
        {"@type": LISTENER, "name": "listener",
         "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
         "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
             "@type": HCM, "stat_prefix": name, "rds": {"route_config_name": "routes"},
             "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}]}]},
        {"@type": ROUTE, "name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": f"{NS}/echo"}}]}]},
        {"@type": CLUSTER, "name": f"{NS}/echo", "type": "EDS", "connect_timeout": "1s"},
    ]
    if broken:  # valid for the CRD's schema (resources are free-form), refused by cilia
        resources.append({"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", "name": "x"})
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig", "metadata": {"name": name, "namespace": NS},
            "spec": {"backendServices": [{"name": "echo", "namespace": NS}], "resources": resources}}


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or ()}


@pytest.fixture(scope="module")
def stack(cluster: RealCluster, cilia_kubeconfig: Path) -> Iterator[Stack]:
    with netns("serve", hosts=3) as net:
        ips = {f"echo-{i}": net.addresses[i] for i in range(3)}
        net.echo_backends(*[(name, ip, 8080) for name, ip in ips.items()])
        cluster.kubectl("create", "namespace", NS)
        cluster.ensure_node(NODE)
        cluster.apply([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": NS},
             "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
            pod("echo-0", {"app": "echo"}), pod("echo-1", {"app": "echo"})])
        for name in ("echo-0", "echo-1"):
            cluster.set_pod_status(NS, name, ips[name])
        ports = {k: free_port() for k in ("ingress", "ingress-tls", "gateway", "cec", "webhook", "xds-tls", "issuer")}
        cilia = CiliaProcess([], extra=[
            "--kubernetes", "--kubeconfig", str(cilia_kubeconfig), "--leader-identity", "serve-1",
            "--lease-duration", "6", "--lease-renew-deadline", "4", "--lease-retry-period", "0.5",
            "--status-min-interval", "0.2", "--event-min-interval", "1",
            "--ingress-default-mode", "shared", "--ingress-address", "127.0.0.1",
            "--ingress-http-port", str(ports["ingress"]), "--ingress-https-port", str(ports["ingress-tls"]),
            "--gateway-address", "127.0.0.1",
            "--webhook", f"127.0.0.1:{ports['webhook']}", "--webhook-cert-from-ca",
            "--xds-tls", f"127.0.0.1:{ports['xds-tls']}", "--cert-issuer", f"127.0.0.1:{ports['issuer']}"])
        envoy = Envoy(f"node~{NODE}", cilia.xds_port)
        try:
            cilia.start(timeout=60)
            envoy.start()
            yield Stack(cluster, net, cilia, envoy, ports, ips)
        finally:
            envoy.stop()
            cilia.stop()
            cluster.delete_namespace(NS)


def backends_seen(url: str, n: int = 12, headers: dict[str, str] | None = None) -> set[str]:
    seen = set()
    for _ in range(n):
        r = get(url, headers)
        if r.status != 200:
            return {f"HTTP {r.status}"}
        seen.add(r.json()["backend"])
    return seen


def test_objects_in_the_api_are_served_by_envoy_and_statuses_written(stack: Stack) -> None:
    c, envoy = stack.cluster, stack.envoy
    gwapi = "gateway.networking.k8s.io/v1"
    backend = {"service": {"name": "echo", "port": {"number": 80}}}
    c.apply([
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "site", "namespace": NS},
         "spec": {"ingressClassName": "cilia", "rules": [{"http": {"paths": [
             {"path": "/", "pathType": "Prefix", "backend": backend}]}}]}},
        {"apiVersion": gwapi, "kind": "Gateway", "metadata": {"name": "gw", "namespace": NS},
         "spec": {"gatewayClassName": "cilia", "listeners": [
             {"name": "http", "port": stack.ports["gateway"], "protocol": "HTTP"}]}},
        {"apiVersion": gwapi, "kind": "HTTPRoute", "metadata": {"name": "web", "namespace": NS},
         "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}},
        cec("lb", stack.ports["cec"]),
    ])
    both = {"echo-0", "echo-1"}
    for what in ("ingress", "gateway", "cec"):
        envoy.wait_for(lambda what=what: backends_seen(stack.url(what)) == both, timeout=30, what=f"{what} serving")

    # Statuses, read back from the API server.
    def statuses_missing() -> list[str]:
        ing = c.get("ingress", "site", "-n", NS)
        gw = c.get("gateway", "gw", "-n", NS)
        route = c.get("httproute", "web", "-n", NS)
        parents = (route.get("status") or {}).get("parents") or [{}]
        checks = {
            "Ingress": [(x.get("ip"), [p["port"] for p in x.get("ports") or ()]) for x in (
                ing.get("status") or {}).get("loadBalancer", {}).get("ingress") or ()] == [
                ("127.0.0.1", [stack.ports["ingress"]])],
            "Gateway": conditions(gw).get("Accepted") == conditions(gw).get("Programmed") == "True",
            "HTTPRoute": parents[0].get("controllerName") == GATEWAY_CONTROLLER and {
                x["type"]: x["status"] for x in parents[0].get("conditions") or ()} == {
                "Accepted": "True", "ResolvedRefs": "True"},
            "CiliumEnvoyConfig": conditions(c.get("cec", "lb", "-n", NS)) == {"Accepted": "True", "Programmed": "True"},
            "GatewayClass": conditions(c.get("gatewayclass", "cilia")).get("Accepted") == "True",
        }
        return [k for k, ok in checks.items() if not ok]

    deadline = time.monotonic() + 30
    while (missing := statuses_missing()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert missing == [], (c.get("ingress", "site", "-n", NS).get("status"), stack.cilia.admin_json("/debug/status"))
    gw = c.get("gateway", "gw", "-n", NS)
    assert gw["status"]["listeners"][0]["attachedRoutes"] == 1
    # Every status went through the status subresource, as cilia's ServiceAccount.
    patches = c.audit(lambda e: e["user"]["username"] == CILIA_USER and e["verb"] == "patch"
                      and ref(e).get("namespace") == NS and ref(e).get("resource") != "events")
    assert patches and all(ref(p).get("subresource") == "status" and p["responseStatus"]["code"] == 200
                           for p in patches)

    # Scale out: a third Pod, its EndpointSlice entry from the controller, EDS to Envoy.
    c.apply(pod("echo-2", {"app": "echo"}))
    c.set_pod_status(NS, "echo-2", stack.ips["echo-2"])
    three = {"echo-0", "echo-1", "echo-2"}
    envoy.wait_for(lambda: backends_seen(stack.url("cec"), 20) == three, timeout=30, what="third backend")
    # A Pod that stops being Ready leaves the endpoints.
    c.set_pod_status(NS, "echo-0", stack.ips["echo-0"], ready=False)
    envoy.wait_for(lambda: backends_seen(stack.url("ingress"), 20) == {"echo-1", "echo-2"}, timeout=30,
                   what="unready backend gone")


def events_for(c: RealCluster, name: str) -> list[dict[str, Any]]:
    return [e for e in c.get("events.v1.events.k8s.io", "-n", NS)["items"] if e["regarding"]["name"] == name]


def test_a_broken_config_gets_a_warning_event_counted_on_repeats(stack: Stack) -> None:
    c = stack.cluster
    c.apply(cec("broken", free_port(), broken=True))
    (ev,) = c.wait_for("an Event", lambda: events_for(c, "broken"), timeout=30)
    uid = c.get("cec", "broken", "-n", NS)["metadata"]["uid"]
    assert ev["type"] == "Warning" and ev["reason"] == "ConfigRejected"
    assert "TypedExtensionConfig" in ev["note"] and ev["regarding"]["uid"] == uid
    assert ev["reportingController"] == "cilia.io/control-plane" and ev["reportingInstance"] == "serve-1"
    # As users see it: `kubectl get events` (core/v1) and `kubectl describe`.
    listed = c.kubectl("get", "events", "-n", NS, "--field-selector", "involvedObject.name=broken").stdout
    assert "ConfigRejected" in listed and "ciliumenvoyconfig/broken" in listed
    assert "ConfigRejected" in c.kubectl("describe", "cec", "broken", "-n", NS).stdout
    assert conditions(c.get("cec", "broken", "-n", NS))["Accepted"] == "False"

    # Fixed, broken again: the same Event, its count bumped; no second Event.
    c.apply(cec("broken", free_port()))
    c.wait_for("Accepted again", lambda: conditions(c.get("cec", "broken", "-n", NS)).get("Accepted") == "True",
               timeout=30)
    c.apply(cec("broken", free_port(), broken=True))
    c.wait_for("series count 2", lambda: (events_for(c, "broken")[0].get("series") or {}).get("count") == 2,
               timeout=30)
    assert len(events_for(c, "broken")) == 1
    writes = c.audit(lambda e: ref(e).get("resource") == "events" and ref(e).get("namespace") == NS
                     and e["user"]["username"] == CILIA_USER)
    assert sorted(w["verb"] for w in writes) == ["create", "patch"]
    c.kubectl("delete", "cec", "broken", "-n", NS)


def _webhook_config(url: str, failure_policy: str) -> dict[str, Any]:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "cilia-sidecar-injector"},  # the name whose caBundle cilia's leader keeps
            "webhooks": [{"name": "sidecar-injector.cilia.io", "admissionReviewVersions": ["v1"],
                          "sideEffects": "None", "failurePolicy": failure_policy, "timeoutSeconds": 5,
                          "clientConfig": {"url": url},
                          "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                     "resources": ["pods"], "scope": "Namespaced"}],
                          # only the test's namespaces: other tests create Pods at the same time
                          "namespaceSelector": {"matchLabels": {"cilia.io/mesh": "sidecar"}}}]}


def test_api_server_calls_the_injection_webhook(stack: Stack) -> None:
    c = stack.cluster
    ns = "inject-demo"
    url = f"https://127.0.0.1:{stack.ports['webhook']}/mutate"
    c.apply(_webhook_config(url, "Fail"))
    try:
        bundle = c.get("secret", "cilia-ca", "-n", "cilia-system")["data"]["bundle.pem"]

        def ca_bundle() -> str:
            mwc = c.get("mutatingwebhookconfiguration", "cilia-sidecar-injector")
            return str(mwc["webhooks"][0]["clientConfig"].get("caBundle") or "")
        assert c.wait_for("caBundle set by cilia's leader", ca_bundle, timeout=30) == bundle

        # A namespace in sidecar mode and a Pod created right after it, as `kubectl apply -f app.yaml` does.
        c.apply([{"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": ns, "labels": {"cilia.io/mesh": "sidecar"}}},
                 pod("web", {"app": "web"}, namespace=ns)])
        web = c.get("pod", "web", "-n", ns)
        assert [x["name"] for x in web["spec"]["containers"]] == ["app"]
        # the proxy is a native sidecar: an init container that keeps running
        init = {x["name"]: x for x in web["spec"]["initContainers"]}
        assert list(init) == ["cilia-bootstrap", "cilia-proxy"] and init["cilia-proxy"]["restartPolicy"] == "Always"
        assert web["metadata"]["annotations"]["cilia.io/proxy-id"] == f"sidecar~{ns}/web"

        # The webhook down (nothing listens at the URL): failurePolicy Fail refuses the Pod ...
        dead = f"https://127.0.0.1:{free_port()}/mutate"
        down = _webhook_config(dead, "Fail")
        down["webhooks"][0]["clientConfig"]["caBundle"] = bundle
        c.apply(down)
        res = c.kubectl("apply", "-f", "-", input=json.dumps(pod("refused", {"app": "x"}, namespace=ns)),
                        check=False)
        assert res.returncode != 0 and 'failed calling webhook "sidecar-injector.cilia.io"' in res.stderr
        # ... and Ignore admits it unmodified.
        down["webhooks"][0]["failurePolicy"] = "Ignore"
        c.apply(down)
        c.apply(pod("plain", {"app": "x"}, namespace=ns))
        plain = c.get("pod", "plain", "-n", ns)
        assert [x["name"] for x in plain["spec"]["containers"]] == ["app"]
        assert "initContainers" not in plain["spec"]
    finally:
        c.kubectl("delete", "mutatingwebhookconfiguration", "cilia-sidecar-injector", check=False)
        c.delete_namespace(ns)


def _cert(stack: Stack, tmp: Path, proxy: str, token: str, tag: str) -> subprocess.CompletedProcess[str]:
    (tmp / f"{tag}.token").write_text(token)
    bundle = base64.b64decode(stack.cluster.get("secret", "cilia-ca", "-n", "cilia-system")["data"]["bundle.pem"])
    (tmp / "bundle.pem").write_bytes(bundle)
    return subprocess.run([sys.executable, "-m", "cilia", "cert", "--kubernetes", "--proxy", proxy,
                           "--issuer", f"127.0.0.1:{stack.ports['issuer']}", "--token-file", str(tmp / f"{tag}.token"),
                           "--ca-bundle", str(tmp / "bundle.pem"), "--out", str(tmp / tag)],
                          capture_output=True, text=True, timeout=60)


def _ads(stack: Stack, tls_dir: Path, node_id: str) -> tuple[str, grpc.StatusCode | None]:
    """One ADS request for clusters over mTLS with the certificate in `tls_dir`: (type of the answer, error)."""
    creds = grpc.ssl_channel_credentials((tls_dir / "ca.pem").read_bytes(), (tls_dir / "key.pem").read_bytes(),
                                         (tls_dir / "cert.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{stack.ports['xds-tls']}", creds) as ch:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)
        req = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CDS)
        calls = stub.StreamAggregatedResources(iter([req]), timeout=5)
        try:
            return next(calls).type_url, None
        except grpc.RpcError as exc:
            return "", exc.code()


def test_token_review_certificate_opens_an_authorized_xds_stream(stack: Stack, tmp_path: Path) -> None:
    c = stack.cluster
    ns = "issue-demo"
    c.kubectl("create", "namespace", ns)
    c.apply([{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}
             for sa in ("web", "db")])
    c.apply([pod("p", {"app": "web"}, namespace=ns, sa="web"), pod("q", {"app": "db"}, namespace=ns, sa="db")])
    try:
        proxy = f"sidecar~{ns}/p"
        res = _cert(stack, tmp_path, proxy, c.token(ns, "web", audience="cilia", bound_pod="p"), "p")
        assert res.returncode == 0, res.stderr
        cert = x509.load_pem_x509_certificate((tmp_path / "p" / "cert.pem").read_bytes())
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
        assert sorted(uris) == [f"spiffe://cluster.local/ns/{ns}/sa/web", f"spiffe://cluster.local/proxy/sidecar/{ns}/p"]

        # That certificate opens an authorized stream for its own proxy id (once cilia has seen the Pod) ...
        deadline = time.monotonic() + 20
        while (got := _ads(stack, tmp_path / "p", proxy)) != (CDS, None) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert got == (CDS, None)
        # ... and not that of a pod of another workload (ServiceAccount).
        assert _ads(stack, tmp_path / "p", f"sidecar~{ns}/q") == ("", grpc.StatusCode.PERMISSION_DENIED)

        # A token for another audience: 401. Another pod's token: 403.
        res = _cert(stack, tmp_path, proxy, c.token(ns, "web", audience="https://kubernetes.default.svc",
                                                   bound_pod="p"), "aud")
        assert res.returncode != 0 and "(401)" in res.stderr, res.stderr
        res = _cert(stack, tmp_path, proxy, c.token(ns, "db", audience="cilia", bound_pod="q"), "other")
        assert res.returncode != 0 and "(403)" in res.stderr and f"{ns}/q" in res.stderr, res.stderr
        reviews = c.audit(lambda e: ref(e).get("resource") == "tokenreviews"
                          and e["user"]["username"] == CILIA_USER)
        assert len(reviews) >= 3 and all(r["responseStatus"]["code"] == 201 for r in reviews)
    finally:
        c.delete_namespace(ns)


class Traffic:
    """Requests through Envoy every 50 ms in a thread, counting failures (bounded: at most `limit_s`)."""

    def __init__(self, url: str, limit_s: float = 120.0) -> None:
        self.url, self.limit_s = url, limit_s
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - t0 < self.limit_s:
            try:
                r = get(self.url, timeout=2)
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {r.status}")
            except OSError as exc:
                self.failures.append(repr(exc))
            self._stop.wait(0.05)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _envoy_updates(envoy: Envoy) -> dict[str, int]:
    """Envoy's counters of config updates received (LDS, CDS, RDS, EDS) and the versions it holds."""
    stats = envoy.stats()
    return {k: v for k, v in stats.items()
            if re.search(r"(update_attempt|update_success|update_rejected|\.version)$", k)
            and re.search(r"(lds|cds|rds|eds|listener_manager|cluster_manager|cluster\.)", k)}


def test_cilia_was_never_refused(stack: Stack) -> None:
    """As its ServiceAccount, every request cilia made so far was allowed, and used only declared grants
    (the API server restarts come next: a starting API server refuses requests until its RBAC caches fill)."""
    c = stack.cluster
    mine = c.audit(lambda e: e["user"]["username"] == CILIA_USER and e.get("userAgent", "").startswith("cilia/"))
    assert len(mine) > 50
    refused = [(e["verb"], e["requestURI"], e["responseStatus"]["code"]) for e in mine if _refused(e)]
    assert refused == []
    declared = cluster_permissions() | namespace_permissions() | secret_permissions()
    used = {Permission(ref(e).get("apiGroup", ""), ref(e)["resource"]
                       + (f"/{ref(e)['subresource']}" if ref(e).get("subresource") else ""), e["verb"])
            for e in mine if ref(e)}
    assert used <= declared, sorted(used - declared)
    # Nor did its Kubernetes client log a refusal (the issuer's own 403 answers to the previous test's bad
    # token are another matter).
    kube_lines = [ln for ln in stack.cilia.log.read_text().splitlines()
                  if re.search(r" cilia\.(source\.kube|status|events|leader|kube)\S*: ", ln)]
    assert kube_lines and not [ln for ln in kube_lines if re.search(r"\b(401|403|Forbidden|Unauthorized)\b", ln)]


@pytest.mark.timeout(300)
def test_watches_survive_compaction_and_an_api_server_restart(stack: Stack) -> None:
    c, envoy = stack.cluster, stack.envoy
    # Let earlier changes settle (namespaces of earlier tests finish terminating): what follows must change
    # nothing.
    for ns in ("inject-demo", "issue-demo"):
        c.kubectl("wait", "--for=delete", f"namespace/{ns}", "--timeout=30s", timeout=60)
    last, since = stack.metric("cilia_rebuilds"), time.monotonic()
    while time.monotonic() - since < 1.5:
        time.sleep(0.25)
        if (now := stack.metric("cilia_rebuilds")) != last:
            last, since = now, time.monotonic()
    events = stack.series("cilia_source_events")
    before_updates = _envoy_updates(envoy)
    before_proxies = stack.cilia.admin_json("/debug/proxies")[f"node~{NODE}"]["types"]
    rebuilds = stack.metric("cilia_rebuilds")
    expired = stack.metric("cilia_kubernetes_watch_restarts", reason="expired")
    windows: list[tuple[float, float]] = []  # (stopped, ready) of each restart, wall clock

    def restart() -> None:
        t0 = time.time()
        c.restart_apiserver()
        windows.append((t0, time.time()))

    services = f"/api/v1/namespaces/{NS}/services"
    seen_rv = c.request("GET", services)[1]["metadata"]["resourceVersion"]  # where cilia's watches are, or before
    c.kubectl("create", "configmap", "bump", "-n", NS)  # no ca.crt: kept out of the store; history moves past seen_rv
    with Traffic(stack.url("ingress")) as traffic:
        # etcd compacts its history past every revision cilia has seen (the API server does this every 5 min
        # by itself). While its watch cache holds the history, live watches never notice; the API server
        # comes back from a restart with an empty cache, and the history is gone from etcd too, so each watch
        # cilia resumes from its last resourceVersion gets 410 Expired.
        c.compact_etcd()
        restart()
        code, body = c.request("GET", f"{services}?resourceVersion={seen_rv}&resourceVersionMatch=Exact")
        assert (code, body.get("reason")) == (410, "Expired"), body
        served = len(known_kinds())  # every kind cilia reads is served here (Gateway API experimental CRDs)
        c.wait_for("every watch expired and relisted",
                   lambda: stack.metric("cilia_kubernetes_watch_restarts", reason="expired") - expired >= served,
                   timeout=60, interval=0.5)
        time.sleep(2.0)
        # Nothing changed, so nothing was rebuilt or pushed: Envoy's update counters and versions are as before.
        changed = {k: v - events.get(k, 0) for k, v in stack.series("cilia_source_events").items()
                   if v != events.get(k, 0)}
        assert stack.metric("cilia_rebuilds") == rebuilds, changed
        assert _envoy_updates(envoy) == before_updates
        after_proxies = stack.cilia.admin_json("/debug/proxies")[f"node~{NODE}"]["types"]
        assert {t: v["version_acked"] for t, v in after_proxies.items()} == \
               {t: v["version_acked"] for t, v in before_proxies.items()}

        # The watches are live again: a change made now reaches Envoy.
        c.set_pod_status(NS, "echo-0", stack.ips["echo-0"], ready=True)
        envoy.wait_for(lambda: "echo-0" in backends_seen(stack.url("ingress"), 20), timeout=30,
                       what="change after the restart")
        # A plain restart (no compaction) too.
        restart()
        c.set_pod_status(NS, "echo-1", stack.ips["echo-1"], ready=False)
        envoy.wait_for(lambda: backends_seen(stack.url("ingress"), 20) == {"echo-0", "echo-2"}, timeout=60,
                       what="change after the second restart")
    # Envoy never lost its config: every request during both restarts succeeded.
    assert traffic.failures == [] and traffic.ok > 50
    # cilia was refused only while a restarted API server's RBAC caches were still empty (its first seconds).
    late = [(e["requestURI"], e["stageTimestamp"]) for e in c.audit(
        lambda e: e["user"]["username"] == CILIA_USER and _refused(e))
        if not any(a <= _epoch(e["stageTimestamp"]) <= b + 5.0 for a, b in windows)]
    assert late == []


def _refused(event: dict[str, Any]) -> bool:
    """Not authenticated, or not authorized (RBAC's decision; admission refusing e.g. an object in a
    terminating namespace is another matter)."""
    decision = (event.get("annotations") or {}).get("authorization.k8s.io/decision")
    return event["responseStatus"]["code"] == 401 or decision == "forbid"


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
