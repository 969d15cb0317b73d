"""ListenerSet scenarios (upstream conformance/tests/listenerset-*), restated: Gateways that do or do not
admit ListenerSets by namespace, and the conditions and counts the suite asserts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conformance.runner import GW, Expect, World, scenario
from conformance.scenarios import V1, V2, V3, http_listener, prefix, route, rule, to
from support.conformance_base import INFRA, WEB

GROUP = "gateway.networking.k8s.io"
NOT_ALLOWED = {"Accepted": ("False", "NotAllowed"), "Programmed": ("False", "NotAllowed")}
ADMITTED = {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
HTTP_KINDS = ["HTTPRoute", "GRPCRoute"]
LISTENER_OK = {"Accepted": ("True", "*"), "ResolvedRefs": ("True", "*"), "Programmed": ("True", "*")}


def all_ns_listener(name: str, hostname: str, port: int = 80) -> dict[str, Any]:
    return http_listener(name, port, hostname, allowedRoutes={"namespaces": {"from": "All"}})


def gateway(w: World, name: str, frm: str | None, selector: Mapping[str, str] | None = None,
            listeners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if frm is not None:
        ns: dict[str, Any] = {"from": frm}
        if selector is not None:
            ns["selector"] = {"matchLabels": dict(selector)}
        spec["allowedListeners"] = {"namespaces": ns}
    return w.gateway(name, listeners or [all_ns_listener("gateway-listener", "gateway-listener.com")], **spec)


def listener_set(name: str, parent: str, listeners: list[dict[str, Any]], ns: str = INFRA) -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "ListenerSet", "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRef": {"kind": "Gateway", "group": GROUP, "name": parent, "namespace": INFRA},
                     "listeners": listeners}}


def namespace(name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if labels:
        md["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": md}


def expect_attached(w: World, gateway: str, count: int) -> None:
    """GatewayMustHaveAttachedListeners: Accepted, and status.attachedListenerSets (absent reads 0)."""
    def check() -> str:
        st = w.status("Gateway", gateway)
        if st is None:
            return "no status"
        problem = w._conds(st, st["status"]["conditions"], {"Accepted": ("True", "*")})
        have = st["status"].get("attachedListenerSets", 0)
        return problem or ("" if have == count else f"attachedListenerSets {have}, want {count}")
    w.eventually(f"Gateway {gateway} attachedListenerSets", check)


def expect_listener_set(w: World, name: str, ns: str = INFRA, *,
                        listeners: Mapping[str, Mapping[str, Any]] | None = None,
                        **want: tuple[str, str]) -> None:
    """The ListenerSet's conditions, and per listener: attachedRoutes, supportedKinds, conditions."""
    def check() -> str:
        st = w.status("ListenerSet", name, ns)
        if st is None:
            return "no status"
        problem = w._conds(st, st["status"]["conditions"], want)
        if problem:
            return problem
        by = {li["name"]: li for li in st["status"].get("listeners") or []}
        for lname, exp in (listeners or {}).items():
            li = by.get(lname)
            if li is None:
                return f"no listener status {lname}"
            if "attachedRoutes" in exp and li["attachedRoutes"] != exp["attachedRoutes"]:
                return f"listener {lname} attachedRoutes {li['attachedRoutes']}, want {exp['attachedRoutes']}"
            if "supportedKinds" in exp and sorted(k["kind"] for k in li["supportedKinds"]) != \
                    sorted(exp["supportedKinds"]):
                return f"listener {lname} supportedKinds {li['supportedKinds']}, want {exp['supportedKinds']}"
            problem = w._conds(st, li["conditions"], exp.get("conditions", {}))
            if problem:
                return f"listener {lname}: {problem}"
        return ""
    w.eventually(f"ListenerSet {ns}/{name} status", check)


@scenario("ListenerSetDefaultNotAllowed", fast=True)
def default_not_allowed(w: World) -> None:
    gw = "gateway-default-does-not-allow-listenerset"
    w.apply([gateway(w, gw, None),
             listener_set("listenerset-default-not-allowed", gw,
                          [all_ns_listener("listenerset-default-not-allowed-listener",
                                           "listenerset-default-not-allowed-listener.com")])])
    expect_attached(w, gw, 0)
    expect_listener_set(w, "listenerset-default-not-allowed", **NOT_ALLOWED)


