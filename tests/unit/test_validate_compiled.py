"""The field-rule checker, compiled per field, must report exactly what the plain walk did
(tests/unit/validate_reference.py), error texts and order included, on randomly filled messages."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cilia.render import validate
from unit import validate_reference

ROOTS = [cluster_pb2.Cluster, listener_pb2.Listener, route_pb2.RouteConfiguration,
         http_connection_manager_pb2.HttpConnectionManager]
PACKABLE = [http_connection_manager_pb2.HttpConnectionManager, router_pb2.Router, cluster_pb2.Cluster]
C = FieldDescriptor
SCALARS: dict[int, list[Any]] = {
    C.CPPTYPE_STRING: ["", "a", "x" * 300, "é", "/p"],
    C.CPPTYPE_INT32: [0, 1, -1, 2**31 - 1, 65536],
    C.CPPTYPE_INT64: [0, 1, -5, 2**40],
    C.CPPTYPE_UINT32: [0, 1, 100, 65536, 2**32 - 1],
    C.CPPTYPE_UINT64: [0, 1, 2**40],
    C.CPPTYPE_DOUBLE: [0.0, -1.0, 1.5, 100.0, 101.0],
    C.CPPTYPE_FLOAT: [0.0, -1.0, 0.5, 100.0],
    C.CPPTYPE_BOOL: [True, False],
}


def _scalar(rng: random.Random, f: FieldDescriptor) -> Any:
    if f.cpp_type == C.CPPTYPE_ENUM:
        return rng.choice([v.number for v in f.enum_type.values] + [99])
    if f.type == C.TYPE_BYTES:
        return rng.choice([b"", b"x", b"y" * 70])
    return rng.choice(SCALARS[f.cpp_type])


def _fill(msg: Message, rng: random.Random, depth: int) -> None:
    for f in msg.DESCRIPTOR.fields:
        if rng.random() > (0.35 if depth < 3 else 0.15):
            continue
        if f.containing_oneof is not None and msg.WhichOneof(f.containing_oneof.name) is not None:
            continue
        try:
            _set(msg, f, rng, depth)
        except (ValueError, TypeError):
            pass


def _set(msg: Message, f: FieldDescriptor, rng: random.Random, depth: int) -> None:
    is_message = f.cpp_type == C.CPPTYPE_MESSAGE
    if is_message and f.message_type.GetOptions().map_entry:
        container = getattr(msg, f.name)
        key_field, value_field = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        for _ in range(rng.randrange(3)):
            key = _scalar(rng, key_field)
            if value_field.cpp_type == C.CPPTYPE_MESSAGE:
                if depth < 5:
                    _sub(container[key], rng, depth + 1)
            else:
                container[key] = _scalar(rng, value_field)
    elif f.is_repeated:
        container = getattr(msg, f.name)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            if is_message:
                if depth < 5:
                    _sub(container.add(), rng, depth + 1)
            else:
                container.append(_scalar(rng, f))
    elif is_message:
        if depth < 5:
            sub = getattr(msg, f.name)
            sub.SetInParent()
            _sub(sub, rng, depth + 1)
    else:
        setattr(msg, f.name, _scalar(rng, f))


def _sub(msg: Message, rng: random.Random, depth: int) -> None:
    if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        if rng.random() < 0.7:
            inner = rng.choice(PACKABLE)()
            _fill(inner, rng, depth)
            msg.Pack(inner)  # type: ignore[attr-defined]
        return
    _fill(msg, rng, depth)


@pytest.mark.parametrize("seed", range(30))
def test_compiled_checker_reports_what_the_plain_walk_did(seed: int) -> None:
    rng = random.Random(seed)
    with_errors = 0
    for _ in range(25):
        msg = rng.choice(ROOTS)()
        _fill(msg, rng, 0)
        want = validate_reference.validate_message(msg)
        assert validate.validate_message(msg) == want
        with_errors += bool(want)
    assert with_errors >= 5  # the messages do break rules: the comparison means something
