"""Cilium users' `ingressClassName: cilium` Ingresses and `gatewayClassName: cilium` Gateways, served
unchanged once cilia claims Cilium's controller names (--ingress-controller-name,
--gateway-controller-name); cilia's own controller names stay served."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cilia.cli import _translate_options, build_parser
from cilia.identity import ProxyId
from cilia.k8s.manifest import parse_text
from cilia.k8s.store import InputSnapshot
from cilia.render.dump import proxy_config_json
from cilia.render.world import render_world
from cilia.translate import TranslationResult, translate
from cilia.translate.context import TranslateOptions
from support.gateway_objects import backend, gateway, gateway_class, http_route, listener, prefix
from support.manifests import docs, endpoint_slice, service

CILIUM_INGRESS = "cilium.io/ingress-controller"
CILIUM_GATEWAY = "io.cilium/gateway-controller"


def _ingress(name: str, cls: str) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"ingressClassName": cls, "rules": [{"http": {"paths": [{
                           "path": "/", "pathType": "Prefix",
                           "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})


def _ingress_class(name: str, controller: str) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": name},
                       "spec": {"controller": controller}})


MANIFESTS = docs(
    service("web", 80, vip="127.96.0.40"),
    endpoint_slice("web", [("127.1.0.40", 8080)]),
    _ingress_class("cilium", CILIUM_INGRESS),
    _ingress("cilium-web", "cilium"),
    _ingress("cilia-web", "cilia"),
    gateway_class("cilium", CILIUM_GATEWAY),
    gateway_class("cilia"),
    gateway("cilium-gw", [listener("http", 18700)], gateway_class_name="cilium"),
    gateway("cilia-gw", [listener("http", 18701)]),
    http_route("to-cilium-gw", [{"matches": [prefix("/")], "backendRefs": [backend("web")]}],
               parents=[{"name": "cilium-gw"}]),
)


def _run(opts: TranslateOptions, text: str = MANIFESTS) -> TranslationResult:
    return translate(InputSnapshot.of(parse_text(text, "m.yaml").objects), opts)


def _listeners(result: TranslationResult, proxy: str) -> list[str]:
    view = render_world(result.ir).for_proxy(ProxyId.parse(proxy))
    return [li["name"] for li in proxy_config_json(view)["listeners"]]


def _status(result: TranslationResult, kind: str, name: str) -> dict[str, object] | None:
    found = [s.status for s in result.statuses if s.kind == kind and s.name == name]
    return dict(found[0]) if found else None


def test_ciliums_classes_are_left_alone_by_default() -> None:
    result = _run(TranslateOptions())
    assert _listeners(result, "ingress~cilium") == []
    assert _listeners(result, "ingress~cilia") != []
    assert _listeners(result, "gateway~default/cilium-gw") == []
    assert _listeners(result, "gateway~default/cilia-gw") != []
    assert _status(result, "GatewayClass", "cilium") is None and _status(result, "HTTPRoute", "to-cilium-gw") is None


def test_claimed_controller_names_serve_ciliums_classes_and_keep_ciliums() -> None:
    opts = TranslateOptions(ingress_controllers=("cilia.io/ingress-controller", CILIUM_INGRESS),
                            gateway_controllers=("cilia.io/gateway-controller", CILIUM_GATEWAY))
    result = _run(opts)
    assert _listeners(result, "ingress~cilium") != [] and _listeners(result, "ingress~cilia") != []
    assert _listeners(result, "gateway~default/cilium-gw") != [] and _listeners(result, "gateway~default/cilia-gw")
    cls = _status(result, "GatewayClass", "cilium")
    assert cls is not None
    accepted = next(c for c in cls["conditions"] if c["type"] == "Accepted")  # type: ignore[attr-defined]
    assert accepted["status"] == "True" and accepted["message"] == f"handled by {CILIUM_GATEWAY}"
    route = _status(result, "HTTPRoute", "to-cilium-gw")
    assert route is not None
    assert [p["controllerName"] for p in route["parents"]] == [CILIUM_GATEWAY]  # type: ignore[attr-defined]
    gw_status = _status(result, "Gateway", "cilia-gw")
    assert gw_status is not None and "handled by cilia.io/gateway-controller" in json.dumps(gw_status)


def test_cilium_class_needs_no_ingressclass_object_while_claimed() -> None:
    """Like cilia's own `cilia`, the class `cilium` is implicit while its controller is claimed (unless an
    IngressClass by that name names another controller)."""
    bare = docs(service("web", 80, vip="127.96.0.40"), endpoint_slice("web", [("127.1.0.40", 8080)]),
                _ingress("cilium-web", "cilium"))
    claimed = TranslateOptions(ingress_controllers=("cilia.io/ingress-controller", CILIUM_INGRESS))
    assert _listeners(_run(claimed, bare), "ingress~cilium") != []
    assert _listeners(_run(TranslateOptions(), bare), "ingress~cilium") == []
    taken = bare + docs(_ingress_class("cilium", "example.com/other"))
    assert _listeners(_run(claimed, taken), "ingress~cilium") == []


def test_cli_flags_are_repeatable_and_keep_the_defaults(tmp_path: Path) -> None:
    args = build_parser().parse_args(["translate", "-f", "x", "--proxy", "node~n",
                                      "--gateway-controller-name", CILIUM_GATEWAY,
                                      "--gateway-controller-name", "example.com/gw",
                                      "--ingress-controller-name", CILIUM_INGRESS])
    opts = _translate_options(args)
    assert opts.gateway_controllers == ("cilia.io/gateway-controller", CILIUM_GATEWAY, "example.com/gw")
    assert opts.ingress_controllers == ("cilia.io/ingress-controller", CILIUM_INGRESS)
    assert _translate_options(build_parser().parse_args(["translate", "-f", "x", "--proxy", "node~n"])) \
        .ingress_controllers == ("cilia.io/ingress-controller",)

    (tmp_path / "m.yaml").write_text(MANIFESTS)
    base = [sys.executable, "-m", "cilia", "translate", "-f", str(tmp_path), "--proxy", "ingress~cilium"]
    plain = subprocess.run(base, capture_output=True, text=True, timeout=60)
    claimed = subprocess.run([*base, "--ingress-controller-name", CILIUM_INGRESS], capture_output=True, text=True,
                             timeout=60)
    assert plain.returncode == 0 and json.loads(plain.stdout)["listeners"] == []
    assert claimed.returncode == 0 and json.loads(claimed.stdout)["listeners"], claimed.stderr
