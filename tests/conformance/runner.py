"""Replays upstream Gateway API conformance scenarios through `cilia serve` and a real Envoy.

The world: the suite's base manifests (namespaces, the `same-namespace`, `all-namespaces`,
`backend-namespaces` and `same-namespace-with-https-listener` Gateways, the backend Services) with
each Gateway bound to a loopback address of its own (`spec.addresses`) on the suite's own ports (80,
443, 8080: the runner runs as root), and echo backends speaking the suite's echo contract (echo.py;
the gRPC ones serve the suite's GrpcEcho service, answering JSON) behind the Services'
EndpointSlices. One `cilia serve` watches the manifest directory; one Envoy (`node~conformance`,
shared mode) serves every Gateway. Each scenario writes its manifests, then
checks traffic and statuses until they hold (the suite's eventual consistency), then removes them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conformance.echo import GRPC_SERVICE, ConformanceEcho, ConformanceGrpcEcho, ConformanceH2CEcho, ConformanceTcpEcho
from support.conformance_base import APP, BACKENDS, GRPC_BACKENDS, INFRA, WEB, backend_service, namespace
from support.controlplane import CiliaProcess, ManifestDir
from support.envoy import Envoy
from support.gateway_tls import KeyPair, TestCA

GW = "gateway.networking.k8s.io/v1"
HTTPS_GATEWAY = "same-namespace-with-https-listener"
CERT_NAMES = ("example.org", "*.example.org", "second-example.org", "*.wildcard.org", "fourth-example.wildcard.org",
              "abc.example.com", "*.example.com")
STATUS_KINDS = ("GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "BackendTLSPolicy", "ListenerSet")
WAIT = 20.0  # seconds a scenario's expectation may take to hold (config propagation)
# The suite's TLS backends: name -> (namespace, VIP, endpoint address). `tls-backend*` serve the echo
# contract over HTTPS (Service port 443); `tcp-backend` speaks the suite's TCP protocol, plain on
# Service port 3000 and over TLS on 8443. Each serves the suite's `tls-checks-certificate`
# (BACKEND_CERT_NAMES, signed by the CA in the `tls-checks-ca-certificate` ConfigMap).
TLS_BACKENDS: dict[str, tuple[str, str, str]] = {
    "tls-backend": (INFRA, "127.96.1.21", "127.1.1.21"),
    "tls-backend-2": (INFRA, "127.96.1.22", "127.1.1.22"),
}
TCP_BACKENDS: dict[str, tuple[str, str, str]] = {"tcp-backend": (INFRA, "127.96.1.23", "127.1.1.23")}
BACKEND_CERT_NAMES = ("abc.example.com", "spiffe://abc.example.com/test-identity", "other.example.com")


# Backends that, as the suite's infra-backend-v1, also serve h2c (port 8081, appProtocol
# kubernetes.io/h2c) and WebSocket (port 8082, appProtocol kubernetes.io/ws) besides plain HTTP on 8080.
H2C_WS_BACKENDS = ("infra-backend-v1",)
DEFAULT_ADDRESS = "127.0.62.250"  # `cilia serve --gateway-address`


def _multi_port_service(name: str, ns: str, vip: str, e: ConformanceEcho, h: ConformanceH2CEcho) -> str:
    ports = [("first-port", 8080, e.port, ""), ("second-port", 8081, h.port, "kubernetes.io/h2c"),
             ("third-port", 8082, e.port, "kubernetes.io/ws")]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": vip, "ports": [
               {"name": n, "protocol": "TCP", "port": p, "targetPort": t, **({"appProtocol": a} if a else {})}
               for n, p, t, a in ports]}}
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{name}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
           "addressType": "IPv4", "ports": [{"name": n, "port": t} for n, _p, t, _a in ports],
           "endpoints": [{"addresses": [e.host], "conditions": {"ready": True}}]}
    return json.dumps(svc) + "\n---\n" + json.dumps(eps)
# Extra `cilia serve` flags and start hooks that scenario modules add at import (e.g. the mesh side).
SERVE_ARGS: list[str] = []
START_HOOKS: list[Callable[[World], None]] = []


class ScenarioFailure(AssertionError):
    pass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def echo(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


@dataclass
class Expect:
    """One request and what the suite expects of it (fields left empty are not checked)."""

    path: str
    host: str = ""
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    status: int | tuple[int, ...] = 200
    backend: str = ""  # the answering pod's name starts with this
    namespace: str = INFRA
    req_path: str | None = None  # the path (URI) the backend saw
    req_host: str | None = None
    req_headers: Mapping[str, str] = field(default_factory=dict)
    req_absent: tuple[str, ...] = ()
    req_sni: str | None = None  # the TLS server name a TLS backend was reached with
    resp_headers: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    resp_absent: tuple[str, ...] = ()
    location: str | None = None  # an exact Location header (redirects)


class World:
    """Echo backends, the manifest directory, `cilia serve` and Envoy, shared by every scenario."""

    def __init__(self) -> None:
        self.echos: dict[str, ConformanceEcho] = {}
        self.grpc_echos: dict[str, ConformanceGrpcEcho] = {}
        self.tcp_echos: dict[str, ConformanceTcpEcho] = {}
        self.h2c_echos: dict[str, ConformanceH2CEcho] = {}
        self.addresses: dict[str, str] = {}
        self.md = ManifestDir()
        self.ca = TestCA()
        self.cert = self.ca.issue(*CERT_NAMES)
        self.backend_cert = self.ca.issue(*BACKEND_CERT_NAMES)
        self.mismatch_ca = TestCA()  # trusted by no backend (`mismatch-ca-certificate`)
        self.cilia: CiliaProcess | None = None
        self.envoy: Envoy | None = None
        self._applied: list[tuple[str, str, str]] = []
        self.cleanups: list[Callable[[], None]] = []  # run by stop(), last added first

    # -- setup ------------------------------------------------------------------------------------
    def address(self, gateway: str) -> str:
        """A loopback address of the Gateway's own (127.0.62.N)."""
        if gateway not in self.addresses:
            self.addresses[gateway] = f"127.0.62.{len(self.addresses) + 1}"
        return self.addresses[gateway]

    def gateway(self, name: str, listeners: list[dict[str, Any]], ns: str = INFRA, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
                "spec": {"gatewayClassName": "cilia", "listeners": listeners, **spec}}

    def tls_secret(self, name: str, ns: str = INFRA) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": ns},
                "data": {"tls.crt": base64.b64encode(self.cert.cert_pem).decode(),
                         "tls.key": base64.b64encode(self.cert.key_pem).decode()}}

    def base_docs(self) -> list[dict[str, Any]]:
        def http(frm: str, selector: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
            ns: dict[str, Any] = {"from": frm}
            if selector:
                ns["selector"] = {"matchLabels": dict(selector)}
            return [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": ns}}]

        def https(name: str, hostname: str = "") -> dict[str, Any]:
            li: dict[str, Any] = {"name": name, "port": 443, "protocol": "HTTPS",
                                  "allowedRoutes": {"namespaces": {"from": "Same"}},
                                  "tls": {"certificateRefs": [{"group": "", "kind": "Secret",
                                                               "name": "tls-validity-checks-certificate",
                                                               "namespace": INFRA}]}}
            if hostname:
                li["hostname"] = hostname
            return li

        docs: list[dict[str, Any]] = [
            {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia", "generation": 1},
             "spec": {"controllerName": "cilia.io/gateway-controller"}},
            self.gateway("same-namespace", http("Same")),
            self.gateway("all-namespaces", http("All")),
            self.gateway("backend-namespaces", http("Selector", {"gateway-conformance": "backend"})),
            self.gateway(HTTPS_GATEWAY, [https("https"), https("https-with-hostname", "second-example.org"),
                                         https("https-with-wildcard-hostname", "*.wildcard.org"),
                                         https("https-with-hostname-matching-wildcard",
                                               "fourth-example.wildcard.org")]),
            self.tls_secret("tls-validity-checks-certificate"),
            # The CA the suite's BackendTLSPolicies trust (key ca.crt).
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "tls-checks-ca-certificate", "namespace": INFRA},
             "data": {"ca.crt": self.ca.pem.decode()}},
            # A CA that signed no backend's certificate: validation against it must fail.
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "mismatch-ca-certificate", "namespace": INFRA},
             "data": {"ca.crt": self.mismatch_ca.pem.decode()}},
        ]
        return docs

    def text(self, docs: Iterable[Mapping[str, Any]]) -> str:
        out = []
        for d in docs:
            d = json.loads(json.dumps(d))
            if d.get("kind") == "Gateway" and not d["spec"].get("addresses"):
                d["spec"]["addresses"] = [{"type": "IPAddress", "value": self.address(d["metadata"]["name"])}]
            out.append(json.dumps(d))
        return "\n---\n".join(out) + "\n"

    def start(self) -> World:
        for name, (ns, _vip, host) in BACKENDS.items():
            self.echos[name] = ConformanceEcho(name, ns, host).start()
        services = [namespace(INFRA, **{"gateway-conformance": "infra"}),
                    namespace(APP, **{"gateway-conformance": "backend"}),
                    namespace(WEB, **{"gateway-conformance": "backend"})]
        for name, (ns, vip, _host) in BACKENDS.items():
            e = self.echos[name]
            if name in H2C_WS_BACKENDS:
                h = self.h2c_echos[name] = ConformanceH2CEcho(e).start()
                services.append(_multi_port_service(name, ns, vip, e, h))
            else:
                services.append(backend_service(name, ns, vip, e.host, e.port))
        for name, (ns, vip, host) in GRPC_BACKENDS.items():
            g = self.grpc_echos[name] = ConformanceGrpcEcho(name, ns, host).start()
            services.append(backend_service(name, ns, vip, g.host, g.port, app_protocol="kubernetes.io/h2c"))
        tls = (self.backend_cert.cert_pem, self.backend_cert.key_pem)
        for name, (ns, vip, host) in TLS_BACKENDS.items():
            e = self.echos[name] = ConformanceEcho(name, ns, host, tls=tls).start()
            services.append(_service(name, ns, vip, host, {"https": (443, e.port)}))
        for name, (ns, vip, host) in TCP_BACKENDS.items():
            t = self.tcp_echos[name] = ConformanceTcpEcho(name, ns, tls, host).start()
            services.append(_service(name, ns, vip, host, {"echo-tcp-plain": (3000, t.plain_port),
                                                           "echo-tcp-tls": (8443, t.tls_port)}))
        self.md.write("base-services.yaml", "\n---\n".join(services) + "\n")
        self.md.write("base-gateways.yaml", self.text(self.base_docs()))
        # Gateways asking for an address without a value get this one (GatewayOptionalAddressValue).
        self.cilia = CiliaProcess([str(self.md.path)],
                                   extra=["--gateway-address", DEFAULT_ADDRESS, *SERVE_ARGS]).start()
        self.envoy = Envoy("node~conformance", self.cilia.xds_port).start()
        for hook in START_HOOKS:
            hook(self)
        return self

    def stop(self) -> None:
        for fn in reversed(self.cleanups):
            fn()
        if self.envoy is not None:
            self.envoy.stop()
        if self.cilia is not None:
            self.cilia.stop()
        for e in self.echos.values():
            e.stop()
        for g in self.grpc_echos.values():
            g.stop()
        for t in self.tcp_echos.values():
            t.stop()
        for h in self.h2c_echos.values():
            h.stop()
        self.md.cleanup()

    # -- what a scenario uses -----------------------------------------------------------------------
    def apply(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Write a scenario's manifests and wait until cilia reports status on each of its objects."""
        docs = list(docs)
        self._applied = [(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", ""))
                         for d in docs if d["kind"] in STATUS_KINDS]
        self.md.write("scenario.yaml", self.text(docs))
        self.eventually("scenario objects translated", lambda: self._missing(self._applied, present=True))

    def clear(self) -> None:
        self.md.write("scenario.yaml", "")
        self.eventually("scenario objects removed", lambda: self._missing(self._applied, present=False))
        self._applied = []

    def _missing(self, objs: list[tuple[str, str, str]], present: bool) -> str:
        have = {(s["kind"], s["metadata"]["name"], s["metadata"].get("namespace", "")) for s in self.statuses()}
        wrong = [o for o in objs if (o in have) != present]
        return f"{'no status for' if present else 'still reported'}: {wrong}" if wrong else ""

    def statuses(self) -> list[dict[str, Any]]:
        assert self.cilia is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.cilia.admin_port}/debug/status", timeout=5) as r:
            return list(json.load(r))

    def status(self, kind: str, name: str, ns: str = INFRA) -> dict[str, Any] | None:
        for s in self.statuses():
            md = s["metadata"]
            if s["kind"] == kind and md["name"] == name and md.get("namespace", "") == ns:
                return dict(s)
        return None

    def request(self, gateway: str, e: Expect, port: int = 80, scheme: str = "http", sni: str = "",
                client: KeyPair | None = None) -> Reply:
        """One request; over HTTPS with `sni` (else the Host), presenting `client`'s certificate if given."""
        addr = self.address(gateway)
        conn: http.client.HTTPConnection
        if scheme == "https":
            ctx = self.ca.client_context()
            ctx.check_hostname = False
            if client is not None:
                _load_client_cert(ctx, client)
            raw = socket.create_connection((addr, port), timeout=5)
            tls = ctx.wrap_socket(raw, server_hostname=sni or e.host or None)
            conn = http.client.HTTPConnection(addr, port, timeout=5)
            conn.sock = tls
        else:
            conn = http.client.HTTPConnection(addr, port, timeout=5)
        try:
            conn.putrequest(e.method, e.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", e.host or addr)
            for k, v in e.headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            headers: dict[str, str] = {}
            for k, v in resp.getheaders():  # repeated fields read as one, comma-joined (as the suite does)
                headers[k.lower()] = f"{headers[k.lower()]},{v}" if k.lower() in headers else v
            return Reply(resp.status, headers, body)
        finally:
            conn.close()

    def check(self, reply: Reply, e: Expect) -> str:
        """What differs from the expectation ('' when it holds)."""
        want = e.status if isinstance(e.status, tuple) else (e.status,)
        if reply.status not in want:
            return f"status {reply.status}, want {want}"
        if e.location is not None and reply.headers.get("location") != e.location:
            return f"location {reply.headers.get('location')!r}, want {e.location!r}"
        for k, v in e.resp_headers.items():
            allowed = v if isinstance(v, tuple) else (v,)
            got = reply.headers.get(k.lower())
            if got is None or got.replace(" ", "") not in [a.replace(" ", "") for a in allowed]:
                return f"response header {k}={got!r}, want one of {allowed}"
        for k in e.resp_absent:
            if k.lower() in reply.headers:
                return f"response header {k} present: {reply.headers[k.lower()]!r}"
        if (e.backend or e.req_path is not None or e.req_host is not None or e.req_headers or e.req_absent
                or e.req_sni is not None):
            seen = reply.echo
            if not seen:
                return "no echo body"
            if e.backend and not str(seen.get("pod", "")).startswith(e.backend + "-"):
                return f"answered by pod {seen.get('pod')!r}, want {e.backend}"
            if e.backend and seen.get("namespace") != e.namespace:
                return f"answered from namespace {seen.get('namespace')!r}, want {e.namespace}"
            if e.req_path is not None and seen.get("path") != e.req_path:
                return f"backend saw path {seen.get('path')!r}, want {e.req_path!r}"
            if e.req_host is not None and seen.get("host") != e.req_host:
                return f"backend saw host {seen.get('host')!r}, want {e.req_host!r}"
            sni = (seen.get("tls") or {}).get("serverName")
            if e.req_sni is not None and sni != e.req_sni:
                return f"backend saw SNI {sni!r}, want {e.req_sni!r}"
            hdrs = {k.lower(): v for k, v in (seen.get("headers") or {}).items()}
            for k, v in e.req_headers.items():
                if ",".join(hdrs.get(k.lower(), [])) != v:
                    return f"backend saw header {k}={hdrs.get(k.lower())}, want {v!r}"
            for k in e.req_absent:
                if k.lower() in hdrs:
                    return f"backend saw header {k}={hdrs[k.lower()]}, want it absent"
        return ""

    def expect(self, gateway: str, e: Expect, *, port: int = 80, scheme: str = "http", sni: str = "",
               timeout: float = WAIT, client: KeyPair | None = None) -> Reply:
        """Send `e` until it holds twice in a row (the suite's eventual consistency)."""
        deadline = time.monotonic() + timeout
        ok = 0
        last = ""
        while True:
            try:
                reply = self.request(gateway, e, port, scheme, sni, client)
                last = self.check(reply, e)
            except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                last = f"request failed: {exc!r}"
            ok = ok + 1 if not last else 0
            if ok >= 2:
                return reply
            if time.monotonic() > deadline:
                raise ScenarioFailure(f"{e.method} {e.host}{e.path} via {gateway}:{port}: {last}")
            time.sleep(0.05 if not last else 0.2)

    def grpc_call(self, gateway: str, method: str, host: str = "",
                  metadata: Mapping[str, str] | None = None, port: int = 80) -> tuple[str, dict[str, Any]]:
        """One unary call of the suite's echo service through the Gateway: (status code name, echo)."""
        import grpc

        authority = host or self.address(gateway)
        with grpc.insecure_channel(f"{self.address(gateway)}:{port}",
                                   options=[("grpc.default_authority", authority)]) as ch:
            stub = ch.unary_unary(f"/{GRPC_SERVICE}/{method}")
            try:
                body = stub(b"", metadata=tuple((k.lower(), v) for k, v in (metadata or {}).items()), timeout=5)
            except grpc.RpcError as exc:
                return str(exc.code().name), {}  # type: ignore[attr-defined]
        data = json.loads(body)
        return "OK", data if isinstance(data, dict) else {}

    def expect_grpc(self, gateway: str, method: str, *, host: str = "", metadata: Mapping[str, str] | None = None,
                    backend: str = "", code: str = "OK", port: int = 80) -> None:
        """Call until the answer holds twice in a row: status `code`, and when OK, from `backend`."""
        ok = 0

        def check() -> str:
            nonlocal ok
            got, echo = self.grpc_call(gateway, method, host, metadata, port)
            problem = ""
            if got != code:
                problem = f"status {got}, want {code}"
            elif backend and not str(echo.get("pod", "")).startswith(backend + "-"):
                problem = f"answered by {echo.get('pod')!r}, want {backend}"
            ok = 0 if problem else ok + 1
            return problem or ("" if ok >= 2 else "once")

        self.eventually(f"gRPC {method} {host} {dict(metadata or {})} via {gateway}:{port}", check)

    def eventually(self, what: str, fn: Callable[[], str], timeout: float = WAIT) -> None:
        """Wait until `fn` returns '' (its text says what still differs)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                last = fn()
            except (KeyError, IndexError, TypeError, OSError) as exc:
                last = repr(exc)
            if not last:
                return
            if time.monotonic() > deadline:
                raise ScenarioFailure(f"{what}: {last}")
            time.sleep(0.1)

    # -- status expectations ----------------------------------------------------------------------
    @staticmethod
    def _conds(stanza: Mapping[str, Any], conds: list[Mapping[str, Any]],
               want: Mapping[str, tuple[str, str]]) -> str:
        gen = stanza["metadata"].get("generation")
        by = {c["type"]: c for c in conds}
        for t, (st, reason) in want.items():
            c = by.get(t)
            if c is None:
                return f"no {t} condition (have {sorted(by)})"
            if (c["status"], c["reason"]) != (st, reason) and not (reason == "*" and c["status"] == st):
                return f"{t}={c['status']}({c['reason']}), want {st}({reason}): {c.get('message')}"
            if c.get("observedGeneration") != gen:
                return f"{t} observedGeneration {c.get('observedGeneration')} != generation {gen}"
        return ""

    def expect_route(self, route: str, gateway: str = "same-namespace", *, kind: str = "HTTPRoute",
                     ns: str = INFRA, gw_ns: str = INFRA, section: str = "",
                     **want: tuple[str, str]) -> None:
        """The route's parent stanza for that Gateway has these conditions (type=(status, reason))."""
        want = want or {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}

        def check() -> str:
            st = self.status(kind, route, ns)
            if st is None:
                return "no status"
            for p in st["status"].get("parents") or []:
                ref = p["parentRef"]
                if ref.get("name") == gateway and (ref.get("namespace") or ns) == gw_ns \
                        and (not section or ref.get("sectionName") == section):
                    if p.get("controllerName") != "cilia.io/gateway-controller":
                        return f"controllerName {p.get('controllerName')!r}"
                    return self._conds(st, p["conditions"], want)
            return f"no parent stanza for Gateway {gateway}"

        self.eventually(f"{kind} {ns}/{route} status", check)

    def expect_gateway(self, gateway: str, ns: str = INFRA, *, listeners: Mapping[str, Mapping[str, Any]] | None = None,
                       **want: tuple[str, str]) -> dict[str, Any]:
        """The Gateway's conditions, and per listener: `attachedRoutes`, `supportedKinds` (exactly) or
        `supportedKindsInclude` (at least these), conditions."""
        out: dict[str, Any] = {}

        def check() -> str:
            st = self.status("Gateway", gateway, ns)
            if st is None:
                return "no status"
            out.update(st)
            problem = self._conds(st, st["status"]["conditions"], want)
            if problem:
                return problem
            by = {li["name"]: li for li in st["status"].get("listeners") or []}
            for name, exp in (listeners or {}).items():
                li = by.get(name)
                if li is None:
                    return f"no listener status {name}"
                if "attachedRoutes" in exp and li["attachedRoutes"] != exp["attachedRoutes"]:
                    return f"listener {name} attachedRoutes {li['attachedRoutes']}, want {exp['attachedRoutes']}"
                if "supportedKinds" in exp and sorted(k["kind"] for k in li["supportedKinds"]) != \
                        sorted(exp["supportedKinds"]):
                    return f"listener {name} supportedKinds {li['supportedKinds']}, want {exp['supportedKinds']}"
                if "supportedKindsInclude" in exp and not set(exp["supportedKindsInclude"]) <= \
                        {k["kind"] for k in li["supportedKinds"]}:
                    # The suite checks these as a subset: an implementation may support more kinds.
                    return f"listener {name} supportedKinds {li['supportedKinds']}, want {exp['supportedKindsInclude']}"
                problem = self._conds(st, li["conditions"], exp.get("conditions", {}))
                if problem:
                    return f"listener {name}: {problem}"
            return ""

        self.eventually(f"Gateway {ns}/{gateway} status", check)
        return out


def _service(name: str, ns: str, vip: str, address: str, ports: Mapping[str, tuple[int, int]]) -> str:
    """A Service with named ports (name -> (port, the backend's real port)) and its EndpointSlice."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": vip, "ports": [{"name": n, "protocol": "TCP", "port": p, "targetPort": t}
                                                for n, (p, t) in ports.items()]}}
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{name}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
           "addressType": "IPv4", "ports": [{"name": n, "port": t} for n, (_p, t) in ports.items()],
           "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]}
    return json.dumps(svc) + "\n---\n" + json.dumps(eps)


def _load_client_cert(ctx: ssl.SSLContext, pair: KeyPair) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="cilia-client-") as tmp:
        (Path(tmp) / "c.pem").write_bytes(pair.cert_pem)
        (Path(tmp) / "k.pem").write_bytes(pair.key_pem)
        ctx.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")


# -- scenarios ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str  # the upstream test's ShortName
    run: Callable[[World], None]
    fast: bool = False  # part of the quick subset `make test` runs


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, fast: bool = False) -> Callable[[Callable[[World], None]], Callable[[World], None]]:
    def deco(fn: Callable[[World], None]) -> Callable[[World], None]:
        SCENARIOS[name] = Scenario(name, fn, fast)
        return fn
    return deco


@dataclass
class Outcome:
    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0


def run(world: World, names: Iterable[str]) -> list[Outcome]:
    out = []
    for name in names:
        sc = SCENARIOS[name]
        start = time.monotonic()
        try:
            sc.run(world)
            out.append(Outcome(name, True, seconds=time.monotonic() - start))
        except ScenarioFailure as exc:
            out.append(Outcome(name, False, str(exc), time.monotonic() - start))
        finally:
            world.clear()
    return out


def running_as_root() -> bool:
    return os.geteuid() == 0
