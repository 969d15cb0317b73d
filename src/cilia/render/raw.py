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

from cilia.ir.model import SharedJson
from cilia.render.validate import MAX_DEPTH, FieldCheck, TypeChecks, count_errors, type_checks, validate_message
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
_INT_TYPES = frozenset({FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
                        FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64})

# How the fast converter treats a field (worked out once per message type, by JSON key).
_K_MESSAGE, _K_MESSAGES, _K_SCALAR, _K_SCALARS, _K_SLOW = range(5)
# ... a scalar value: (kind, enum values by name); a message value: which of these it is.
_V_INT, _V_BOOL, _V_STRING, _V_ENUM, _V_SLOW = range(5)
_S_PLAIN, _S_GENERIC_WKT, _S_WRAPPER, _S_SLOW = range(4)
# (field number, oneof key or None, kind, attribute name, scalar conversion or message kind)
_Entry = tuple[int, int | None, int, str, Any]
_PLANS: dict[str, dict[str, _Entry]] = {}


def _conversion(field: FieldDescriptor) -> tuple[int, Any]:
    cpp = field.cpp_type
    if cpp in _INT_TYPES:
        return _V_INT, None
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return _V_BOOL, None
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        return (_V_STRING, None) if field.type == FieldDescriptor.TYPE_STRING else (_V_SLOW, None)
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return _V_ENUM, {name: v.number for name, v in field.enum_type.values_by_name.items()}
    return _V_SLOW, None


def _message_kind(desc: Any) -> Any:
    full_name = desc.full_name
    if full_name in _GENERIC_WKT:
        return _S_GENERIC_WKT
    if full_name in _WRAPPERS:
        return (_S_WRAPPER, _conversion(desc.fields_by_name["value"]))
    if full_name in _OTHER_WKT:
        return _S_SLOW
    return _S_PLAIN


def _plan(desc: Any) -> dict[str, _Entry]:
    plan = _PLANS.get(desc.full_name)
    if plan is None:
        entries: dict[int, _Entry] = {}
        for f in desc.fields:
            oneof = -1 - f.containing_oneof.index if f.containing_oneof is not None else None
            if f.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                if f.message_type.GetOptions().map_entry:
                    entries[f.number] = (f.number, oneof, _K_SLOW, f.name, None)
                else:
                    entries[f.number] = (f.number, oneof, _K_MESSAGES if f.is_repeated else _K_MESSAGE, f.name,
                                         _message_kind(f.message_type))
            else:
                entries[f.number] = (f.number, oneof, _K_SCALARS if f.is_repeated else _K_SCALAR, f.name,
                                     _conversion(f))
        plan = {f.name: entries[f.number] for f in desc.fields}
        for f in desc.fields:
            plan.setdefault(f.json_name, entries[f.number])
        _PLANS[desc.full_name] = plan
    return plan


def _convert(conversion: tuple[int, Any], value: Any) -> Any:
    """The value json_format would store, for the plain cases only (else _Slow)."""
    kind = conversion[0]
    if kind == _V_STRING:
        if type(value) is str and value.isascii():
            return value
    elif kind == _V_INT:
        if type(value) is int:
            return value
    elif kind == _V_ENUM:
        if type(value) is str:
            number = conversion[1].get(value)
            if number is not None:
                return number
    elif kind == _V_BOOL:
        if type(value) is bool:
            return value
    raise _Slow


