"""Replayed upstream tests of TLSRoute (passthrough, terminate, both on one port) and of the Gateway's
frontend client certificate validation (`spec.tls.frontend`).

Passthrough traffic reaches the suite's TLS backends (runner.TLS_BACKENDS / TCP_BACKENDS), which
terminate TLS themselves with the World's certificate: the client checks that certificate for the SNI
it sent and that the named backend answered (the TCP backend also reports the SNI it saw, and whether
the stream reached it over TLS).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from cilia.translate.gateway_common import SUPPORTED_FEATURES
from conformance.runner import WAIT, Expect, ScenarioFailure, World, scenario
from conformance.scenarios import route, rule, to
from support.conformance_base import INFRA, WEB
from support.gateway_tls import KeyPair, TestCA

TLSROUTE = "gateway.networking.k8s.io/v1"
TERMINATE_CERT = "tls-terminate-checks-certificate"
TCP_WELCOME = "Gateway API Test TCP Server"


# -- manifests --------------------------------------------------------------------------------------
def tls_listener(name: str, port: int = 443, hostname: str = "", mode: str = "Passthrough",
                 kinds: tuple[str, ...] = ("TLSRoute",), cert: str = "") -> dict[str, Any]:
    li: dict[str, Any] = {"name": name, "port": port, "protocol": "TLS",
                          "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [{"kind": k} for k in kinds]},
                          "tls": {"mode": mode}}
    if hostname:
        li["hostname"] = hostname
    if cert:
        li["tls"]["certificateRefs"] = [{"name": cert}]
    return li


def tls_route(name: str, gateway: str, hostnames: list[str], backend: str, port: int) -> dict[str, Any]:
    doc = route(name, [rule(to(backend, port))], parents=[{"name": gateway, "namespace": INFRA}],
                hostnames=hostnames, kind="TLSRoute")
    doc["apiVersion"] = TLSROUTE
    return doc


def _terminate_secret(w: World) -> dict[str, Any]:
    """The listener certificate of the terminate tests, for `tls.example.com`, by the World's CA."""
    pair: KeyPair | None = getattr(w, "_terminate_cert", None)
    if pair is None:
        pair = w.ca.issue("tls.example.com", "terminate.example.com")
        w._terminate_cert = pair  # type: ignore[attr-defined]
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": TERMINATE_CERT, "namespace": INFRA},
            "data": {"tls.crt": base64.b64encode(pair.cert_pem).decode(),
                     "tls.key": base64.b64encode(pair.key_pem).decode()}}


