"""ListenerSet: parsing of the kind and of a Gateway's allowedListeners, admission by the parent Gateway,
ListenerSet conditions and the Gateway's attachedListenerSets (as the upstream ListenerSet conformance
tests assert them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import cilia.k8s.kinds  # noqa: F401  (registers the kinds)
from cilia.analyze import envoy_validate
from cilia.errors import ValidationError
from cilia.k8s.registry import parse_object
from support.certs import TestCA
from support.conformance_base import INFRA, WEB
from support.envoy import envoy_binary
from support.golden import proxy_config, translate_case
from unit.test_gateway_conformance import GW, Outcome, run

OTHER = "listenerset-other"
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "gateway" / "listenerset"


def gateway(name: str, allowed: dict[str, Any] | None = None, ns: str = INFRA) -> dict[str, Any]:
    spec: dict[str, Any] = {"gatewayClassName": "cilia",
                            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "gw.example"}]}
    if allowed is not None:
        spec["allowedListeners"] = {"namespaces": allowed}
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": spec}


def listener_set(name: str, parent: str, ns: str = INFRA, parent_ns: str | None = INFRA) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": parent}
    if parent_ns is not None:
        ref["namespace"] = parent_ns
    return {"apiVersion": GW, "kind": "ListenerSet", "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": {"parentRef": ref,
                     "listeners": [{"name": "extra", "port": 80, "protocol": "HTTP", "hostname": f"{name}.example"}]}}


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def outcome(*docs: dict[str, Any]) -> Outcome:
    return run(*(yaml.safe_dump(d) for d in docs))


def ls_conds(out: Outcome, name: str, ns: str = INFRA) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in out.status("ListenerSet", name, ns)["conditions"]}


def test_listener_set_parses_with_parent_namespace_defaulted() -> None:
    obj = parse_object(listener_set("ls", "gw", ns=WEB, parent_ns=None))
    assert obj.spec.parent_ref.namespace == WEB
    assert [li.name for li in obj.spec.listeners] == ["extra"]
    assert parse_object(gateway("gw")).spec.allowed_listeners.namespaces_from == "None"


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["spec"].pop("parentRef"), "spec.parentRef"),
    (lambda d: d["spec"].update(listeners=[]), "spec.listeners"),
    (lambda d: d["spec"]["listeners"].append(dict(d["spec"]["listeners"][0])), "spec.listeners[1].name"),
])
def test_bad_listener_set_names_the_field(mutate: Any, field: str) -> None:
    doc = listener_set("ls", "gw")
    mutate(doc)
    with pytest.raises(ValidationError) as err:
        parse_object(doc)
    assert field in str(err.value)


def test_bad_allowed_listeners_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        parse_object(gateway("gw", {"from": "Everywhere"}))
    assert "spec.allowedListeners.namespaces.from" in str(err.value)
    with pytest.raises(ValidationError) as err:
        parse_object(gateway("gw", {"from": "Selector"}))
    assert "spec.allowedListeners.namespaces.selector" in str(err.value)


def test_default_gateway_does_not_allow_listener_sets() -> None:
    """ListenerSetDefaultNotAllowed."""
    out = outcome(gateway("gw"), listener_set("ls", "gw"))
    assert out.gateway_conds("gw")["Accepted"] == ("True", "Accepted")
    assert out.status("Gateway", "gw").get("attachedListenerSets", 0) == 0
    assert ls_conds(out, "ls") == {"Accepted": ("False", "NotAllowed"), "Programmed": ("False", "NotAllowed")}


@pytest.mark.parametrize(("allowed", "admitted"), [
    ({"from": "None"}, set()),
    ({"from": "Same"}, {INFRA}),
    ({"from": "All"}, {INFRA, WEB, OTHER}),
    ({"from": "Selector", "selector": {"matchLabels": {"listenersets": "yes"}}}, {OTHER}),
])
def test_allowed_listeners_namespaces(allowed: dict[str, Any], admitted: set[str]) -> None:
    """ListenerSetAllowedNamespace{None,Same,Selector}: each namespace's ListenerSet is admitted or not."""
    docs = [namespace(OTHER, {"listenersets": "yes"}), gateway("gw", allowed)]
    docs += [listener_set(f"ls-{ns}", "gw", ns=ns) for ns in (INFRA, WEB, OTHER)]
    out = outcome(*docs)
    assert out.status("Gateway", "gw").get("attachedListenerSets", 0) == len(admitted)
    assert ("attachedListenerSets" in out.status("Gateway", "gw")) == (allowed["from"] != "None")
    for ns in (INFRA, WEB, OTHER):
        accepted = ls_conds(out, f"ls-{ns}", ns)["Accepted"]
        assert accepted == (("True", "Accepted") if ns in admitted else ("False", "NotAllowed")), ns