@scenario("ListenerSetAllowedNamespaceNone", fast=True)
def allowed_namespace_none(w: World) -> None:
    gw = "gateway-does-not-allow-listenerset"
    w.apply([gateway(w, gw, "None"),
             listener_set("listenerset-not-allowed", gw,
                          [all_ns_listener("listener-set-listener", "listener-set-listener.com")])])
    expect_attached(w, gw, 0)
    expect_listener_set(w, "listenerset-not-allowed", **NOT_ALLOWED)


@scenario("ListenerSetAllowedNamespaceSame", fast=True)
def allowed_namespace_same(w: World) -> None:
    gw = "gateway-allows-listenerset-in-same-namespace"
    other = "gateway-api-listenerset-not-allowed-ns"
    w.apply([gateway(w, gw, "Same"),
             listener_set("listenerset-in-same-namespace", gw,
                          [all_ns_listener("listenerset-in-same-namespace-listener",
                                           "listenerset-in-same-namespace-listener.com")]),
             namespace(other),
             listener_set("listenerset-in-different-namespace", gw,
                          [all_ns_listener("listenerset-in-different-namespace-listener",
                                           "listenerset-in-different-namespace-listener")], ns=other)])
    expect_attached(w, gw, 1)
    expect_listener_set(w, "listenerset-in-same-namespace",
                        listeners={"listenerset-in-same-namespace-listener": {"conditions": LISTENER_OK}},
                        **ADMITTED)
    expect_listener_set(w, "listenerset-in-different-namespace", other, **NOT_ALLOWED)


@scenario("ListenerSetAllowedNamespaceSelector", fast=True)
def allowed_namespace_selector(w: World) -> None:
    gw = "gateway-allows-listenerset-in-selected-namespace"
    yes, no = "gateway-api-listenerset-selector-allowed-ns", "gateway-api-listenerset-selector-not-allowed-ns"
    w.apply([gateway(w, gw, "Selector", {"allowed": "ns"}),
             namespace(yes, {"allowed": "ns"}),
             listener_set("listenerset-in-selected-namespace", gw,
                          [all_ns_listener("listenerset-in-selected-namespace-listener",
                                           "listenerset-in-selected-namespace-listener.com")], ns=yes),
             namespace(no),
             listener_set("listenerset-not-in-selected-namespace", gw,
                          [all_ns_listener("listenerset-not-in-selected-namespace-listener",
                                           "listenerset-not-in-selected-namespace-listener.com")], ns=no)])
    expect_attached(w, gw, 1)
    expect_listener_set(w, "listenerset-in-selected-namespace", yes,
                        listeners={"listenerset-in-selected-namespace-listener": {"conditions": LISTENER_OK}},
                        **ADMITTED)
    expect_listener_set(w, "listenerset-not-in-selected-namespace", no, **NOT_ALLOWED)


def ls_ref(name: str, section: str = "") -> dict[str, Any]:
    ref = {"kind": "ListenerSet", "group": GROUP, "name": name, "namespace": INFRA}
    if section:
        ref["sectionName"] = section
    return ref


