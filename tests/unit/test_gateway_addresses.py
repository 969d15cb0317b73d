"""Gateway static addresses (GatewayStaticAddresses): which `spec.addresses` a Gateway binds given the
address pool (`--gateway-address-pool`), the conditions it reports otherwise, and what reaches Envoy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cilia.k8s.kinds  # noqa: F401  (registers the kinds)
from cilia.analyze import envoy_validate
from cilia.cli import build_parser
from cilia.k8s.registry import parse_object
from cilia.k8s.store import InputSnapshot
from cilia.render.world import render_world
from cilia.translate import translate
from cilia.translate.context import TranslateOptions
from cilia.translate.gateway_addresses import gateway_addresses, parse_pool
from support.envoy import envoy_binary
from support.golden import case_options, proxy_config
from unit.test_gateway_conformance import GW

POOL = ("127.0.62.0/24", "2001:db8::/64")
DEFAULT = "127.0.0.1"


def gateway_doc(addresses: list[dict[str, str]] | None, name: str = "gw") -> dict[str, Any]:
    spec: dict[str, Any] = {"gatewayClassName": "cilia",
                            "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}
    if addresses is not None:
        spec["addresses"] = addresses
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": "default", "generation": 1},
            "spec": spec}


def ip(value: str) -> dict[str, str]:
    return {"type": "IPAddress", "value": value}


# (addresses, pool) -> (bound, refused reason, unusable reason, text the condition message holds)
CASES: list[tuple[str, list[dict[str, str]] | None, tuple[str, ...], tuple[tuple[str, ...], str, str, str]]] = [
    ("in pool", [ip("127.0.62.7")], POOL, (("127.0.62.7",), "", "", "")),
    ("in pool, type left out", [{"value": "127.0.62.7"}], POOL, (("127.0.62.7",), "", "", "")),
    ("several in pool, v4 and v6, each once", [ip("127.0.62.7"), ip("2001:db8::5"), ip("127.0.62.7")], POOL,
     (("127.0.62.7", "2001:db8::5"), "", "", "")),
    ("out of pool", [ip("127.0.62.7"), ip("127.0.63.9")], POOL,
     ((), "", "AddressNotUsable", "spec.addresses[1] 127.0.63.9")),
    ("v6 outside the v6 pool", [ip("2001:db8:1::5")], POOL, ((), "", "AddressNotUsable", "2001:db8:1::5")),
    ("Hostname type", [{"type": "Hostname", "value": "gw.example.com"}], POOL,
     ((), "UnsupportedAddress", "", "'Hostname'")),
    ("NamedAddress type", [{"type": "NamedAddress", "value": "my-ip"}], POOL,
     ((), "UnsupportedAddress", "", "'NamedAddress'")),
    ("the suite's fake type, before a usable address", [{"type": "test/fake-invalid-type", "value": "x"},
                                                          ip("127.0.62.7")], POOL,
     ((), "UnsupportedAddress", "", "spec.addresses[0]")),
    ("bad IP", [ip("127.0.62.300")], POOL, ((), "UnsupportedAddress", "", "spec.addresses[0].value")),
    ("bad IP without a pool", [ip("not-an-ip")], (), ((), "UnsupportedAddress", "", "'not-an-ip'")),
    ("no pool: any IP", [ip("127.0.63.9"), ip("127.0.64.1")], (), (("127.0.63.9", "127.0.64.1"), "", "", "")),
    ("no addresses: the default, not checked against the pool", None, POOL, ((DEFAULT,), "", "", "")),
    ("empty value: the default", [{"type": "IPAddress"}], POOL, ((DEFAULT,), "", "", "")),
    ("empty value beside a named one", [{"type": "IPAddress"}, ip("127.0.62.9")], POOL,
     (("127.0.62.9",), "", "", "")),
]


@pytest.mark.parametrize(("addresses", "pool", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gateway_addresses(addresses: list[dict[str, str]] | None, pool: tuple[str, ...],
                           want: tuple[tuple[str, ...], str, str, str]) -> None:
    bound, refused, unusable, text = want
    got = gateway_addresses(parse_object(gateway_doc(addresses)), DEFAULT, pool)
    assert got.bound == bound
    assert (got.refused.reason if got.refused else "") == refused
    assert (got.unusable.reason if got.unusable else "") == unusable
    if got.refused is not None:
        assert (got.refused.type, got.refused.ok) == ("Accepted", False)
    if got.unusable is not None:
        assert (got.unusable.type, got.unusable.ok) == ("Programmed", False)
        assert ", ".join(pool) in got.unusable.message
    cond = got.refused or got.unusable
    assert text in (cond.message if cond else "")


def test_bad_ip_is_an_issue_naming_the_gateway_and_field() -> None:
    got = gateway_addresses(parse_object(gateway_doc([ip("1.2.3")], name="edge")), DEFAULT, POOL)
    [issue] = got.issues
    assert (issue.object, issue.field, issue.severity) == ("Gateway default/edge", "spec.addresses[0].value", "error")
    assert "'1.2.3' is not an IP address" in issue.message


@pytest.mark.parametrize(("given", "want"), [
    (["127.0.62.0/24"], ("127.0.62.0/24",)),
    (["127.0.62.9/24", " 2001:db8::/64 "], ("127.0.62.0/24", "2001:db8::/64")),  # host bits dropped
    (["127.0.64.1"], ("127.0.64.1/32",)),
    (["127.0.70.0/24", "127.0.70.0/24"], ("127.0.70.0/24",)),
])
def test_parse_pool(given: list[str], want: tuple[str, ...]) -> None:
    assert parse_pool(given) == want


@pytest.mark.parametrize("bad", ["127.0.62.0/33", "gw.example.com", ""])
def test_parse_pool_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad)):
        parse_pool([bad])


def test_serve_flag_is_repeatable_and_checked() -> None:
    from cilia.cli import _translate_options

    args = build_parser().parse_args(["serve", "--gateway-address-pool", "127.0.62.0/24",
                                      "--gateway-address-pool", "2001:db8::/64", "-f", "x.yaml"])
    assert _translate_options(args).gateway_address_pool == POOL
    args = build_parser().parse_args(["serve", "--gateway-address-pool", "nope", "-f", "x.yaml"])
    with pytest.raises(SystemExit, match="--gateway-address-pool: 'nope' is not an IP network"):
        _translate_options(args)


# -- through translation -------------------------------------------------------------------------------
def translated(*docs: dict[str, Any], pool: tuple[str, ...] = POOL) -> tuple[Any, Any]:
    base = [{"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "cilia"},
             "spec": {"controllerName": "cilia.io/gateway-controller"}}]
    snap = InputSnapshot.of([parse_object(d) for d in (*base, *docs)])
    result = translate(snap, TranslateOptions(gateway_address=DEFAULT, gateway_address_pool=pool))
    return result, render_world(result.ir)


def status(result: Any, kind: str, name: str) -> dict[str, Any]:
    [st] = [s for s in result.statuses if s.kind == kind and s.name == name]
    return dict(st.status)


def conds(stanza: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in stanza["conditions"]}


def test_usable_addresses_are_bound_and_reported() -> None:
    result, world = translated(gateway_doc([ip("127.0.62.7"), ip("2001:db8::5")]))
    st = status(result, "Gateway", "gw")
    assert conds(st) == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    assert st["addresses"] == [ip("127.0.62.7"), ip("2001:db8::5")]
    [li] = proxy_config(world, "gateway~default/gw")["listeners"]
    assert li["address"]["socketAddress"] == {"address": "127.0.62.7", "portValue": 8080}
    assert [a["address"]["socketAddress"] for a in li["additionalAddresses"]] == [
        {"address": "2001:db8::5", "portValue": 8080}]


def test_unusable_address_binds_nothing() -> None:
    result, world = translated(gateway_doc([ip("127.0.62.7"), ip("127.0.63.9")]))
    st = status(result, "Gateway", "gw")
    assert conds(st) == {"Accepted": ("True", "Accepted"), "Programmed": ("False", "AddressNotUsable")}
    assert "addresses" not in st
    [li] = st["listeners"]
    assert conds(li)["Accepted"] == ("True", "Accepted")
    assert conds(li)["Programmed"] == ("False", "Pending")
    assert proxy_config(world, "gateway~default/gw")["listeners"] == []
    assert proxy_config(world, "node~n1")["listeners"] == []


def test_unsupported_type_refuses_the_gateway() -> None:
    result, world = translated(gateway_doc([{"type": "Hostname", "value": "gw.example.com"}]))
    st = status(result, "Gateway", "gw")
    assert conds(st) == {"Accepted": ("False", "UnsupportedAddress"), "Programmed": ("False", "Invalid")}
    assert "addresses" not in st
    assert proxy_config(world, "gateway~default/gw")["listeners"] == []


def test_listener_set_of_an_unusable_gateway_is_not_programmed() -> None:
    gw = gateway_doc([ip("127.0.63.9")])
    gw["spec"]["allowedListeners"] = {"namespaces": {"from": "Same"}}
    ls = {"apiVersion": GW, "kind": "ListenerSet", "metadata": {"name": "ls", "namespace": "default", "generation": 1},
          "spec": {"parentRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"},
                   "listeners": [{"name": "extra", "port": 8081, "protocol": "HTTP"}]}}
    result, world = translated(gw, ls)
    st = status(result, "ListenerSet", "ls")
    assert conds(st) == {"Accepted": ("True", "Accepted"), "Programmed": ("False", "AddressNotUsable")}
    assert proxy_config(world, "gateway~default/gw")["listeners"] == []


def test_clash_on_any_address_is_seen_on_shared_proxies() -> None:
    """Node proxies serve every Gateway: a second Gateway on the port of one of the first's addresses is
    served only by its dedicated proxy there."""
    first = gateway_doc([ip("127.0.62.7"), ip("127.0.62.8")], name="a")
    second = gateway_doc([ip("127.0.62.8")], name="b")
    result, world = translated(first, second)
    names = [li["name"] for li in proxy_config(world, "node~n1")["listeners"]]
    assert names == ["gateway/default/a/8080"]
    assert any(i.object == "Gateway default/b" and "127.0.62.8" in i.message for i in result.issues)


def test_config_with_additional_addresses_is_valid_for_envoy() -> None:
    _, world = translated(gateway_doc([ip("127.0.62.7"), ip("127.0.62.8"), ip("::1")]), pool=())
    config = proxy_config(world, "gateway~default/gw")
    assert len(config["listeners"][0]["additionalAddresses"]) == 2
    assert envoy_validate(envoy_binary(), config) == ""


def test_golden_options_yaml_lists_become_tuples() -> None:
    """A golden case's options.yaml list is the tuple TranslateOptions holds (hashable, as memo keys need)."""
    case = Path(__file__).resolve().parent.parent / "golden" / "gateway" / "static-addresses"
    assert case_options(case).gateway_address_pool == POOL
