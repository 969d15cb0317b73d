"""Limits on the xDS request fields cilia interprets (cilia.xds.limits), on real protobuf requests."""

from __future__ import annotations

import time

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from cilia.errors import XdsProtocolError
from cilia.xds import limits
from cilia.xds.limits import (
    MAX_ERROR_DETAIL_BYTES,
    MAX_NODE_ID_BYTES,
    MAX_NODE_METADATA_DEPTH,
    MAX_RESOURCE_NAME_BYTES,
    MAX_RESOURCE_NAMES_PER_REQUEST,
    RequestLimitError,
    check_delta_request,
    check_discovery_request,
    error_detail_text,
)

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def sotw(**kw: object) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(**{"type_url": CDS, **kw})  # type: ignore[arg-type]
    if not req.HasField("node"):
        req.node.id = "sidecar~default/web-0"
    return req


def nested_struct(depth: int) -> struct_pb2.Struct:
    """A Struct `depth` levels deep, alternating Structs and lists, built without recursion."""
    root = struct_pb2.Struct()
    current: struct_pb2.Struct | struct_pb2.ListValue = root
    for level in range(depth - 1):
        if isinstance(current, struct_pb2.Struct):
            current = current.fields["k"].list_value if level % 2 else current.fields["k"].struct_value
        else:
            current = current.values.add().struct_value
    if isinstance(current, struct_pb2.Struct):  # a value at the bottom makes protobuf keep the whole chain
        current.fields["leaf"].string_value = "x"
    else:
        current.values.add().string_value = "x"
    return root


def test_requests_within_every_limit_pass() -> None:
    node_id = "sidecar~" + "n" * 63 + "/" + "p" * 253
    md = struct_pb2.Struct()
    md.update({"cilia_agent": {"programs": ["connect4", "sockops"], "maps": {"redirect": 3}}})
    req = sotw(node=base_pb2.Node(id=node_id, metadata=md), resource_names=[f"default/svc-{i}" for i in range(1000)],
               version_info="a" * 64, response_nonce="17")
    check_discovery_request(req)
    delta = discovery_pb2.DeltaDiscoveryRequest(
        node=base_pb2.Node(id="node~n1"), type_url=CDS, resource_names_subscribe=["a", "b"],
        resource_names_unsubscribe=["c"], initial_resource_versions={"a": "v1", "é" * 300: "v2"})
    check_delta_request(delta)
    check_discovery_request(sotw(node=base_pb2.Node(id="x" * MAX_NODE_ID_BYTES)))


@pytest.mark.parametrize(("req", "field"), [
    (sotw(node=base_pb2.Node(id="x" * (MAX_NODE_ID_BYTES + 1))), "node.id"),
    # 200 characters but 600 UTF-8 bytes: the limit is on bytes
    (sotw(node=base_pb2.Node(id="sidecar~default/" + "€" * 200)), "node.id"),
    (sotw(type_url="type.googleapis.com/" + "x" * 300), "type_url"),
    (sotw(resource_names=["ok", "n" * (MAX_RESOURCE_NAME_BYTES + 1)]), "resource_names[1]"),
    (sotw(version_info="v" * 300), "version_info"),
    (sotw(response_nonce="n" * 300), "response_nonce"),
    (discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, resource_names_unsubscribe=["u" * 2000]),
     "resource_names_unsubscribe[0]"),
    (discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, initial_resource_versions={"a": "v" * 300}),
     "initial_resource_versions['a']"),
    (discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, initial_resource_versions={"k" * 1025: "v"}),
     "initial_resource_versions[0]"),
])
def test_a_field_over_its_limit_is_named(req: object, field: str) -> None:
    check = check_delta_request if isinstance(req, discovery_pb2.DeltaDiscoveryRequest) else check_discovery_request
    with pytest.raises(RequestLimitError) as err:
        check(req)
    assert err.value.field == field
    assert "over the limit" in str(err.value)
    assert isinstance(err.value, XdsProtocolError)