@scenario("ListenerSetHTTPRouting")
def http_routing(w: World) -> None:
    gw = "gateway-with-listener-sets-http-routing"
    ls1, ls2 = "listener-set-http-routing-1", "listener-set-http-routing-2"
    gw_ref = {"name": gw, "namespace": INFRA}
    w.apply([
        gateway(w, gw, "All", listeners=[all_ns_listener("gateway-listener-1", "gateway-listener-1.com"),
                                         all_ns_listener("gateway-listener-2", "gateway-listener-2.com")]),
        *(listener_set(ls, gw, [all_ns_listener(f"{ls}-listener-{i}", f"{ls}-listener-{i}.com") for i in (1, 2)])
          for ls in (ls1, ls2)),
        route("attaches-to-all-listeners", [rule(to(V1), matches=[prefix("/route")])],
              parents=[gw_ref, ls_ref(ls1), ls_ref(ls2)]),
        route("gateway-route", [rule(to(V2), matches=[prefix("/gateway-route")])], parents=[gw_ref]),
        route("gateway-section-route", [rule(to(V3), matches=[prefix("/gateway-section-route")])],
              parents=[{**gw_ref, "sectionName": "gateway-listener-1"}]),
        route(f"{ls1}-route", [rule(to(V2), matches=[prefix(f"/{ls1}-route")])], parents=[ls_ref(ls1)]),
        route(f"{ls1}-section-route", [rule(to(V3), matches=[prefix(f"/{ls1}-section-route")])],
              parents=[ls_ref(ls1, f"{ls1}-listener-1")]),
        route(f"{ls2}-route", [rule(to(V2), matches=[prefix(f"/{ls2}-route")])], parents=[ls_ref(ls2)]),
    ])
    for r in ("attaches-to-all-listeners", "gateway-route", "gateway-section-route"):
        w.expect_route(r, gw, section="gateway-listener-1" if r == "gateway-section-route" else "")
    expect_attached(w, gw, 2)
    for r in ("attaches-to-all-listeners", f"{ls1}-route", f"{ls1}-section-route"):
        w.expect_route(r, ls1, section=f"{ls1}-listener-1" if r.endswith("section-route") else "")
    for r in ("attaches-to-all-listeners", f"{ls2}-route"):
        w.expect_route(r, ls2)
    expect_listener_set(w, ls1, listeners={
        f"{ls1}-listener-1": {"supportedKinds": HTTP_KINDS, "attachedRoutes": 3, "conditions": LISTENER_OK},
        f"{ls1}-listener-2": {"supportedKinds": HTTP_KINDS, "attachedRoutes": 2, "conditions": LISTENER_OK}},
        **ADMITTED)
    expect_listener_set(w, ls2, listeners={
        f"{ls2}-listener-{i}": {"supportedKinds": HTTP_KINDS, "attachedRoutes": 2, "conditions": LISTENER_OK}
        for i in (1, 2)}, **ADMITTED)
    gw_hosts = ["gateway-listener-1.com", "gateway-listener-2.com"]
    ls1_hosts = [f"{ls1}-listener-1.com", f"{ls1}-listener-2.com"]
    ls2_hosts = [f"{ls2}-listener-1.com", f"{ls2}-listener-2.com"]
    served: dict[str, dict[str, str]] = {  # path -> host -> backend; every other host answers 404
        "/route": dict.fromkeys(gw_hosts + ls1_hosts + ls2_hosts, V1),
        "/gateway-route": dict.fromkeys(gw_hosts, V2),
        "/gateway-section-route": {"gateway-listener-1.com": V3},
        f"/{ls1}-route": dict.fromkeys(ls1_hosts, V2),
        f"/{ls1}-section-route": {f"{ls1}-listener-1.com": V3},
        f"/{ls2}-route": dict.fromkeys(ls2_hosts, V2),
    }
    for path, hosts in served.items():
        for host in gw_hosts + ls1_hosts + ls2_hosts:
            if host in hosts:
                w.expect(gw, Expect(path, host=host, backend=hosts[host]))
            elif path != "/route":
                w.expect(gw, Expect(path, host=host, status=404))