def _fast_message(js: Any, msg: Message, depth: int, errs: list[str] | None) -> None:
    """json_format.ParseDict's result for the common shapes, much faster (no paths, no error texts):
    anything unusual raises _Slow and the caller parses with json_format instead. With `errs`, the
    field rules are checked on the way (validate.TypeChecks): each broken one adds an entry, unworded."""
    if depth > 64 or (type(js) is not dict and type(js) is not SharedJson):
        raise _Slow
    checked = errs is not None and depth <= MAX_DEPTH  # validate looks no deeper
    key = (type(msg), checked, tuple(js))
    shape = _SHAPES.get(key)
    if shape is None:
        shape = _shape(msg, checked, key[2])
    if shape is _NO_SHAPE:
        raise _Slow
    sink: list[str] = errs if errs is not None else []
    for name, kind, attr, how, rule in shape[0]:
        value = js[name]
        if value is None:
            raise _Slow
        if kind == _K_SCALAR:
            converted = _convert(how, value)
            setattr(msg, attr, converted)
            if rule is not None and rule.scalar is not None:
                rule.scalar(converted, None, sink)
        elif kind == _K_MESSAGE:
            sub = getattr(msg, attr)
            sub.SetInParent()
            inner = None if rule is None or rule.skip or rule.opaque else errs
            if type(value) is SharedJson:
                _fast_shared(value, sub, how, depth + 1, inner)
            elif how == _S_PLAIN:
                _fast_message(value, sub, depth + 1, inner)
            else:
                _fast_value(value, sub, how, depth + 1, inner)
            if rule is not None and rule.message_rules is not None:
                rule.message_rules(sub, None, sink)
        elif kind == _K_MESSAGES:
            if type(value) is not list:
                raise _Slow
            add = getattr(msg, attr).add
            if rule is None:
                if how == _S_PLAIN:
                    for item in value:
                        _fast_message(item, add(), depth + 1, None)
                else:
                    for item in value:
                        _fast_value(item, add(), how, depth + 1, None)
            else:
                _count_check(rule, len(value), sink)
                item_rules = rule.item_message_rules
                inner = None if rule.opaque or (item_rules is not None and rule.item_skip) else errs
                for item in value:
                    sub = add()
                    if how == _S_PLAIN:
                        _fast_message(item, sub, depth + 1, inner)
                    else:
                        _fast_value(item, sub, how, depth + 1, inner)
                    if item_rules is not None:
                        item_rules(sub, None, sink)
        else:  # _K_SCALARS (a shape holds no other kind)
            if type(value) is not list:
                raise _Slow
            converted_items = [_convert(how, v) for v in value]
            getattr(msg, attr).extend(converted_items)
            if rule is not None:
                _count_check(rule, len(value), sink)
                if rule.item_scalar is not None:
                    for v in converted_items:
                        rule.item_scalar(v, None, sink)
    if shape[1]:
        sink.extend(shape[1])


# What the converter does with a JSON object of given keys, for a message class (and whether its rules are
# checked): per key (key, kind, attribute, conversion, rule), and the rule breaks its set of fields makes
# by itself (a required oneof or a field that must be set, missing). Worked out once per shape.
_Shape = tuple[tuple[tuple[str, int, str, Any, Any], ...], tuple[str, ...]]
_SHAPES: dict[tuple[type, bool, tuple[Any, ...]], _Shape] = {}
_NO_SHAPE: _Shape = ((), ())  # keys the converter does not take: json_format parses it
MAX_SHAPES = 65536  # past that the shapes are worked out afresh (user input chooses the keys)


def _shape(msg: Message, checked: bool, keys: tuple[Any, ...]) -> _Shape:
    by_class = _BY_CLASS.get(type(msg)) or _class_plan(msg)
    plan = by_class[0]
    checks = by_class[1] if checked else None
    rules = checks.fields if checks is not None else _NO_RULES
    fields: list[tuple[str, int, str, Any, Any]] = []
    seen: set[int] = set()
    shape: _Shape = _NO_SHAPE
    for name in keys:
        entry = plan.get(name) if type(name) is str else None
        if entry is None:
            break
        number, oneof, kind, attr, how = entry
        if number in seen or kind == _K_SLOW:  # the same field twice (both spellings), or a map
            break
        seen.add(number)
        if oneof is not None:
            if oneof in seen:  # two fields of one oneof
                break
            seen.add(oneof)
        fields.append((name, kind, attr, how, rules.get(number)))
    else:
        missing: list[str] = []
        if checks is not None:
            missing += ["oneof" for index in checks.required_oneofs if -1 - index not in seen]
            missing += ["unset" for number in checks.unset if number not in seen]
        shape = (tuple(fields), tuple(missing))
    if len(_SHAPES) >= MAX_SHAPES:
        _SHAPES.clear()
    _SHAPES[(type(msg), checked, keys)] = shape
    return shape


