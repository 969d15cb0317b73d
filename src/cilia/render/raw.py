"""Parse user-written Envoy resources (JSON with `@type`) into messages.

CiliumEnvoyConfig resources are arbitrary typed `Any`s; every nested `@type` must be known to the
protobuf pool. Importing every Envoy message module of xds-protos takes about half a second, so the
modules of a type's own package are imported when a type is first met (`_lookup`), and everything only
when a name is still unknown after that (`load_all_envoy_types`): a name resolves exactly as it would
with everything loaded.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cilia.render.validate import validate_message
from cilia.untrusted import format_path

_loaded = False
_lock = threading.RLock()
_ROOT_PACKAGES = ("envoy", "xds", "udpa", "validate", "contrib")
_packages_loaded: set[str] = set()


def load_all_envoy_types() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        for root in _ROOT_PACKAGES:
            try:
                pkg = importlib.import_module(root)
            except ImportError:
                continue
            for info in pkgutil.walk_packages(pkg.__path__, root + "."):
                if info.name.endswith("_pb2"):
                    try:
                        importlib.import_module(info.name)
                    except Exception:
                        continue
        _loaded = True


def _load_package_of(full_name: str) -> None:
    """Import the message modules of the package that defines `full_name` (a message of one of
    `_ROOT_PACKAGES`; nothing else is imported on behalf of a name from user input)."""
    parts = full_name.split(".")
    if len(parts) < 2 or parts[0] not in _ROOT_PACKAGES:
        return
    with _lock:
        for cut in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:cut])
            if name in _packages_loaded:
                return
            if not all(p.isidentifier() for p in parts[:cut]):
                continue
            try:
                pkg = importlib.import_module(name)
            except Exception:
                continue
            path = getattr(pkg, "__path__", None)
            if path is None:
                continue
            for info in pkgutil.iter_modules(path, name + "."):
                if info.name.endswith("_pb2") and not info.ispkg:
                    try:
                        importlib.import_module(info.name)
                    except Exception:
                        continue
            _packages_loaded.add(name)
            return


def _lookup(full_name: str) -> Any:
    """The message class named `full_name` (KeyError if none), loading its package's modules first,
    and every Envoy module when that is not enough."""
    db = symbol_database.Default()
    try:
        return db.GetSymbol(full_name)
    except KeyError:
        pass
    if not _loaded:
        _load_package_of(full_name)
        try:
            return db.GetSymbol(full_name)
        except KeyError:
            load_all_envoy_types()
    return db.GetSymbol(full_name)


def _load_nested_types(body: Mapping[str, Any]) -> None:
    """Make every nested `@type` that can be known, known (as if every module were loaded)."""
    if _loaded:
        return
    stack: list[Any] = list(body.values())
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            t = node.get("@type")
            if isinstance(t, str):
                try:
                    _lookup(t.rsplit("/", 1)[-1])
                except KeyError:
                    pass
                if _loaded:
                    return
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class RawParseError(ValueError):
    verb = "does not parse"


class RawValidationError(RawParseError):
    """Parses, but breaks a field rule Envoy enforces (render/validate.py)."""

    verb = "is not valid"


def _check_nested_types(body: Mapping[str, Any]) -> None:
    """Every nested `@type` is a string: protobuf's JSON parser fails on others with AttributeError."""
    stack: list[tuple[Any, Any]] = [(v, (k, None)) for k, v in body.items()]  # (node, (key, parent path))
    while stack:
        node, path = stack.pop()
        if isinstance(node, Mapping):
            if "@type" in node and not isinstance(node["@type"], str):
                raise RawParseError(f"{format_path(path, keep=12)}.@type: must be a type URL string, "
                                    f"got {type(node['@type']).__name__}")
            stack.extend((v, (k, path)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (i, path)) for i, v in enumerate(node))


class _Slow(Exception):
    """The fast converter met something it does not handle exactly as json_format does."""


_GENERIC_WKT = frozenset({"google.protobuf.Duration", "google.protobuf.Timestamp"})
_OTHER_WKT = frozenset({"google.protobuf.Any", "google.protobuf.FieldMask", "google.protobuf.Struct",
                        "google.protobuf.Value", "google.protobuf.ListValue"})