def _conflict_scenario(w: World, kind: str, other: Mapping[str, Any]) -> None:
    """ListenerSet{Hostname,Protocol}Conflict: on the Gateway's port, a ListenerSet listener that clashes
    with a Gateway listener, or with an earlier ListenerSet's, is Conflicted; the earlier one keeps serving.
    `other` is the clashing listener's protocol and hostname."""
    word = kind.lower()
    gw = f"gateway-with-listenerset-{word}-conflict"
    vs_gw, vs_ls = f"{word}-conflict-with-gateway-listener", f"{word}-conflict-with-listener-set-listener"
    reason = f"{kind}Conflict"
    conflicted = {"Accepted": ("False", reason), "Programmed": ("False", reason), "Conflicted": ("True", reason)}

    def li(name: str, hostname: str = "") -> dict[str, Any]:
        return all_ns_listener(name, hostname or f"{name}.com")

    def clash(name: str) -> dict[str, Any]:
        out = {**li(name), **other}  # same name, so the same hostname as the listener it clashes with
        return {k: v for k, v in out.items() if v is not None}

    sets = {f"listenerset-with-{word}-conflict-with-gateway-1": [li("listener-set-1-listener"), clash(vs_gw),
                                                                 li(vs_ls)],
            f"listenerset-with-{word}-conflict-with-gateway-2": [clash(vs_gw)],
            f"listenerset-with-{word}-conflict-with-listener-set-1": [li("listener-set-2-listener"), clash(vs_ls)],
            f"listenerset-with-{word}-conflict-with-listener-set-2": [clash(vs_ls)]}
    w.apply([gateway(w, gw, "Same", listeners=[li("gateway-listener"), li(vs_gw)]),
             *(listener_set(name, gw, listeners) for name, listeners in sets.items())])
    w.expect_gateway(gw, Accepted=("True", "*"), listeners={"gateway-listener": {"conditions": LISTENER_OK},
                                                            vs_gw: {"conditions": LISTENER_OK}})
    expect_attached(w, gw, 2)
    partial = {"Accepted": ("True", "*"), "Programmed": ("True", "Programmed")}
    invalid = {"Accepted": ("False", "ListenersNotValid"), "Programmed": ("False", "ListenersNotValid")}
    names = list(sets)
    expect_listener_set(w, names[0], listeners={"listener-set-1-listener": {"conditions": LISTENER_OK},
                                                vs_gw: {"conditions": conflicted}, vs_ls: {"conditions": LISTENER_OK}},
                        **partial)
    expect_listener_set(w, names[1], listeners={vs_gw: {"conditions": conflicted}}, **invalid)
    expect_listener_set(w, names[2], listeners={"listener-set-2-listener": {"conditions": LISTENER_OK},
                                                vs_ls: {"conditions": conflicted}}, **partial)
    expect_listener_set(w, names[3], listeners={vs_ls: {"conditions": conflicted}}, **invalid)


@scenario("ListenerSetHostnameConflict", fast=True)
def hostname_conflict(w: World) -> None:
    _conflict_scenario(w, "Hostname", {})


@scenario("ListenerSetProtocolConflict", fast=True)
def protocol_conflict(w: World) -> None:
    _conflict_scenario(w, "Protocol", {"protocol": "TCP", "hostname": None})


@scenario("ListenerSetAllowedRoutesNamespaces")
def allowed_routes_namespaces(w: World) -> None:
    gw = "gateway-with-listener-sets-test-allowed-routes"
    ls = "listenerset-test-allowed-routes-namespaces"
    yes, no = "gateway-api-routes-allowed-ns", "gateway-api-routes-not-allowed-ns"
    base = "listener-set-listener-allowed-routes"
    listeners = [all_ns_listener(f"{base}-all", f"{base}-all.com"),
                 http_listener(f"{base}-same", 80, f"{base}-same.com"),
                 http_listener(f"{base}-selector", 80, f"{base}-selector.com",
                               allowedRoutes={"namespaces": {"from": "Selector",
                                                             "selector": {"matchLabels": {"allowed": "ns"}}}})]
    routes = {"route-in-same-namespace": (INFRA, V1), "route-in-selected-namespace": (yes, V2),
              "route-not-in-selected-namespace": (no, V3)}
    w.apply([gateway(w, gw, "All"), listener_set(ls, gw, listeners), namespace(yes, {"allowed": "ns"}), namespace(no),
             *(route(name, [rule(to(backend, namespace=INFRA), matches=[prefix(f"/{name}")])], parents=[ls_ref(ls)],
                     ns=ns) for name, (ns, backend) in routes.items()),
             {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
              "metadata": {"name": f"{ls}-reference-grant", "namespace": INFRA},
              "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": yes},
                                {"group": GROUP, "kind": "HTTPRoute", "namespace": no}],
                       "to": [{"group": "", "kind": "Service"}]}}])
    expect_attached(w, gw, 1)
    for name, (ns, _) in routes.items():
        w.expect_route(name, ls, ns=ns)
    expect_listener_set(w, ls, listeners={
        f"{base}-all": {"supportedKinds": HTTP_KINDS, "attachedRoutes": 3, "conditions": LISTENER_OK},
        f"{base}-same": {"supportedKinds": HTTP_KINDS, "attachedRoutes": 1, "conditions": LISTENER_OK},
        f"{base}-selector": {"supportedKinds": HTTP_KINDS, "attachedRoutes": 1, "conditions": LISTENER_OK}})
    served = {"all": {"route-in-same-namespace": V1, "route-in-selected-namespace": V2,
                      "route-not-in-selected-namespace": V3},
              "same": {"route-in-same-namespace": V1}, "selector": {"route-in-selected-namespace": V2}}
    for which, backends in served.items():
        for name in routes:
            want = backends.get(name)
            e = Expect(f"/{name}", host=f"{base}-{which}.com", **({"backend": want} if want else {"status": 404}))
            w.expect(gw, e)