def test_too_many_names_is_refused_without_reading_them_all() -> None:
    names = ["n"] * (MAX_RESOURCE_NAMES_PER_REQUEST + 1)
    with pytest.raises(RequestLimitError, match=r"more than 100000 names"):
        check_delta_request(discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, resource_names_subscribe=names))
    check_delta_request(discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, resource_names_subscribe=names[1:]))


def test_node_metadata_depth_and_size() -> None:
    ok = nested_struct(MAX_NODE_METADATA_DEPTH)
    check_discovery_request(sotw(node=base_pb2.Node(id="node~n1", metadata=ok)))
    deep = nested_struct(MAX_NODE_METADATA_DEPTH + 1)
    with pytest.raises(RequestLimitError, match="nests deeper than 32 levels") as err:
        check_discovery_request(sotw(node=base_pb2.Node(id="node~n1", metadata=deep)))
    assert err.value.field == "node.metadata.k" + ".k[0]" * 15 + ".k"
    big = struct_pb2.Struct()
    big.update({"blob": "x" * (limits.MAX_NODE_METADATA_BYTES + 1)})
    with pytest.raises(RequestLimitError, match=r"node\.metadata: is 655\d\d bytes, over the limit of 65536"):
        check_discovery_request(sotw(node=base_pb2.Node(id="node~n1", metadata=big)))


def test_the_struct_walk_does_not_recurse() -> None:
    """90 levels is near protobuf's own parse limit; the walk itself must not care how deep it goes."""
    deep = nested_struct(90)
    t0 = time.perf_counter()
    with pytest.raises(RequestLimitError):
        limits.check_struct(deep, "m", max_depth=50)
    limits.check_struct(deep, "m", max_depth=90)
    assert time.perf_counter() - t0 < 1.0


def test_error_detail_text_is_cut() -> None:
    assert error_detail_text(sotw()) == ""
    assert error_detail_text(sotw(error_detail=status_pb2.Status(code=3))) == "error code 3"
    short = sotw(error_detail=status_pb2.Status(code=3, message="bad cluster"))
    assert error_detail_text(short) == "bad cluster"
    long = sotw(error_detail=status_pb2.Status(code=3, message="é" * MAX_ERROR_DETAIL_BYTES))
    text = error_detail_text(long)
    assert text.endswith(f"(cut at {MAX_ERROR_DETAIL_BYTES} bytes)")
    assert len(text.split("...")[0].encode()) == MAX_ERROR_DETAIL_BYTES


def test_small_requests_pass_on_their_size_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ACK (type_url and nonce, no node) is let through on its encoded size, without the field walk; a
    node, or a size past SMALL_REQUEST_BYTES, still takes the walk."""
    assert limits.SMALL_REQUEST_BYTES <= min(MAX_NODE_ID_BYTES, limits.MAX_TYPE_URL_BYTES, limits.MAX_VERSION_BYTES,
                                             MAX_RESOURCE_NAME_BYTES)
    walked: list[str] = []
    real = limits.check_string

    def spy(value: str, field: str, limit: int) -> None:
        walked.append(field)
        real(value, field, limit)

    monkeypatch.setattr(limits, "check_string", spy)
    check_delta_request(discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, response_nonce="17"))
    check_discovery_request(discovery_pb2.DiscoveryRequest(type_url=CDS, version_info="v" * 64, response_nonce="17"))
    assert walked == []
    # Over the size: walked, and a field over its limit is still named.
    with pytest.raises(RequestLimitError, match="response_nonce"):
        check_delta_request(discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, response_nonce="n" * 300))
    assert "type_url" in walked
    # A node is always walked, however small the request: metadata depth is not bounded by size.
    walked.clear()
    deep = struct_pb2.Struct()
    level = deep.fields["k"].list_value
    for _ in range(MAX_NODE_METADATA_DEPTH):
        level = level.values.add().list_value
    level.values.add().string_value = "x"
    small = discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(metadata=deep), type_url=CDS)
    assert small.ByteSize() <= limits.SMALL_REQUEST_BYTES
    with pytest.raises(RequestLimitError, match="nests deeper"):
        check_delta_request(small)
    assert walked