_WRAPPERS = frozenset({"google.protobuf.DoubleValue", "google.protobuf.FloatValue",
                       "google.protobuf.Int64Value", "google.protobuf.UInt64Value",
                       "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
                       "google.protobuf.BoolValue", "google.protobuf.StringValue",
                       "google.protobuf.BytesValue"})
_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}
_INT_TYPES = frozenset({FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
                        FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64})


def _fields(desc: Any) -> dict[str, FieldDescriptor]:
    got = _FIELDS.get(desc.full_name)
    if got is None:
        got = {f.name: f for f in desc.fields}
        for f in desc.fields:
            got.setdefault(f.json_name, f)
        _FIELDS[desc.full_name] = got
    return got


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    """The value json_format would store, for the plain cases only (else _Slow)."""
    cpp = field.cpp_type
    if cpp in _INT_TYPES:
        if type(value) is int:
            return value
    elif cpp == FieldDescriptor.CPPTYPE_BOOL:
        if type(value) is bool:
            return value
    elif cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_STRING and type(value) is str and value.isascii():
            return value
    elif cpp == FieldDescriptor.CPPTYPE_ENUM:
        if type(value) is str:
            ev = field.enum_type.values_by_name.get(value)
            if ev is not None:
                return ev.number
    raise _Slow


def _fast_message(js: Any, msg: Message, depth: int) -> None:
    """json_format.ParseDict's result for the common shapes, much faster (no paths, no error texts):
    anything unusual raises _Slow and the caller parses with json_format instead."""
    if depth > 64 or type(js) is not dict:
        raise _Slow
    desc = msg.DESCRIPTOR
    fields = _fields(desc)
    seen: set[Any] = set()
    for name, value in js.items():
        field = fields.get(name)
        if field is None or value is None or field.number in seen:
            raise _Slow
        seen.add(field.number)
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof in seen:
                raise _Slow
            seen.add(oneof)
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            sub_desc = field.message_type
            if sub_desc.GetOptions().map_entry:
                raise _Slow
            if field.is_repeated:
                if type(value) is not list:
                    raise _Slow
                container = getattr(msg, field.name)
                for item in value:
                    _fast_sub(item, container.add(), depth + 1)
            else:
                sub = getattr(msg, field.name)
                sub.SetInParent()
                _fast_sub(value, sub, depth + 1)
        elif field.is_repeated:
            if type(value) is not list:
                raise _Slow
            getattr(msg, field.name).extend([_scalar(field, v) for v in value])
        else:
            setattr(msg, field.name, _scalar(field, value))


def _fast_sub(value: Any, msg: Message, depth: int) -> None:
    full_name = msg.DESCRIPTOR.full_name
    if full_name.startswith("google.protobuf."):
        if full_name in _GENERIC_WKT:
            if type(value) is not str:
                raise _Slow
            msg.FromJsonString(value)  # type: ignore[attr-defined]
            return
        if full_name in _WRAPPERS:
            if value is None:
                raise _Slow
            field = msg.DESCRIPTOR.fields_by_name["value"]
            msg.value = _scalar(field, value)
            return
        if full_name in _OTHER_WKT:
            raise _Slow
    _fast_message(value, msg, depth)


def parse_raw(type_url: str, body: Mapping[str, Any]) -> Message:
    """The message for `body`, or RawParseError with protobuf's reason (RawValidationError: a field
    rule Envoy enforces is broken)."""
    full_name = type_url.rsplit("/", 1)[-1]
    try:
        cls = _lookup(full_name)
    except KeyError:
        _check_nested_types(body)  # that error first, as before
        raise RawParseError(f"unknown type {type_url!r}") from None
    data = {k: v for k, v in body.items() if k != "@type"}
    msg = cls()
    try:
        _fast_sub(data, msg, 0)
    except Exception:
        msg = _slow_parse(cls, body, data)
    errors = validate_message(msg)
    if errors:
        raise RawValidationError("; ".join(errors))
    return msg


def _slow_parse(cls: Any, body: Mapping[str, Any], data: dict[str, Any]) -> Message:
    _check_nested_types(body)
    _load_nested_types(body)
    msg = cls()
    try:
        json_format.ParseDict(data, msg, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        text = str(exc).replace("\n", " ")
        # protobuf appends every field name of the message; the first part says what is wrong.
        raise RawParseError(text.split(".  Available Fields")[0]) from None
    except Exception as exc:  # the parser meets user input here: whatever it raises, the resource is bad
        raise RawParseError(f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]) from None
    return msg
