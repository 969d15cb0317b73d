"""Unit tests for Ingress parsing, class selection, path and host matching rules, TLS checks, status."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from cilia.cli import _translate_options, build_parser
from cilia.errors import ValidationError
from cilia.ir.model import PathMatch
from cilia.k8s.ingress import IngressPath, IngressSpec
from cilia.k8s.registry import parse_object
from cilia.k8s.store import InputSnapshot
from cilia.render.world import render_world
from cilia.translate import translate
from cilia.translate.context import TranslateOptions
from cilia.translate.ingress import (
    ClassView,
    class_of,
    ingress_classes,
    path_match,
    status_address,
    translate_ingresses,
    wildcard_guard,
)
from cilia.translate.tls import check_tls_pair, host_covered
from support.certs import TestCA, tls_secret


def ingress(name: str = "web", spec: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
            created: Any = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": "default"}
    if annotations:
        md["annotations"] = annotations
    if created is not None:
        md["creationTimestamp"] = created
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": md,
            "spec": spec if spec is not None else {"ingressClassName": "cilia", "rules": [rule("/")]}}


def rule(path: str, path_type: str = "Prefix", host: str = "", svc: str = "app", port: Any = 80) -> dict[str, Any]:
    p = {"number": port} if isinstance(port, int) else {"name": port}
    r: dict[str, Any] = {"http": {"paths": [{"path": path, "pathType": path_type,
                                             "backend": {"service": {"name": svc, "port": p}}}]}}
    if host:
        r["host"] = host
    return r


def service(name: str = "app") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": "127.96.0.10", "ports": [{"name": "http", "port": 80}]}}


def slice_(svc: str, addr: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-1", "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [addr]}]}


def snap(*raws: dict[str, Any]) -> InputSnapshot:
    return InputSnapshot.of(parse_object(r) for r in raws)


# -- parsing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "field", "text"), [
    ({"rules": [{"http": {"paths": []}}]}, "spec.rules[0].http.paths", "at least one path"),
    ({"rules": [rule("/", "Regex")]}, "spec.rules[0].http.paths[0].pathType", "must be one of"),
    ({"rules": [rule("/a/./b", "Exact")]}, "spec.rules[0].http.paths[0].path", "'/./'"),
    ({"rules": [rule("/a%2Fb")]}, "spec.rules[0].http.paths[0].path", "'%2F'"),
    ({"rules": [rule("a", "ImplementationSpecific")]}, "spec.rules[0].http.paths[0].path", "absolute"),
    ({"rules": [rule("/", host="*")]}, "spec.rules[0].host", "not a valid"),
    ({"rules": [rule("/", host="::1")]}, "spec.rules[0].host", "not an IP address"),
    ({"rules": [rule("/", port="HTTP")]}, "spec.rules[0].http.paths[0].backend.service.port.name", "valid port"),
    ({"defaultBackend": {"service": {"name": "app"}}}, "spec.defaultBackend.service.port", "is required"),
    ({"defaultBackend": {}}, "spec.defaultBackend", "one of service or resource"),
    ({"defaultBackend": {"serviceName": "app", "servicePort": 80}}, "spec.defaultBackend", "v1beta1"),
    ({"tls": [{"hosts": ["*.*.example.com"]}], "rules": [rule("/")]}, "spec.tls[0].hosts[0]", "wildcard"),
])
def test_invalid_ingress_names_the_field(spec: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_object(ingress(spec=spec))
    assert err.value.field == field
    assert text in err.value.message


def test_creation_timestamp_from_string_or_yaml_datetime() -> None:
    a = parse_object(ingress(created="2024-05-01T10:00:00Z")).spec
    b = parse_object(ingress(created=dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC))).spec
    assert a.created == b.created == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC).timestamp()
    with pytest.raises(ValidationError) as err:
        parse_object(ingress(created="yesterday"))
    assert err.value.field == "metadata.creationTimestamp"


def test_ingress_class_requires_controller() -> None:
    with pytest.raises(ValidationError) as err:
        parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "x"},
                      "spec": {}})
    assert err.value.field == "spec.controller"


# -- classes ------------------------------------------------------------------------------------------
def _ic(name: str, controller: str, default: bool = False) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if default:
        md["annotations"] = {"ingressclass.kubernetes.io/is-default-class": "true"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": md,
            "spec": {"controller": controller}}


def test_class_selection_order() -> None:
    view = ClassView(frozenset({"mine", "cilia"}), "mine")
    by_name = parse_object(ingress(spec={"ingressClassName": "cilia", "rules": [rule("/")]},
                                   annotations={"kubernetes.io/ingress.class": "other"}))
    assert class_of(by_name, view)[0] == "cilia"
    legacy = parse_object(ingress(spec={"rules": [rule("/")]}, annotations={"kubernetes.io/ingress.class": "cilia"}))
    assert class_of(legacy, view)[0] == "cilia"
    legacy_other = parse_object(ingress(spec={"rules": [rule("/")]},
                                        annotations={"kubernetes.io/ingress.class": "nginx"}))
    assert class_of(legacy_other, view)[0] is None  # an explicit foreign class beats our default
    classless = parse_object(ingress(spec={"rules": [rule("/")]}))
    assert class_of(classless, view)[0] == "mine"
    assert class_of(classless, ClassView(frozenset({"cilia"}), None))[0] is None


def test_default_class_must_be_ours_and_unique() -> None:
    view = ingress_classes(snap(_ic("nginx", "k8s.io/ingress-nginx", default=True)))
    assert view.default == "nginx" and "nginx" not in view.owned and "cilia" in view.owned
    classless = parse_object(ingress(spec={"rules": [rule("/")]}))
    assert class_of(classless, view)[0] is None
    two = ingress_classes(snap(_ic("a", "cilia.io/ingress-controller", True),
                               _ic("b", "cilia.io/ingress-controller", True)))
    assert two.default is None and len(two.issues) == 2


# -- paths and hosts ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "ptype", "want"), [
    ("/foo", "Exact", PathMatch("exact", "/foo")),
    ("/foo/", "Exact", PathMatch("exact", "/foo/")),
    ("/foo", "Prefix", PathMatch("prefix", "/foo")),
    ("/foo/", "Prefix", PathMatch("prefix", "/foo")),  # trailing slash ignored: /foo/ matches /foo
    ("/", "Prefix", PathMatch("prefix", "/")),
    ("/foo", "ImplementationSpecific", PathMatch("raw_prefix", "/foo")),
    ("", "ImplementationSpecific", PathMatch("prefix", "/")),
])
def test_path_match(path: str, ptype: str, want: PathMatch) -> None:
    got, problem = path_match(IngressPath(path, ptype, None))  # type: ignore[arg-type]
    assert problem == "" and got == want


@pytest.mark.parametrize(("host", "authority", "matches"), [
    ("*.example.com", "bar.example.com", True),
    ("*.example.com", "Bar.Example.COM:8080", True),
    ("*.example.com", "baz.bar.example.com", False),  # one label only
    ("*.example.com", "example.com", False),
    ("*.example.com", "barexample.com", False),
    ("*.a-b.example.com", "x.a-b.example.com", True),
])
def test_wildcard_guard_covers_exactly_one_label(host: str, authority: str, matches: bool) -> None:
    guard = wildcard_guard(host)
    pattern = guard.value.removeprefix("(?i)")  # the same RE2 syntax, with Python's flag argument
    assert guard.name == ":authority" and guard.kind == "regex"
    assert bool(re.match(pattern, authority, re.IGNORECASE)) is matches


def test_precedence_across_ingresses_longest_then_exact() -> None:
    older = ingress("older", {"ingressClassName": "cilia", "rules": [
        {"host": "h.example.com", "http": {"paths": [
            {"path": "/a", "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"number": 80}}}},
            {"path": "/a/b", "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"number": 80}}}},
        ]}}]}, created="2024-01-01T00:00:00Z")
    newer = ingress("newer", {"ingressClassName": "cilia", "rules": [rule("/a", "Exact", "h.example.com")]},
                    created="2024-02-01T00:00:00Z")
    part = translate_ingresses(snap(service(), older, newer), TranslateOptions())
    (bundle,) = part.bundles
    (vh,) = bundle.routes[0].virtual_hosts
    assert [(r.match.path.kind, r.match.path.value) for r in vh.routes if r.match.path] == [
        ("prefix", "/a/b"), ("exact", "/a"), ("prefix", "/a")]


def test_duplicate_oldest_wins_regardless_of_name_order() -> None:
    young = ingress("aaa", {"ingressClassName": "cilia", "rules": [rule("/x", svc="young")]},
                    created="2024-06-01T00:00:00Z")
    old = ingress("zzz", {"ingressClassName": "cilia", "rules": [rule("/x", svc="old")]},
                  created="2023-01-01T00:00:00Z")
    part = translate_ingresses(snap(service("young"), service("old"), young, old), TranslateOptions())
    (vh,) = part.bundles[0].routes[0].virtual_hosts
    assert [r.backends[0].cluster for r in vh.routes] == ["default/old:80"]
    (issue,) = part.issues
    assert issue.object == "Ingress default/aaa" and issue.field == "spec.rules[0].http.paths[0]"
    assert "already served by Ingress default/zzz" in issue.message


# -- TLS ----------------------------------------------------------------------------------------------
SHA256 = hashes.SHA256()


def _self_signed(key: Any, name: str = "x.example.com", algorithm: Any = SHA256) -> bytes:
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, algorithm))
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def test_tls_pair_checks_match_what_envoy_accepts() -> None:
    rsa2048 = rsa.generate_private_key(65537, 2048)
    assert check_tls_pair(_self_signed(rsa2048), _key_pem(rsa2048))[0] == ""
    p384 = ec.generate_private_key(ec.SECP384R1())
    error, _, names = check_tls_pair(_self_signed(p384), _key_pem(p384))
    assert error == "" and names == ("x.example.com",)  # CN when there is no SAN
    p224 = ec.generate_private_key(ec.SECP224R1())
    assert "secp224r1" in check_tls_pair(_self_signed(p224), _key_pem(p224))[0]
    ed = ed25519.Ed25519PrivateKey.generate()
    assert "RSA and ECDSA" in check_tls_pair(_self_signed(ed, algorithm=None), _key_pem(ed))[0]
    assert "encrypted" in check_tls_pair(_self_signed(p384), _key_pem(p384, b"pw"))[0]
    other = ec.generate_private_key(ec.SECP256R1())
    assert "does not match" in check_tls_pair(_self_signed(p384), _key_pem(other))[0]


def test_tls_chain_leaf_first_and_expiry_warning() -> None:
    ca = TestCA()
    leaf = ca.issue("a.example.com")
    assert check_tls_pair(leaf.cert + ca.pem, leaf.key)[0] == ""
    assert "leaf" in check_tls_pair(ca.pem + leaf.cert, leaf.key)[0]
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    error, warnings, _ = check_tls_pair(leaf.cert, leaf.key, now=future.timestamp())
    assert error == "" and "expired" in warnings[0]


@pytest.mark.parametrize(("host", "names", "covered"), [
    ("a.example.com", ("a.example.com",), True),
    ("a.example.com", ("*.example.com",), True),
    ("a.b.example.com", ("*.example.com",), False),
    ("example.com", ("*.example.com",), False),
    ("*.example.com", ("*.example.com",), True),
])
def test_host_covered(host: str, names: tuple[str, ...], covered: bool) -> None:
    assert host_covered(host, names) is covered


def test_secret_rotation_changes_only_the_secret() -> None:
    ca = TestCA()
    spec = {"ingressClassName": "cilia", "tls": [{"hosts": ["a.example.com"], "secretName": "a-tls"}],
            "rules": [rule("/", host="a.example.com")]}
    objs = [service(), ingress(spec=spec)]
    before = translate_ingresses(snap(*objs, json.loads(tls_secret("a-tls", ca.issue("a.example.com")))),
                                 TranslateOptions())
    after = translate_ingresses(snap(*objs, json.loads(tls_secret("a-tls", ca.issue("a.example.com")))),
                                TranslateOptions())
    b, a = before.bundles[0], after.bundles[0]
    assert (b.listeners, b.routes, b.clusters) == (a.listeners, a.routes, a.clusters)
    assert b.secrets[0].name == a.secrets[0].name == "default/a-tls"
    assert b.secrets[0].certificate_chain != a.secrets[0].certificate_chain


def test_invalid_secret_leaves_host_plain_http_only() -> None:
    spec = {"ingressClassName": "cilia", "tls": [{"hosts": ["a.example.com"], "secretName": "a-tls"}],
            "rules": [rule("/", host="a.example.com")]}
    part = translate_ingresses(snap(service(), ingress(spec=spec, annotations={"ingress.cilia.io/force-https": "true"}),
                                    json.loads(tls_secret("a-tls", crt=b"junk", key=b"junk"))), TranslateOptions())
    (bundle,) = part.bundles
    assert [li.name for li in bundle.listeners] == ["ingress/cilia/http"]
    (vh,) = bundle.routes[0].virtual_hosts
    assert vh.routes[0].redirect is None and vh.routes[0].backends  # served, not redirected to a dead port
    (issue,) = part.issues
    assert issue.field == "spec.tls[0].secretName" and "not served over TLS" in issue.message


# -- status, modes, wiring ----------------------------------------------------------------------------
@pytest.mark.parametrize(("address", "status", "want"), [
    ("0.0.0.0", "", {"ip": "127.0.0.1"}),
    ("::", "", {"ip": "::1"}),
    ("127.0.0.5", "", {"ip": "127.0.0.5"}),
    ("0.0.0.0", "127.0.0.9", {"ip": "127.0.0.9"}),
    ("0.0.0.0", "ingress.example.com", {"hostname": "ingress.example.com"}),
])
def test_status_address(address: str, status: str, want: dict[str, str]) -> None:
    assert status_address(TranslateOptions(ingress_address=address, ingress_status_address=status)) == want


def test_status_for_owned_ingresses_only() -> None:
    ours = ingress("ours")
    theirs = ingress("theirs", {"ingressClassName": "nginx", "rules": [rule("/")]})
    part = translate_ingresses(snap(service(), ours, theirs), TranslateOptions(ingress_address="127.0.0.7"))
    assert [(s.name, dict(s.status)) for s in part.statuses] == [
        ("ours", {"loadBalancer": {"ingress": [{"ip": "127.0.0.7"}]}})]


def test_default_mode_shared_serves_node_proxies() -> None:
    objs = snap(service(), ingress())
    assert [b.scope.roles for b in translate_ingresses(objs, TranslateOptions()).bundles] == [frozenset({"ingress"})]
    shared = translate_ingresses(objs, TranslateOptions(ingress_default_mode="shared")).bundles
    assert [sorted(b.scope.roles) for b in shared] == [["ingress"], ["node"]]
    dedicated = ingress(annotations={"ingress.cilia.io/loadbalancer-mode": "dedicated"})
    assert len(translate_ingresses(snap(service(), dedicated),
                                   TranslateOptions(ingress_default_mode="shared")).bundles) == 1


def test_cli_flags_reach_translate_options() -> None:
    args = build_parser().parse_args(["translate", "-f", "x", "--proxy", "ingress~cilia", "--ingress-http-port",
                                      "8080", "--ingress-default-mode", "shared", "--ingress-status-address", "lb"])
    opts = _translate_options(args)
    assert (opts.ingress_http_port, opts.ingress_default_mode, opts.ingress_status_address) == (8080, "shared", "lb")


def test_endpoint_only_change_reuses_ingress_translation() -> None:
    base = [parse_object(r) for r in (service(), ingress())]
    first = translate(InputSnapshot.of([*base, parse_object(slice_("app", "127.1.0.1"))]))
    changed = InputSnapshot.of([*base, parse_object(slice_("app", "127.1.0.2"))])
    changed = InputSnapshot(changed.revision + 1, changed.objects, changed_kinds=frozenset({"EndpointSlice"}))
    second = translate(changed, previous=first)
    idx = [p.bundles and p.bundles[0].key for p in second.partials].index("ingress:cilia")
    assert second.partials[idx] is first.partials[idx]
    assert second.ir.endpoints["default/app:80"].localities[0].endpoints[0].address == "127.1.0.2"


def test_ingress_renders_and_endpoints_follow_the_cluster() -> None:
    world = render_world(translate(snap(service(), slice_("app", "127.1.0.1"), ingress())).ir)
    from cilia.identity import ProxyId
    from cilia.render.dump import proxy_config_json

    cfg = proxy_config_json(world.for_proxy(ProxyId.parse("ingress~cilia")))
    assert [c["name"] for c in cfg["clusters"]] == ["default/app:80"]
    assert [e["clusterName"] for e in cfg["endpoints"]] == ["default/app:80"]
    assert proxy_config_json(world.for_proxy(ProxyId.parse("node~n1")))["listeners"] == []


def test_spec_dataclass_is_frozen() -> None:
    spec: IngressSpec = parse_object(ingress()).spec
    with pytest.raises(AttributeError):
        spec.class_name = "x"  # type: ignore[misc]