# -- clients ----------------------------------------------------------------------------------------
def _tls_socket(w: World, gateway: str, port: int, sni: str) -> ssl.SSLSocket:
    """A TLS connection through the Gateway with `sni`, the server's certificate checked for `sni`."""
    ctx = w.ca.client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection((w.address(gateway), port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def tcp_exchange(w: World, gateway: str, port: int, sni: str) -> dict[str, Any]:
    """The suite's TCP dialogue over TLS: greeting, PING, IS_TLS, TEST; returns TEST's JSON with `IS_TLS`."""
    with _tls_socket(w, gateway, port, sni) as s, s.makefile("rwb") as f:
        def line() -> str:
            return f.readline().decode(errors="replace").rstrip("\n")

        def ask(what: str) -> str:
            f.write(what.encode() + b"\n")
            f.flush()
            return line()

        if line() != TCP_WELCOME:
            raise ScenarioFailure("no TCP backend greeting")
        if ask("PING") != "PONG":
            raise ScenarioFailure("no PONG")
        is_tls = ask("IS_TLS")
        out = dict(json.loads(ask("TEST")))
        out["IS_TLS"] = is_tls
        return out


def expect_tcp(w: World, gateway: str, port: int, sni: str, backend: str, backend_tls: bool,
               backend_sni: str = "") -> None:
    """The suite's MakeTCPRequestAndExpectEventuallyValidResponse: the backend pod answered, over TLS to
    the backend or not, and (when given) saw the SNI `backend_sni`."""
    def check() -> str:
        try:
            got = tcp_exchange(w, gateway, port, sni)
        except (OSError, ssl.SSLError, ValueError) as exc:
            return f"request failed: {exc!r}"
        if got["IS_TLS"] != ("true" if backend_tls else "false"):
            return f"backend reached over TLS={got['IS_TLS']}, want {backend_tls}"
        if got.get("namespace") != INFRA or not str(got.get("pod", "")).startswith(backend + "-"):
            return f"answered by {got.get('namespace')}/{got.get('pod')}, want {backend}"
        if backend_sni and (got.get("tls") or {}).get("serverName") != backend_sni:
            return f"backend saw SNI {(got.get('tls') or {}).get('serverName')!r}, want {backend_sni!r}"
        return ""

    w.eventually(f"TCP over TLS via {gateway}:{port} SNI {sni}", check)


def expect_tls_rejected(w: World, gateway: str, port: int, sni: str) -> None:
    """The suite's MakeTLSConnectionAndExpectEventuallyConnectionRejection: no TLS session for `sni`."""
    def check() -> str:
        try:
            with _tls_socket(w, gateway, port, sni) as s:
                s.settimeout(2)
                s.sendall(b"GET / HTTP/1.1\r\nHost: " + sni.encode() + b"\r\n\r\n")
                if s.recv(1):
                    return f"SNI {sni}: a TLS session was served"
        except (OSError, ssl.SSLError):
            return ""
        return ""

    w.eventually(f"TLS for SNI {sni} via {gateway}:{port} rejected", check)


def expect_https_refused(w: World, gateway: str, e: Expect, port: int, client: KeyPair | None) -> None:
    """The suite's MakeTLSRequestAndExpectFailureResponse: the HTTPS request gets no answer (handshake or
    connection refused), checked until it holds twice in a row."""
    deadline = time.monotonic() + WAIT
    fails = 0
    while fails < 2:
        try:
            r = w.request(gateway, e, port, "https", e.host, client)
            fails = 0
            last = f"answered {r.status}"
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            fails += 1
            last = repr(exc)
        except Exception as exc:  # http.client errors: the stream was cut
            fails += 1
            last = repr(exc)
        if fails < 2 and time.monotonic() > deadline:
            raise ScenarioFailure(f"HTTPS {e.host} via {gateway}:{port} not refused: {last}")
        time.sleep(0.1)


def _claims(*features: str) -> bool:
    return set(features) <= SUPPORTED_FEATURES


# -- TLSRoute -------------------------------------------------------------------------------------------
@scenario("TLSRouteSimpleSameNamespace")
def tls_route_simple(w: World) -> None:
    gw = "gateway-tlsroute"
    w.apply([w.gateway(gw, [tls_listener("https", hostname="*.example.com")]),
             tls_route("gateway-conformance-infra-test", gw, ["abc.example.com"], "tcp-backend", 8443)])
    w.expect_gateway(gw, Accepted=("True", "*"), Programmed=("True", "*"))
    w.expect_route("gateway-conformance-infra-test", gw, kind="TLSRoute")
    expect_tcp(w, gw, 443, "abc.example.com", "tcp-backend", True, "abc.example.com")


@scenario("TLSRouteHostnameIntersection")
def tls_route_hostname_intersection(w: World) -> None:
    gws = {"gw-tlsroute-exact-hostname-x-1": "abc.example.com",
           "gw-tlsroute-more-specific-wc-hostname-x-2": "*.example.com",
           "gw-tlsroute-less-specific-wc-hostname-x-3": "*.com", "gw-tlsroute-empty-hostname-x-4": ""}
    names = {"abc.example.com": "listener-exact-hostname", "*.example.com": "listener-more-specific-wc-hostname",
             "*.com": "listener-less-specific-wc-hostname", "": "listener-empty-hostname"}
    docs: list[dict[str, Any]] = [w.gateway(g, [tls_listener(names[h], hostname=h)]) for g, h in gws.items()]
    x1, x2, x3, x4 = gws
    routes = [("tlsroute-more-specific-wc-hostname-x-1", x1, "*.example.com", "tls-backend"),
              ("tlsroute-exact-hostname-x-2", x2, "abc.example.com", "tls-backend"),
              ("tlsroute-less-specific-wc-hostname-x-2", x2, "*.com", "tls-backend-2"),
              ("tlsroute-exact-hostname-x-3", x3, "abc.example.com", "tls-backend"),
              ("tlsroute-more-specific-wc-hostname-x-3", x3, "*.example.com", "tls-backend-2"),
              ("tlsroute-exact-hostname-x-4", x4, "abc.example.com", "tls-backend"),
              ("tlsroute-less-specific-wc-hostname-x-4", x4, "*.com", "tls-backend-2")]
    docs += [tls_route(n, g, [h], b, 443) for n, g, h, b in routes]
    w.apply(docs)
    for n, g, _h, _b in routes:
        w.expect_gateway(g, Accepted=("True", "*"))
        w.expect_route(n, g, kind="TLSRoute")

    def via(gw: str, host: str, backend: str) -> None:
        w.expect(gw, Expect("/", host=host, backend=backend), port=443, scheme="https", sni=host)

    via(x1, "abc.example.com", "tls-backend")
    expect_tls_rejected(w, x1, 443, "non.matching.com")
    for g in (x2, x3, x4):
        via(g, "abc.example.com", "tls-backend")
        via(g, "other.example.com", "tls-backend-2")
        expect_tls_rejected(w, g, 443, "non.matching.org" if g == x4 else "non.matching.com")


@scenario("TLSRouteListenerPassthroughSupportedKinds")
def tls_passthrough_supported_kinds(w: World) -> None:
    gw = "gateway-tlsroute-passthrough-supported-kind"
    w.apply([w.gateway(gw, [tls_listener("tls-passthrough", kinds=("TCPRoute", "TLSRoute"))])])
    w.expect_gateway(gw, listeners={"tls-passthrough": {
        "attachedRoutes": 0, "supportedKinds": ["TLSRoute"],
        "conditions": {"ResolvedRefs": ("False", "InvalidRouteKinds")}}})


@scenario("TLSRouteListenerTerminateSupportedKinds")
def tls_terminate_supported_kinds(w: World) -> None:
    gw = "gateway-tlsroute-terminate-supported"
    w.apply([_terminate_secret(w), w.gateway(gw, [tls_listener("tls-terminate", 8443, "terminate.example.com",
                                                              "Terminate", cert=TERMINATE_CERT)])])
    w.expect_gateway(gw, listeners={"tls-terminate": {
        "attachedRoutes": 0, "supportedKinds": ["TLSRoute"], "conditions": {"Accepted": ("True", "Accepted")}}})


@scenario("TLSRouteListenerTerminateNotSupported")
def tls_terminate_not_supported(w: World) -> None:
    """Upstream checks Accepted=False(UnsupportedValue) only where TLSRouteModeTerminate is not claimed;
    cilia claims it, so the listener is checked to be accepted and programmed instead."""
    gw = "gateway-tlsroute-terminate-unsupported"
    w.apply([_terminate_secret(w), w.gateway(gw, [tls_listener("tls-terminate", 8443, "terminate.example.com",
                                                              "Terminate", cert=TERMINATE_CERT)])])
    want = ("True", "Accepted") if _claims("TLSRouteModeTerminate") else ("False", "UnsupportedValue")
    w.expect_gateway(gw, listeners={"tls-terminate": {"attachedRoutes": 0, "conditions": {"Accepted": want}}})


def _mixed_gateway(w: World, gw: str, port: int, terminate_host: str, passthrough_host: str) -> list[dict[str, Any]]:
    return [_terminate_secret(w),
            w.gateway(gw, [tls_listener("tls-terminate", port, terminate_host, "Terminate", cert=TERMINATE_CERT),
                           tls_listener("tls-passthrough", port, passthrough_host)])]


@scenario("TLSRouteListenerMixedTerminationNotSupported")
def tls_mixed_not_supported(w: World) -> None:
    """Upstream checks ProtocolConflict only where TLSRouteModeMixed is not claimed; cilia claims it, so
    both listeners are checked to be accepted instead."""
    gw = "gateway-tlsroute-mixed-termination-not-supported"
    w.apply(_mixed_gateway(w, gw, 8443, "terminate.example.com", "passthrough.example.com"))
    want = ("True", "Accepted") if _claims("TLSRouteModeMixed") else ("False", "ProtocolConflict")
    w.expect_gateway(gw, listeners={n: {"attachedRoutes": 0, "conditions": {"Accepted": want}}
                                    for n in ("tls-terminate", "tls-passthrough")})


@scenario("TLSRouteTerminateSimpleSameNamespace")
def tls_terminate_simple(w: World) -> None:
    gw = "gateway-tlsroute-terminate"
    w.apply([_terminate_secret(w),
             w.gateway(gw, [tls_listener("tlsterminate", 8443, "tls.example.com", "Terminate", cert=TERMINATE_CERT)]),
             tls_route("tlsroute-terminated-test", gw, ["tls.example.com"], "tcp-backend", 3000)])
    w.expect_gateway(gw, Accepted=("True", "*"), Programmed=("True", "*"))
    w.expect_route("tlsroute-terminated-test", gw, kind="TLSRoute")
    expect_tcp(w, gw, 8443, "tls.example.com", "tcp-backend", False)


@scenario("TLSRouteMixedTerminationSameNamespace")
def tls_mixed_termination(w: World) -> None:
    gw = "gateway-tlsroute-mixed-termination"
    w.apply([*_mixed_gateway(w, gw, 8883, "tls.example.com", "abc.example.com"),
             tls_route("gateway-conformance-mixed-passthroughroute", gw, ["abc.example.com"], "tcp-backend", 8443),
             tls_route("gateway-conformance-mixed-terminateroute", gw, ["tls.example.com"], "tcp-backend", 3000)])
    w.expect_route("gateway-conformance-mixed-passthroughroute", gw, kind="TLSRoute")
    w.expect_route("gateway-conformance-mixed-terminateroute", gw, kind="TLSRoute")
    w.expect_gateway(gw, listeners={n: {"attachedRoutes": 1, "supportedKinds": ["TLSRoute"],
                                        "conditions": {"Accepted": ("True", "Accepted")}}
                                    for n in ("tls-terminate", "tls-passthrough")})
    expect_tcp(w, gw, 8883, "tls.example.com", "tcp-backend", False)
    expect_tcp(w, gw, 8883, "abc.example.com", "tcp-backend", True, "abc.example.com")


# -- frontend client certificate validation ----------------------------------------------------------------
def _frontend_scenario(name: str, fast: bool = False) -> Callable[[Callable[[World], None]], Callable[[World], None]]:
    """Registered while cilia claims GatewayFrontendClientCertificateValidation; otherwise the upstream
    tests stay skipped with that reason (scenarios.SKIPPED)."""
    if _claims("GatewayFrontendClientCertificateValidation"):
        return scenario(name, fast)
    return lambda fn: fn


class _ClientCerts:
    """Two client CAs (the Gateway default's and the per-port one) and a client certificate from each."""

    def __init__(self) -> None:
        self.default_ca, self.per_port_ca = TestCA(), TestCA()
        self.default = self.default_ca.issue("client.example.org")
        self.per_port = self.per_port_ca.issue("per-port-client.example.org")


def _clients(w: World) -> _ClientCerts:
    c: _ClientCerts | None = getattr(w, "_client_certs", None)
    if c is None:
        c = _ClientCerts()
        w._client_certs = c  # type: ignore[attr-defined]
    return c


def ca_configmap(name: str, pem: bytes, ns: str = INFRA) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {"ca.crt": pem.decode()}}


def _validation(name: str, mode: str = "", kind: str = "ConfigMap", ns: str = "") -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": kind, "group": "", "name": name}
    if ns:
        ref["namespace"] = ns
    out: dict[str, Any] = {"caCertificateRefs": [ref]}
    if mode:
        out["mode"] = mode
    return {"validation": out}


def https_listener(name: str, port: int, hostname: str = "") -> dict[str, Any]:
    li: dict[str, Any] = {"name": name, "port": port, "protocol": "HTTPS",
                          "allowedRoutes": {"namespaces": {"from": "Same"}},
                          "tls": {"certificateRefs": [{"group": "", "kind": "Secret",
                                                       "name": "tls-validity-checks-certificate",
                                                       "namespace": INFRA}]}}
    if hostname:
        li["hostname"] = hostname
    return li


def _validated_gateway(w: World, gw: str, mode: str) -> list[dict[str, Any]]:
    c = _clients(w)
    frontend = {"default": _validation("tls-validity-checks-ca-certificate", mode),
                "perPort": [{"port": 8443, "tls": _validation("tls-validity-checks-per-port-ca-certificate", mode)}]}
    return [ca_configmap("tls-validity-checks-ca-certificate", c.default_ca.pem),
            ca_configmap("tls-validity-checks-per-port-ca-certificate", c.per_port_ca.pem),
            w.gateway(gw, [https_listener("https", 443), https_listener("https-with-hostname", 8443,
                                                                        "second-example.org")],
                      tls={"frontend": frontend})]


def _two_routes(gw: str, first: str, second: str) -> list[dict[str, Any]]:
    return [route(first, [rule(to("infra-backend-v1"))], parents=[{"name": gw}], hostnames=["example.org"]),
            route(second, [rule(to("infra-backend-v2"))], parents=[{"name": gw, "sectionName": "https-with-hostname"}])]


@_frontend_scenario("GatewayFrontendClientCertificateValidation", fast=True)
def frontend_client_cert_validation(w: World) -> None:
    gw = "client-validation-default"
    r1, r2 = "client-certificate-validation-https-test", "client-certificate-validation-https-test-no-hostname"
    w.apply([*_validated_gateway(w, gw, ""), *_two_routes(gw, r1, r2)])
    for r in (r1, r2):
        w.expect_route(r, gw)
    c = _clients(w)
    first = Expect("/", host="example.org", backend="infra-backend-v1")
    second = Expect("/", host="second-example.org", backend="infra-backend-v2")
    w.expect(gw, first, port=443, scheme="https", client=c.default)
    expect_https_refused(w, gw, first, 443, c.per_port)
    expect_https_refused(w, gw, first, 443, None)
    w.expect(gw, second, port=8443, scheme="https", client=c.per_port)
    expect_https_refused(w, gw, second, 8443, c.default)


@_frontend_scenario("GatewayFrontendClientCertificateValidationInsecureFallback", fast=True)
def frontend_client_cert_insecure_fallback(w: World) -> None:
    gw = "client-validation-insecure-fallback"
    r1 = "client-cert-validation-insecure-fallback-test"
    r2 = f"{r1}-no-hostname"
    w.apply([*_validated_gateway(w, gw, "AllowInsecureFallback"), *_two_routes(gw, r1, r2)])
    for r in (r1, r2):
        w.expect_route(r, gw)
    w.expect_gateway(gw, InsecureFrontendValidationMode=("True", "ConfigurationChanged"))
    c = _clients(w)
    for port, e in ((443, Expect("/", host="example.org", backend="infra-backend-v1")),
                    (8443, Expect("/", host="second-example.org", backend="infra-backend-v2"))):
        for client in (c.default, c.per_port, None):
            w.expect(gw, e, port=port, scheme="https", client=client)


@_frontend_scenario("GatewayFrontendInvalidDefaultClientCertificateValidation")
def frontend_invalid_default(w: World) -> None:
    gw = "invalid-default-client-validation-config"
    c = _clients(w)
    frontend = {"default": _validation("does-not-exist"),
                "perPort": [{"port": 80, "tls": _validation("tls-validity-checks-per-port-ca-certificate")}]}
    w.apply([ca_configmap("tls-validity-checks-per-port-ca-certificate", c.per_port_ca.pem),
             w.gateway(gw, [https_listener("https", 443),
                            {"name": "http", "port": 80, "protocol": "HTTP",
                             "allowedRoutes": {"namespaces": {"from": "Same"}}}], tls={"frontend": frontend}),
             route(gw, [rule(to("infra-backend-v1"))], parents=[{"name": gw}], hostnames=["example.org"])])
    w.expect_gateway(gw, listeners={
        "http": {"conditions": {"ResolvedRefs": ("True", "*"), "Accepted": ("True", "*"), "Programmed": ("True", "*")}},
        "https": {"conditions": {"ResolvedRefs": ("False", "InvalidCACertificateRef"),
                                 "Accepted": ("False", "NoValidCACertificate"), "Programmed": ("False", "*")}}})
    e = Expect("/", host="example.org", backend="infra-backend-v1")
    w.expect(gw, e, port=80)
    expect_https_refused(w, gw, e, 443, None)


@_frontend_scenario("GatewayInvalidFrontendClientCertificateValidation")
def frontend_invalid_validation(w: World) -> None:
    gw = "gateway-with-invalid-client-cert-validation"
    c = _clients(w)
    frontend = {"default": _validation("tls-validity-checks-ca-certificate"),
                "perPort": [{"port": 7443, "tls": _validation("non-exisitng-cm")},
                            {"port": 8443, "tls": _validation("infra-backend-v2", kind="Service")},
                            {"port": 6443, "tls": _validation("web-backend-cm", ns=WEB)}]}
    w.apply([ca_configmap("tls-validity-checks-ca-certificate", c.default_ca.pem),
             ca_configmap("web-backend-cm", c.default_ca.pem, WEB),
             w.gateway(gw, [https_listener("https", 443), https_listener("https-unresolved", 7443, "first-example.org"),
                            https_listener("https-invalid-kind", 8443, "second-example.org"),
                            https_listener("https-grant-missing", 6443, "fourth-example.org")],
                       tls={"frontend": frontend})])
    # (Upstream's manifest also has an HTTPRoute whose parent Gateway does not exist: nothing checks it.)
    bad = {"Accepted": ("False", "NoValidCACertificate"), "Programmed": ("False", "*")}
    good = {"ResolvedRefs": ("True", "*"), "Accepted": ("True", "*"), "Programmed": ("True", "*")}
    w.expect_gateway(gw, listeners={
        "https": {"conditions": good},
        "https-unresolved": {"conditions": {"ResolvedRefs": ("False", "InvalidCACertificateRef"), **bad}},
        "https-invalid-kind": {"conditions": {"ResolvedRefs": ("False", "InvalidCACertificateKind"), **bad}},
        "https-grant-missing": {"conditions": {"ResolvedRefs": ("False", "RefNotPermitted"), **bad}}})

