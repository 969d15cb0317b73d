"""The generated cilia.redirect.v1 messages match proto/cilia/redirect/v1/redirect.proto, and the
checked-in generated code is what `make proto` (grpcio-tools' protoc) produces today."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from google.protobuf import any_pb2, descriptor_pb2, json_format

from cilia.api import redirect_v1 as api

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "cilia" / "redirect" / "v1" / "redirect.proto"
_SCALARS = {"string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32}  # fmt: skip


def _parse_proto(
    text: str,
) -> tuple[str, dict[str, dict[str, tuple[int, bool, str]]], dict[str, dict[str, int]]]:
    """A small parser for the subset of proto3 redirect.proto uses (no nesting, no options)."""
    text = re.sub(r"//[^\n]*", "", text)
    package = re.search(r"package\s+([\w.]+);", text)
    assert package
    messages: dict[str, dict[str, tuple[int, bool, str]]] = {}
    for name, body in re.findall(r"message\s+(\w+)\s*\{([^}]*)\}", text):
        fields = {}
        for rep, ftype, fname, num in re.findall(r"(repeated\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;", body):
            fields[fname] = (int(num), bool(rep), ftype)
        messages[name] = fields
    enums = {
        name: {v: int(n) for v, n in re.findall(r"(\w+)\s*=\s*(\d+)\s*;", body)}
        for name, body in re.findall(r"enum\s+(\w+)\s*\{([^}]*)\}", text)
    }
    return package.group(1), messages, enums


def test_descriptor_matches_proto_file() -> None:
    package, messages, enums = _parse_proto(PROTO.read_text())
    fdp = api.file_descriptor_proto()
    assert fdp.package == package == "cilia.redirect.v1"
    assert fdp.name == "cilia/redirect/v1/redirect.proto"
    assert {e.name: {v.name: v.number for v in e.value} for e in fdp.enum_type} == enums
    built = {}
    for m in fdp.message_type:
        fields = {}
        for f in m.field:
            repeated = f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            if f.type in (f.TYPE_MESSAGE, f.TYPE_ENUM):
                tname = f.type_name.rsplit(".", 1)[1]
            else:
                tname = next(k for k, v in _SCALARS.items() if v == f.type)
            fields[f.name] = (f.number, repeated, tname)
        built[m.name] = fields
    assert built == messages


def test_policy_round_trips_through_any_and_json() -> None:
    policy = api.NodeRedirectPolicy(
        node_name="node-1",
        proxy_address="127.0.0.1",
        proxy_port=15001,
        pods=[
            api.MeshPod(
                namespace="ns", name="p", cgroup_path="kubepods/p", pod_ips=["127.1.0.5"], mode=api.SIDECAR
            )
        ],
        services=[api.MeshService(namespace="ns", name="s", vip="127.96.0.10", port=80, protocol=api.TCP)],
    )
    packed = any_pb2.Any()
    packed.Pack(policy)
    assert packed.type_url == api.TYPE_URL == "type.googleapis.com/cilia.redirect.v1.NodeRedirectPolicy"
    back = api.NodeRedirectPolicy()
    assert packed.Unpack(back) and back == policy
    as_json = json_format.MessageToDict(policy)
    assert as_json["pods"][0]["mode"] == "SIDECAR" and as_json["services"][0]["vip"] == "127.96.0.10"
    assert json_format.ParseDict(as_json, api.NodeRedirectPolicy()) == policy
    assert api.NodeRedirectPolicy.FromString(policy.SerializeToString()) == policy


def test_checked_in_code_equals_fresh_generation(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert Path("redirect/v1/redirect_pb2.py") in fresh and Path("redirect/v1/redirect_pb2.pyi") in fresh
    api_dir = ROOT / "src" / "cilia" / "api"
    for rel in fresh:
        assert (api_dir / rel).read_text() == (tmp_path / rel).read_text(), f"{rel} is stale: run `make proto`"
    # The generated module is the one cilia imports, under cilia.api (xds-protos owns other top-level names).
    assert api.NodeRedirectPolicy.__module__ == "cilia.api.redirect.v1.redirect_pb2"
    assert api.DESCRIPTOR.name == "cilia/redirect/v1/redirect.proto"