def test_missing_parent_is_an_issue_and_no_status() -> None:
    out = outcome(gateway("gw", {"from": "All"}), listener_set("ls", "nope"))
    assert out.status("Gateway", "gw")["attachedListenerSets"] == 0
    with pytest.raises(KeyError):
        out.status("ListenerSet", "ls")
    assert any("Gateway gateway-conformance-infra/nope not found" in i.message and i.field == "spec.parentRef"
               for i in out.result.issues)


def http_route(name: str, parent: dict[str, Any], hostnames: list[str]) -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": INFRA, "generation": 1},
            "spec": {"parentRefs": [parent], "hostnames": hostnames,
                     "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]}}


def test_route_attaches_to_listener_set_listener_and_is_served_on_the_gateway_port() -> None:
    """ListenerSetHTTPRouting: a route whose parent is the ListenerSet is served on the shared port; a
    parentRef to the Gateway reaches only the Gateway's own listeners."""
    ls_ref = {"group": "gateway.networking.k8s.io", "kind": "ListenerSet", "name": "ls", "sectionName": "extra"}
    out = outcome(gateway("gw", {"from": "Same"}), listener_set("ls", "gw"),
                  http_route("via-ls", ls_ref, ["ls.example"]),
                  http_route("via-gw", {"name": "gw"}, ["ls.example"]))
    assert ls_conds(out, "ls") == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    [li] = out.status("ListenerSet", "ls")["listeners"]
    assert li["name"] == "extra" and li["attachedRoutes"] == 1
    assert out.parent("via-ls", "ls", section="extra")["Accepted"] == ("True", "Accepted")
    assert out.parent("via-gw", "gw")["Accepted"] == ("False", "NoMatchingListenerHostname")
    assert [li["name"] for li in out.status("Gateway", "gw")["listeners"]] == ["http"]
    routes = [r for b in out.result.ir.bundles for r in b.routes if r.name == f"gateway/{INFRA}/gw/80"]
    assert routes
    domains = {d for vh in routes[0].virtual_hosts for d in vh.domains}
    assert "ls.example" in domains and "gw.example" in domains


def test_gateway_listener_wins_a_hostname_conflict() -> None:
    """ListenerSetHostnameConflict: the ListenerSet listener on the Gateway's port and hostname conflicts."""
    ls = listener_set("ls", "gw")
    ls["spec"]["listeners"][0]["hostname"] = "gw.example"
    out = outcome(gateway("gw", {"from": "Same"}), ls)
    [li] = out.status("ListenerSet", "ls")["listeners"]
    conds = {c["type"]: (c["status"], c["reason"]) for c in li["conditions"]}
    assert conds["Conflicted"] == ("True", "HostnameConflict")
    assert conds["Programmed"] == ("False", "HostnameConflict")
    assert ls_conds(out, "ls") == {"Accepted": ("False", "ListenersNotValid"),
                                   "Programmed": ("False", "ListenersNotValid")}
    assert out.listener_conds("gw", "http")["Conflicted"] == ("False", "NoConflicts")
    # A ListenerSet none of whose listeners is valid is admitted but not counted as attached.
    assert out.status("Gateway", "gw")["attachedListenerSets"] == 0


def test_older_listener_set_wins_a_protocol_conflict() -> None:
    """ListenerSetProtocolConflict: a TCP listener on an HTTP port of an earlier ListenerSet conflicts."""
    first, second = listener_set("a-first", "gw"), listener_set("b-second", "gw")
    second["spec"]["listeners"][0] = {"name": "tcp", "port": 80, "protocol": "TCP"}
    out = outcome(gateway("gw", {"from": "Same"}), second, first)
    assert ls_conds(out, "a-first") == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    [li] = out.status("ListenerSet", "b-second")["listeners"]
    assert {c["type"]: c["reason"] for c in li["conditions"]}["Conflicted"] == "ProtocolConflict"
    assert out.status("Gateway", "gw")["attachedListenerSets"] == 1


def test_parent_gateway_not_accepted() -> None:
    gw = gateway("gw", {"from": "Same"})
    gw["spec"]["addresses"] = [{"type": "Hostname", "value": "gw.example"}]
    out = outcome(gw, listener_set("ls", "gw"))
    assert out.gateway_conds("gw")["Accepted"][0] == "False"
    assert ls_conds(out, "ls")["Accepted"] == ("False", "ParentNotAccepted")
    assert not [b for b in out.result.ir.bundles for li in b.listeners if li.name.startswith(f"gateway/{INFRA}/gw/")]


def test_same_namespace_routes_means_the_listener_sets_namespace() -> None:
    """allowedRoutes from: Same on a ListenerSet listener admits routes of the ListenerSet's namespace,
    not of the Gateway's."""
    ls = listener_set("ls", "gw", ns=WEB)
    ls["spec"]["listeners"][0]["allowedRoutes"] = {"namespaces": {"from": "Same"}}
    ref = {"group": "gateway.networking.k8s.io", "kind": "ListenerSet", "name": "ls", "namespace": WEB}
    in_web = http_route("in-web", ref, ["ls.example"])
    in_web["metadata"]["namespace"] = WEB
    in_web["spec"]["rules"][0]["backendRefs"][0]["name"] = "web-backend"
    out = outcome(gateway("gw", {"from": "All"}), ls, in_web, http_route("in-infra", ref, ["ls.example"]))
    assert out.parent("in-web", "ls", ns=WEB)["Accepted"] == ("True", "Accepted")
    assert out.parent("in-infra", "ls")["Accepted"] == ("False", "NotAllowedByListeners")


def test_route_to_a_listener_set_that_is_not_admitted_is_an_issue() -> None:
    ref = {"group": "gateway.networking.k8s.io", "kind": "ListenerSet", "name": "ls"}
    out = outcome(gateway("gw"), listener_set("ls", "gw"), http_route("r", ref, ["ls.example"]))
    with pytest.raises(KeyError):
        out.status("HTTPRoute", "r")
    assert any(i.field == "spec.parentRefs[0]" and "not attached" in i.message for i in out.result.issues)


def test_golden_listener_set_config_is_valid_for_envoy(tmp_path: Path) -> None:
    """The golden case's config (ListenerSet listeners merged on ports 80 and 443), with a real certificate
    in place of the case's placeholder, passes `envoy --mode validate`."""
    pem = TestCA().issue("shop.example")
    text = (GOLDEN / "input.yaml").read_text()
    for old, new in (("-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n", pem.cert.decode()),
                     ("-----BEGIN PRIVATE KEY-----\\nMIIB\\n-----END PRIVATE KEY-----\\n", pem.key.decode())):
        assert old in text
        text = text.replace(old, new.replace("\n", "\\n"))
    (tmp_path / "input.yaml").write_text(text)
    _, result, world = translate_case(tmp_path)
    assert not [i for i in result.issues if i.severity == "error"]
    config = proxy_config(world, "gateway~infra/gw")
    names = {li["name"] for li in config["listeners"]}
    assert {"gateway/infra/gw/80", "gateway/infra/gw/443"} <= names
    assert envoy_validate(envoy_binary(), config) == ""