@scenario("ListenerSetAllowedRoutesSupportedKinds", fast=True)
def allowed_routes_supported_kinds(w: World) -> None:
    gw = "gateway-with-listener-sets-test-supported-route-kinds"
    ls = "listenerset-test-allowed-routes-supported-kinds"
    tls_only = "listener-set-listener-allowed-routes-tls-only"
    w.apply([gateway(w, gw, "All"),
             listener_set(ls, gw, [{"name": tls_only, "port": 443, "protocol": "TLS", "hostname": f"{tls_only}.com",
                                    "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "HTTPRoute"}]},
                                    "tls": {"mode": "Passthrough"}}])])
    w.expect_gateway(gw, Accepted=("True", "*"))
    expect_listener_set(w, ls, listeners={tls_only: {"conditions": {"ResolvedRefs": ("False", "InvalidRouteKinds")}}})


@scenario("ListenerSetReferenceGrant", fast=True)
def reference_grant(w: World) -> None:
    gw = "gateway-with-listener-sets-test-reference-grant"
    other = "gateway-api-listener-sets-test-reference-grant-ns"
    cert = {"group": "", "kind": "Secret", "name": "certificate", "namespace": WEB}

    def https(name: str, hostname: str) -> dict[str, Any]:
        return {"name": name, "port": 443, "protocol": "HTTPS", "hostname": hostname,
                "allowedRoutes": {"namespaces": {"from": "All"}}, "tls": {"certificateRefs": [cert]}}

    def grant(name: str, kind: str) -> dict[str, Any]:
        return {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                "metadata": {"name": name, "namespace": WEB},
                "spec": {"from": [{"group": GROUP, "kind": kind, "namespace": INFRA}],
                         "to": [{"group": "", "kind": "Secret"}]}}

    w.apply([gateway(w, gw, "All", listeners=[https("gateway-listener", "gateway-listener.com")]),
             w.tls_secret("certificate", WEB), grant("reference-grant-for-gateway", "Gateway"),
             listener_set("listenerset-with-reference-grant", gw,
                          [https("listenerset-with-reference-grant-listener",
                                 "listenerset-with-reference-grant-listener.com")]),
             grant("reference-grant-for-listener-set", "ListenerSet"), namespace(other),
             listener_set("listenerset-without-reference-grant", gw,
                          [https("listenerset-without-reference-grant-listener",
                                 "listenerset-without-reference-grant-listener-1.com")], ns=other)])
    w.expect_gateway(gw, Accepted=("True", "*"))
    expect_listener_set(w, "listenerset-with-reference-grant", Accepted=("True", "*"), Programmed=("True", "*"),
                        listeners={"listenerset-with-reference-grant-listener":
                                   {"conditions": {"ResolvedRefs": ("True", "*")}}})
    expect_listener_set(w, "listenerset-without-reference-grant", other,
                        Accepted=("False", "ListenersNotValid"), Programmed=("False", "ListenersNotValid"),
                        listeners={"listenerset-without-reference-grant-listener":
                                   {"conditions": {"ResolvedRefs": ("False", "RefNotPermitted")}}})
