"""Ingress host/path routing through a real Envoy: the Ingress spec's path table, wildcard hosts,
default backend, named ports, and bad input (missing Service/port, duplicate path) reported on the
object while everything else keeps being served."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cilia.cli import main
from cilia.translate.context import TranslateOptions
from support.backends import EchoBackend, echo_backends
from support.controlplane import ControlPlaneThread, ManifestDir
from support.envoy import Envoy
from support.http import get
from support.manifests import docs, endpoint_slice, service
from support.net import free_port

pytestmark = pytest.mark.e2e

BACKENDS = ("root", "foo", "aaa", "bbb", "exact", "prefix", "impl", "wild", "nohost", "default", "dup")


def path(p: str | None, ptype: str, svc: str, port: int | str = 80) -> dict[str, Any]:
    ref = {"number": port} if isinstance(port, int) else {"name": port}
    out: dict[str, Any] = {"pathType": ptype, "backend": {"service": {"name": svc, "port": ref}}}
    if p is not None:
        out["path"] = p
    return out


def ingress(name: str, spec: dict[str, Any], created: str = "2024-01-01T00:00:00Z") -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                       "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                       "spec": {"ingressClassName": "cilia", **spec}})


def manifests(backends: dict[str, EchoBackend]) -> str:
    parts = []
    for i, (name, b) in enumerate(backends.items()):
        parts.append(service(name, 80, vip=f"127.96.2.{i + 1}"))
        parts.append(endpoint_slice(name, [(b.host, b.port)]))
    parts.append(ingress("table", {"rules": [
        {"host": "t1.example.com", "http": {"paths": [path("/foo/", "Prefix", "foo", "http")]}},
        {"host": "t2.example.com", "http": {"paths": [
            path("/", "Prefix", "root"), path("/aaa", "Prefix", "aaa"), path("/aaa/bbb", "Prefix", "bbb"),
            path("/exact", "Exact", "exact"), path("/exact", "Prefix", "prefix"),
            path("/imp", "ImplementationSpecific", "impl"), path("/broken", "Prefix", "missing"),
            path("/badport", "Prefix", "root", 81)]}},
        {"host": "*.wild.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
        {"http": {"paths": [path("/nohost", "Prefix", "nohost")]}},
    ]}))
    parts.append(ingress("fallback", {"defaultBackend": {"service": {"name": "default", "port": {"number": 80}}}},
                         created="2024-02-01T00:00:00Z"))
    parts.append(ingress("dup", {"rules": [
        {"host": "t2.example.com", "http": {"paths": [path("/aaa/", "Prefix", "dup"), path("/dup", "Exact", "dup")]}},
    ]}, created="2024-03-01T00:00:00Z"))
    return docs(*parts)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, ControlPlaneThread]]:
    md = ManifestDir()
    specs = [(name, f"127.0.0.{i + 2}") for i, name in enumerate(BACKENDS)]
    with echo_backends(*specs) as started:
        md.write("all.yaml", manifests({b.name: b for b in started}))
        port = free_port()
        opts = TranslateOptions(ingress_address="127.0.0.1", ingress_http_port=port, ingress_https_port=free_port())
        cp = ControlPlaneThread([str(md.path)], translate=opts).start()
        envoy = Envoy("ingress~cilia", cp.xds_port)
        try:
            envoy.start()
            url = f"http://127.0.0.1:{port}"
            envoy.wait_for(lambda: get(url + "/", {"Host": "t2.example.com"}).status == 200, what="ingress serving")
            yield url, cp
        finally:
            envoy.stop()
            cp.stop()
            md.cleanup()


def who(url: str, host: str, p: str) -> str | int:
    r = get(url + p, {"Host": host})
    return str(r.json()["backend"]) if r.status == 200 else r.status


# The Ingress spec's examples (kubernetes.io/docs/concepts/services-networking/ingress/#examples).
SPEC_TABLE = [
    ("t1.example.com", "/foo", "foo"),  # Prefix /foo/ matches /foo (trailing slash ignored)
    ("t1.example.com", "/foo/", "foo"),
    ("t1.example.com", "/foo/x", "foo"),
    ("t1.example.com", "/foobar", "default"),  # element-wise: not a string prefix -> default backend
    ("t2.example.com", "/aaa/bbb", "bbb"),
    ("t2.example.com", "/aaa/bbb/", "bbb"),  # matches the trailing slash
    ("t2.example.com", "/aaa/bbb/ccc", "bbb"),  # matches a subpath
    ("t2.example.com", "/aaa/bbbxyz", "aaa"),  # does not match the string prefix /aaa/bbb
    ("t2.example.com", "/aaa/ccc", "aaa"),  # /, /aaa: the longest matching prefix wins
    ("t2.example.com", "/ccc", "root"),
    ("t2.example.com", "/exact", "exact"),  # Exact beats Prefix at equal length
    ("t2.example.com", "/exact/", "prefix"),  # Exact /exact does not match /exact/
    ("t2.example.com", "/EXACT", "root"),  # case-sensitive
    ("t2.example.com", "/imp", "impl"),
    ("t2.example.com", "/impish", "impl"),  # ImplementationSpecific here = plain string prefix
    ("t2.example.com:9999", "/aaa", "aaa"),  # port in Host ignored
    ("T2.Example.COM", "/aaa", "aaa"),  # host is case-insensitive
    ("a.wild.example.com", "/", "wild"),  # wildcard covers one label
    ("a.b.wild.example.com", "/", "default"),  # ... not two: falls through to host-less rules / default
    ("a.b.wild.example.com", "/nohost", "nohost"),
    ("wild.example.com", "/", "default"),
    ("unknown.example.org", "/nohost", "nohost"),  # no host = every host
    ("unknown.example.org", "/nohostx", "default"),
    ("t1.example.com", "/nohost", "default"),  # a named host does not take host-less rules
]


def test_ingress_path_table_hosts_and_default(served: tuple[str, ControlPlaneThread]) -> None:
    url, _ = served
    got = [(host, p, who(url, host, p)) for host, p, _ in SPEC_TABLE]
    assert got == SPEC_TABLE


def test_ingress_bad_input_reported_rest_served(served: tuple[str, ControlPlaneThread]) -> None:
    url, cp = served
    assert who(url, "t2.example.com", "/broken") == 503  # missing Service: 503, not another backend
    assert who(url, "t2.example.com", "/badport") == 503
    assert who(url, "t2.example.com", "/aaa/x") == "aaa"  # duplicate: the older Ingress keeps it
    assert who(url, "t2.example.com", "/dup") == "dup"  # the rest of the newer Ingress is served
    issues = {(i["object"], i["field"]): i["message"] for i in cp.admin_json("/debug/issues")}
    assert "Service default/missing not found" in issues[
        ("Ingress default/table", "spec.rules[1].http.paths[6].backend.service.name")]
    assert "has no port 81" in issues[
        ("Ingress default/table", "spec.rules[1].http.paths[7].backend.service.port.number")]
    assert "already served by Ingress default/table" in issues[("Ingress default/dup", "spec.rules[0].http.paths[0]")]
    statuses = {s["metadata"]["name"]: s for s in cp.admin_json("/debug/status") if s["kind"] == "Ingress"}
    assert set(statuses) == {"table", "fallback", "dup"}
    lb = statuses["table"]["status"]["loadBalancer"]["ingress"][0]
    assert lb["ip"] == "127.0.0.1" and lb["ports"][0]["port"] == int(url.rsplit(":", 1)[1])


def test_cilia_status_shows_ingress_status(served: tuple[str, ControlPlaneThread],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url, cp = served
    assert main(["status", "--admin", f"127.0.0.1:{cp.admin_port}"]) == 0
    out = capsys.readouterr().out
    port = url.rsplit(":", 1)[1]
    line = next(x for x in out.splitlines() if x.strip().startswith("Ingress default/table:"))
    assert '"ip":"127.0.0.1"' in line and f'"port":{port}' in line
    assert "Service default/missing not found" in out  # issues listed too