_NO_RULES: dict[int, Any] = {}
# A message class -> its conversion plan and rule checks (found by class: no descriptor look-ups per message).
_BY_CLASS: dict[type, tuple[dict[str, _Entry], TypeChecks | None]] = {}


def _class_plan(msg: Message) -> tuple[dict[str, _Entry], TypeChecks | None]:
    desc = msg.DESCRIPTOR
    entry = _BY_CLASS[type(msg)] = (_PLANS.get(desc.full_name) or _plan(desc), type_checks(desc))
    return entry


def _count_check(rule: FieldCheck, n: int, errs: list[str]) -> None:
    """validate's item-count rule of a repeated field, on the number of items given."""
    if rule.counts is not None:
        errs.extend(count_errors(rule.counts, n))


def _fast_value(value: Any, msg: Message, how: Any, depth: int, errs: list[str] | None) -> None:
    if how == _S_PLAIN:
        _fast_message(value, msg, depth, errs)
    elif how == _S_GENERIC_WKT:
        if type(value) is not str:
            raise _Slow
        key = (type(msg), value)
        parsed = _WKT_STRINGS.get(key)  # "1s", "0.25s": a handful of distinct values, written many times
        if parsed is None:
            parsed = type(msg)()
            parsed.FromJsonString(value)  # type: ignore[attr-defined]
            if len(_WKT_STRINGS) >= MAX_SHAPES:
                _WKT_STRINGS.clear()
            _WKT_STRINGS[key] = parsed
        msg.CopyFrom(parsed)
    elif how == _S_SLOW or value is None:
        raise _Slow
    else:  # a wrapper
        msg.value = _convert(how[1], value)  # type: ignore[attr-defined]


# (id of a SharedJson, message class, whether checked) -> that value, its message and the rule breaks found
_SHARED: dict[tuple[int, type, bool], tuple[SharedJson, Message, tuple[str, ...]]] = {}
MAX_SHARED = 1024  # entries; past that the memo starts afresh
_SHARED_LOCK = threading.Lock()


def _fast_shared(value: SharedJson, msg: Message, how: Any, depth: int, errs: list[str] | None) -> None:
    """`_fast_value` for a value shared by many bodies: converted once (per message type, and whether
    checked), then copied. The entry holds the value, so its id is not reused while the entry exists."""
    checked = errs is not None and depth <= MAX_DEPTH
    key = (id(value), type(msg), checked)
    hit = _SHARED.get(key)
    if hit is None or hit[0] is not value:
        built = type(msg)()
        found: list[str] | None = [] if errs is not None else None
        _fast_value(value, built, how, depth, found)
        hit = (value, built, tuple(found or ()))
        with _SHARED_LOCK:
            if len(_SHARED) >= MAX_SHARED:
                _SHARED.clear()
            _SHARED[key] = hit
    msg.CopyFrom(hit[1])
    if errs is not None:
        errs.extend(hit[2])


# (class, JSON string) -> the well-known-type message it parses to (Duration, Timestamp, FieldMask)
_WKT_STRINGS: dict[tuple[type, str], Message] = {}


def _fast_sub(value: Any, msg: Message, depth: int, errs: list[str] | None) -> None:
    _fast_value(value, msg, _message_kind(msg.DESCRIPTOR), depth, errs)


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
    broken: list[str] = []
    try:
        _fast_sub(data, msg, 0, broken)
    except Exception:
        msg = _slow_parse(cls, body, data)
        broken.append("not checked")
    errors = validate_message(msg) if broken else []
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
