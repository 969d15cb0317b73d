"""The fast JSON converter checks field rules as it builds (validate.TypeChecks), so a valid resource
is not walked twice. It must find a broken rule exactly when validate_message does: random resources,
written as JSON with some fields spelled out at their defaults, are converted and compared."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cilia.render import raw, validate
from cilia.render.raw import RawParseError, RawValidationError, parse_raw
from cilia.render.resources import CLUSTER, ROUTE

ROOTS = [cluster_pb2.Cluster, route_pb2.RouteConfiguration, listener_pb2.Listener]
C = FieldDescriptor


INTS = [0, 1, -1, 5, 65536, 2**31 - 1]
STRINGS = ["", "a", "/p", "x" * 300]
DURATIONS = ["0s", "1s", "-1s", "0.5s", "3600s"]
WRAPPED = {C.CPPTYPE_INT32, C.CPPTYPE_INT64, C.CPPTYPE_UINT32, C.CPPTYPE_UINT64, C.CPPTYPE_BOOL,
           C.CPPTYPE_STRING}
SKIPPED_TYPES = {"google.protobuf.Any", "google.protobuf.Struct", "google.protobuf.Value",
                 "google.protobuf.ListValue", "google.protobuf.FieldMask", "google.protobuf.Timestamp"}


def _scalar(f: FieldDescriptor, rng: random.Random) -> Any:
    """A JSON value of a kind the fast converter takes (or None for one it does not)."""
    cpp = f.cpp_type
    if cpp == C.CPPTYPE_ENUM:
        return rng.choice([v.name for v in f.enum_type.values])
    if cpp == C.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if cpp == C.CPPTYPE_STRING:
        return rng.choice(STRINGS) if f.type == C.TYPE_STRING else None
    if cpp in (C.CPPTYPE_UINT32, C.CPPTYPE_UINT64):
        return rng.choice([i for i in INTS if i >= 0])
    if cpp in (C.CPPTYPE_INT32, C.CPPTYPE_INT64):
        return rng.choice(INTS)
    return None  # floating point: the slow path's


def _value(f: FieldDescriptor, rng: random.Random, depth: int) -> Any:
    if f.cpp_type != C.CPPTYPE_MESSAGE:
        return _scalar(f, rng)
    full = f.message_type.full_name
    if full == "google.protobuf.Duration":
        return rng.choice(DURATIONS)
    if full.startswith("google.protobuf.") and full.endswith("Value") and full not in SKIPPED_TYPES:
        inner = f.message_type.fields_by_name["value"]
        return _scalar(inner, rng) if inner.cpp_type in WRAPPED else None
    if full in SKIPPED_TYPES or depth >= 5:
        return None
    return _message(f.message_type, rng, depth + 1)


def _message(desc: Any, rng: random.Random, depth: int) -> dict[str, Any]:
    """A random message of `desc` as JSON, in the shapes the fast converter takes; scalars are at times
    their defaults, which the message then does not hold."""
    out: dict[str, Any] = {}
    oneofs: set[str] = set()
    for f in desc.fields:
        if rng.random() > (0.4 if depth < 2 else 0.2):
            continue
        if f.cpp_type == C.CPPTYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            continue
        if f.containing_oneof is not None:
            if f.containing_oneof.name in oneofs:
                continue
            oneofs.add(f.containing_oneof.name)
        if f.is_repeated:
            items = [_value(f, rng, depth) for _ in range(rng.choice([0, 1, 1, 2]))]
            if all(item is not None for item in items):
                out[f.name] = items
        else:
            value = _value(f, rng, depth)
            if value is not None:
                out[f.name] = value
    return out


def test_fused_checks_find_what_validate_message_finds() -> None:
    raw.load_all_envoy_types()
    rng = random.Random(7)
    fast = broken = 0
    for _ in range(1000):
        cls = rng.choice(ROOTS)
        js = _message(cls.DESCRIPTOR, rng, 0)
        msg = cls()
        flags: list[str] = []
        try:
            raw._fast_sub(js, msg, 0, flags)
        except Exception:
            continue  # the slow path: validate_message itself decides
        fast += 1
        errors = validate.validate_message(msg)
        assert bool(flags) == bool(errors), (js, flags, errors)
        broken += bool(errors)
    # Valid and invalid converted messages are both compared, many of each.
    assert fast >= 700 and broken >= 100 and fast - broken >= 40, (fast, broken)


def _cluster(**extra: Any) -> dict[str, Any]:
    return {"@type": CLUSTER, "name": "c", "type": "EDS", "connect_timeout": "1s", **extra}


@pytest.mark.parametrize(("body", "error"), [
    (_cluster(), None),
    (_cluster(name=""), "name: is required"),
    (_cluster(connect_timeout="-1s"), "connect_timeout: must be > 0s, got -1s"),
    ({"@type": ROUTE, "name": "r", "virtual_hosts": [{"name": "v", "domains": []}]},
     "virtual_hosts[0].domains: must have at least 1 item(s), has 0"),
    ({"@type": ROUTE, "name": "r", "virtual_hosts": [{"name": "v", "domains": ["a"], "routes": [
        {"match": {"prefix": "/"}}]}]}, "virtual_hosts[0].routes[0].action: one of route, redirect"),
])
def test_parse_raw_words_the_first_broken_rule(body: dict[str, Any], error: str | None) -> None:
    if error is None:
        assert isinstance(parse_raw(body["@type"], body), Message)
        return
    with pytest.raises(RawValidationError) as exc:
        parse_raw(body["@type"], body)
    assert error in str(exc.value)
    assert isinstance(exc.value, RawParseError)
