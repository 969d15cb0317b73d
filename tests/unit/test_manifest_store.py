"""Manifest parsing and the store: clear errors that name file, document, object and field; last good kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from cilia.k8s.manifest import parse_file, parse_text
from cilia.k8s.store import Store

SVC = """apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports: [{name: http, port: 80}]
"""


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 'eighty'}]\n",
         ["Service a", "spec.ports[0].port", "must be an integer"]),
        ("apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\nspec: {}\n", ["metadata.name", "is required"]),
        ("apiVersion: v1\nkind: Servce\nmetadata: {name: a}\n", ["kind", "unknown kind 'Servce'"]),
        ("apiVersion: v2\nkind: Service\nmetadata: {name: a}\nspec: {}\n", ["apiVersion", "v1"]),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\n"
         "endpoints: [{addresses: [not-an-ip]}]\n",
         ["metadata.labels.kubernetes.io/service-name"]),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: "
         "{kubernetes.io/service-name: x}}\naddressType: IPv4\nendpoints: [{addresses: [not-an-ip]}]\n",
         ["endpoints[0].addresses[0]", "not an IP address"]),
        ("apiVersion: cilium.io/v2\nkind: CiliumEnvoyConfig\nmetadata: {name: c}\nspec:\n  resources: [{name: x}]\n",
         ["CiliumEnvoyConfig c", "spec.resources[0].@type", "is required"]),
        ("apiVersion: cilium.io/v2\nkind: CiliumEnvoyConfig\nmetadata: {name: c}\nspec:\n  nodeSelector:\n"
         "    matchExpressions: [{key: a, operator: Maybe}]\n",
         ["spec.nodeSelector.matchExpressions[0].operator"]),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {tls.crt: '***'}\n",
         ["data.tls.crt", "base64"]),
        ("- just\n- a list\n", ["document must be a mapping"]),
    ],
)
def test_validation_errors_name_file_document_object_and_field(text: str, want: list[str]) -> None:
    result = parse_text("ok: 1\n---\n" * 0 + SVC + "---\n" + text, "dir/bad.yaml")
    assert result.ok
    assert [o.meta.name for o in result.objects] == ["echo"], "the valid document is still read"
    assert len(result.issues) == 1
    msg = str(result.issues[0])
    assert "dir/bad.yaml#1" in msg
    for w in want:
        assert w in msg, msg


def test_malformed_yaml_is_a_file_error() -> None:
    result = parse_text("apiVersion: v1\nkind: [unclosed\n", "m.yaml")
    assert not result.ok
    assert "m.yaml" in str(result.issues[0]) and "cannot parse" in str(result.issues[0])


def test_ignored_builtin_kinds_are_not_errors() -> None:
    result = parse_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n", "d.yaml")
    assert result.ok and not result.issues and not result.objects


def test_json_and_list_documents(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text('{"apiVersion": "v1", "kind": "List", "items": [' +
                 '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},' +
                 '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}]}')
    result = parse_file(f)
    assert [o.meta.name for o in result.objects] == ["a", "b"]


def _svc(port: int, name: str = "echo") -> str:
    return SVC.replace("port: 80", f"port: {port}").replace("name: echo", f"name: {name}")


def test_store_keeps_last_good_on_parse_failure_and_on_invalid_object() -> None:
    store = Store()
    store.replace_source("a.yaml", parse_text(_svc(80) + "---\n" + _svc(81, "other"), "a.yaml"))
    snap = store.snapshot()
    assert snap.get("Service", "default", "echo").spec.ports[0].port == 80
    # Whole file unparsable: everything from it keeps serving, the error is reported.
    assert not store.replace_source("a.yaml", parse_text("kind: [", "a.yaml"))
    snap = store.snapshot()
    assert snap.get("Service", "default", "echo") is not None and snap.get("Service", "default", "other")
    assert any("cannot parse" in str(i) for i in snap.issues)
    # One object invalid: its last good version stays, the other object updates.
    bad = _svc(80).replace("port: 80", "port: 0") + "---\n" + _svc(82, "other")
    store.replace_source("a.yaml", parse_text(bad, "a.yaml"))
    snap = store.snapshot()
    assert snap.get("Service", "default", "echo").spec.ports[0].port == 80
    assert snap.get("Service", "default", "other").spec.ports[0].port == 82
    assert any("spec.ports[0].port" in str(i) and "Service default/echo" in str(i) for i in snap.issues)
    # Fixed: issues clear.
    store.replace_source("a.yaml", parse_text(_svc(83), "a.yaml"))
    snap = store.snapshot()
    assert snap.get("Service", "default", "echo").spec.ports[0].port == 83
    assert snap.get("Service", "default", "other") is None
    assert not snap.issues


def test_duplicates_never_displace_what_is_serving() -> None:
    store = Store()
    store.replace_source("b.yaml", parse_text(_svc(80), "b.yaml"))
    store.replace_source("a.yaml", parse_text(_svc(99), "a.yaml"))
    snap = store.snapshot()
    assert snap.get("Service", "default", "echo").spec.ports[0].port == 80
    assert any("duplicate" in str(i) and "a.yaml" in str(i) and "b.yaml" in str(i) for i in snap.issues)
    dup_same_file = parse_text(_svc(70, "x") + "---\n" + _svc(71, "x"), "c.yaml")
    store.replace_source("c.yaml", dup_same_file)
    snap = store.snapshot()
    assert snap.get("Service", "default", "x").spec.ports[0].port == 70
    assert any("duplicate in the same file" in str(i) for i in snap.issues)


def test_unchanged_content_is_not_a_change() -> None:
    store = Store()
    seen: list[frozenset[str]] = []
    store.subscribe(seen.append)
    store.replace_source("a.yaml", parse_text(_svc(80), "a.yaml"))
    assert len(seen) == 1
    again = _svc(80).replace("metadata: {name: echo, namespace: default}",
                             "metadata: {name: echo, namespace: default, resourceVersion: '7'}")
    assert not store.replace_source("a.yaml", parse_text(again, "a.yaml"))
    assert len(seen) == 1
