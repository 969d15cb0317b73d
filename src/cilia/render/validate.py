"""Envoy's field rules (protoc-gen-validate annotations in its .proto files), checked before sending.

Envoy checks these rules on every resource it receives and NACKs a resource that breaks one; Cilium
checks them too before it accepts a CiliumEnvoyConfig. Checking them here rejects such a config with
an error naming the object and the field, instead of a NACK later. Only rules whose meaning is
unambiguous are checked (required oneofs and messages, lengths, numeric and duration bounds, defined
enum values, item and pair counts); anything else is left to Envoy, so a config this accepts may still
be NACKed, but one it rejects would be too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from google.protobuf import symbol_database
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from validate import validate_pb2

MAX_DEPTH = 48
MAX_ERRORS = 5
WRAPPERS = {
    "google.protobuf.DoubleValue": "double", "google.protobuf.FloatValue": "float",
    "google.protobuf.Int64Value": "int64", "google.protobuf.UInt64Value": "uint64",
    "google.protobuf.Int32Value": "int32", "google.protobuf.UInt32Value": "uint32",
    "google.protobuf.BoolValue": "bool", "google.protobuf.StringValue": "string",
    "google.protobuf.BytesValue": "bytes",
}
NUMERIC = frozenset({"float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
                     "fixed32", "fixed64", "sfixed32", "sfixed64"})
# Anys under these fields are opaque data Envoy does not instantiate: not checked.
OPAQUE_ANY_FIELDS = frozenset({"typed_filter_metadata", "filter_metadata", "typed_metadata"})


@lru_cache(maxsize=8192)
def _rules(field: FieldDescriptor) -> validate_pb2.FieldRules | None:
    opts = field.GetOptions()
    if not opts.HasExtension(validate_pb2.rules):
        return None
    return opts.Extensions[validate_pb2.rules]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to look at in messages of one type, worked out once per type."""

    checked: bool  # False: neither this type nor anything it can hold has a rule
    oneofs: tuple[str, ...]  # oneofs that must be set
    # Fields whose rules fail when the field is left unset (at its default): (number, name, what is wrong).
    unset: tuple[tuple[int, str, str], ...]
    fields: frozenset[int]  # fields worth a look when set: with rules, or holding something with rules


_PLANS: dict[str, _Plan] = {}


def _plan(desc: Descriptor) -> _Plan:
    plan = _PLANS.get(desc.full_name)
    if plan is None:
        # A type that holds itself: while its plan is being made, assume it has rules everywhere.
        _PLANS[desc.full_name] = _Plan(True, (), (), frozenset(f.number for f in desc.fields))
        plan = _PLANS[desc.full_name] = _make_plan(desc)
    return plan


def _make_plan(desc: Descriptor) -> _Plan:
    opts = desc.GetOptions()
    if any(opts.HasExtension(ext) and opts.Extensions[ext] for ext in (validate_pb2.disabled, validate_pb2.ignored)):
        return _Plan(False, (), (), frozenset())
    oneofs = []
    for o in desc.oneofs:
        o_opts = o.GetOptions()
        if o_opts.HasExtension(validate_pb2.required) and o_opts.Extensions[validate_pb2.required]:
            oneofs.append(o.name)
    unset: list[tuple[int, str, str]] = []
    fields = set()
    for field in desc.fields:
        rules = _rules(field)
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if rules is not None:
            fields.add(field.number)
            problem = _unset_problem(field, rules)
            if problem:
                unset.append((field.number, field.name, problem))
        elif is_message and (field.message_type.full_name == "google.protobuf.Any"
                             or _plan(field.message_type).checked):
            fields.add(field.number)
    return _Plan(bool(oneofs or fields), tuple(oneofs), tuple(unset), frozenset(fields))


def _unset_problem(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> str:
    """What the rules say about the field left at its default ("" if that is fine); the same for every
    message of its type, so it is worked out once."""
    kind = _kind(rules)
    if field.is_repeated:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            if kind == "map" and rules.map.min_pairs and not rules.map.ignore_empty:
                return f"must have at least {rules.map.min_pairs} entr(ies), has 0"
        elif kind == "repeated" and rules.repeated.min_items and not rules.repeated.ignore_empty:
            return f"must have at least {rules.repeated.min_items} item(s), has 0"
        return ""
    if field.containing_oneof is not None:
        return ""  # only the member of a oneof that is set is checked
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if (rules.HasField("message") and rules.message.required) or \
                (kind in ("duration", "timestamp", "any") and getattr(rules, kind).required):
            return "value is required"
        return ""
    if field.has_presence:
        return ""  # an optional scalar is checked only when set
    errors: list[str] = []
    _scalar_check(rules, field)(field.default_value, None, errors)
    return errors[0].removeprefix(": ") if errors else ""


def validate_message(msg: Message) -> list[str]:
    """Broken rules, each as "field.path: what is wrong" (at most MAX_ERRORS)."""
    errors: list[str] = []
    _message(msg, None, errors, 0)
    return errors[:MAX_ERRORS]


# A field path, built as messages are walked and written out only for an error: None (the message
# itself) or (parent path, segment); a segment is a field name, an index, or a _MapKey.
Path = tuple[Any, Any] | None


class _MapKey:
    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key


def _fmt(path: Path) -> str:
    segments = []
    while path is not None:
        path, segment = path
        segments.append(segment)
    out = ""
    for segment in reversed(segments):
        if type(segment) is str:
            out = f"{out}.{segment}" if out else segment
        elif type(segment) is int:
            out = f"{out}[{segment}]"
        else:
            out = f"{out}[{segment.key!r}]"
    return out


ScalarCheck = Callable[[Any, Path, list[str]], None]


@dataclass(frozen=True, slots=True)
class FieldCheck:
    """How a set field of one descriptor is checked, worked out once per field."""

    name: str
    kind: int  # _MAP, _REPEATED, _MESSAGE, _SCALAR
    rules: validate_pb2.FieldRules | None
    opaque: bool  # an Any holder Envoy does not instantiate: contents not checked
    message_rules: Callable[[Message, Path, list[str]], None] | None  # wrapper / duration rules of the field
    skip: bool  # message rules say skip
    scalar: ScalarCheck | None
    # repeated: (min_items, max_items or None, ignore_empty) when the field has repeated rules
    counts: tuple[int, int | None, bool] | None
    item_message_rules: Callable[[Message, Path, list[str]], None] | None
    item_skip: bool
    item_scalar: ScalarCheck | None


_MAP, _REPEATED, _MESSAGE, _SCALAR = range(4)
_FIELDS: dict[FieldDescriptor, FieldCheck] = {}


def _field_info(field: FieldDescriptor) -> FieldCheck:
    info = _FIELDS.get(field)
    if info is not None:
        return info
    rules = _rules(field)
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    opaque = field.name in OPAQUE_ANY_FIELDS
    counts = None
    item_rules = None
    if field.is_repeated:
        kind = _MAP if is_message and field.message_type.GetOptions().map_entry else _REPEATED
        if kind == _REPEATED and rules is not None and _kind(rules) == "repeated":
            r = rules.repeated
            counts = (r.min_items, r.max_items if r.HasField("max_items") else None, r.ignore_empty)
            item_rules = r.items if r.HasField("items") else None
    else:
        kind = _MESSAGE if is_message else _SCALAR
    info = FieldCheck(
        name=field.name, kind=kind, rules=rules, opaque=opaque,
        message_rules=_message_rules_check(rules) if kind == _MESSAGE and rules is not None else None,
        skip=kind == _MESSAGE and rules is not None and rules.HasField("message") and rules.message.skip,
        scalar=_scalar_check(rules, field) if kind == _SCALAR and rules is not None else None,
        counts=counts,
        item_message_rules=_message_rules_check(item_rules) if is_message and item_rules is not None else None,
        item_skip=is_message and item_rules is not None and item_rules.HasField("message")
        and item_rules.message.skip,
        item_scalar=_scalar_check(item_rules, field) if not is_message and item_rules is not None else None,
    )
    _FIELDS[field] = info
    return info


@dataclass(frozen=True, slots=True)
class TypeChecks:
    """A message type's rules as a converter checks them while it builds the message from JSON, so a
    valid message needs no second walk: `validate_message` is then run only for one that breaks a rule,
    to word the errors. Checking a field as it is set, and these after the fields, finds a broken rule
    exactly when `validate_message` does (a scalar set to its default is absent from the message; its
    rule, checked on that default, is the rule `unset` holds for it)."""

    required_oneofs: tuple[int, ...]  # oneofs (by index) that must have a member set
    unset: tuple[int, ...]  # fields (by number) whose absence breaks a rule
    fields: dict[int, FieldCheck]  # how a set field is checked, for the fields worth a look


_TYPE_CHECKS: dict[str, TypeChecks | None] = {}


def type_checks(desc: Descriptor) -> TypeChecks | None:
    """The checks of messages of type `desc`; None when neither it nor anything it can hold has a rule."""
    try:
        return _TYPE_CHECKS[desc.full_name]
    except KeyError:
        pass
    plan = _PLANS.get(desc.full_name) or _plan(desc)
    checks = None
    if plan.checked:
        checks = TypeChecks(
            required_oneofs=tuple(desc.oneofs_by_name[name].index for name in plan.oneofs),
            unset=tuple(number for number, _, _ in plan.unset),
            fields={f.number: _FIELDS.get(f) or _field_info(f) for f in desc.fields if f.number in plan.fields})
    _TYPE_CHECKS[desc.full_name] = checks
    return checks


def _message(msg: Message, path: Path, errors: list[str], depth: int) -> None:
    if depth > MAX_DEPTH or len(errors) >= MAX_ERRORS:
        return
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Any":
        inner = _unpack(msg)
        if inner is not None:
            _message(inner, path, errors, depth + 1)
        return
    plan = _PLANS.get(desc.full_name) or _plan(desc)
    if not plan.checked:
        return
    for oneof in plan.oneofs:
        if msg.WhichOneof(oneof) is None:
            choices = ", ".join(f.name for f in desc.oneofs_by_name[oneof].fields)
            errors.append(f"{_fmt((path, oneof))}: one of {choices} is required")
    listed = msg.ListFields()
    wanted = plan.fields
    for field, value in listed:
        if field.number in wanted:
            _field(field, value, (path, field.name), errors, depth)
    if plan.unset:
        present = {field.number for field, _ in listed}
        for number, name, problem in plan.unset:
            if number not in present:
                errors.append(f"{_fmt((path, name))}: {problem}")


def _unpack(msg: Message) -> Message | None:
    type_url = getattr(msg, "type_url", "")
    try:
        cls = symbol_database.Default().GetSymbol(type_url.rsplit("/", 1)[-1])
    except KeyError:
        return None
    inner: Message = cls()
    try:
        msg.Unpack(inner)  # type: ignore[attr-defined]
    except Exception:
        return None
    return inner


def _field(field: FieldDescriptor, value: Any, path: Path, errors: list[str], depth: int) -> None:
    """A field that is set."""
    info = _FIELDS.get(field) or _field_info(field)
    kind = info.kind
    if kind == _MESSAGE:
        if info.message_rules is not None:
            info.message_rules(value, path, errors)
            if info.skip:
                return
        if not info.opaque:
            _message(value, path, errors, depth + 1)
    elif kind == _SCALAR:
        if info.scalar is not None:
            info.scalar(value, path, errors)
    elif kind == _REPEATED:
        _repeated(value, field, info, path, errors, depth)
    else:
        _map(value, field, info.rules, path, errors, depth)


def _kind(rules: validate_pb2.FieldRules) -> str:
    return rules.WhichOneof("type") or ""


def _message_rules_check(rules: validate_pb2.FieldRules) -> Callable[[Message, Path, list[str]], None]:
    """The check of a message value's own rules (wrapper values, durations)."""
    kind = _kind(rules)
    scalar = _scalar_check(rules, None)
    bounds = _duration_bounds(rules.duration) if kind == "duration" else (None, None)

    def check(value: Message, path: Path, errors: list[str]) -> None:
        full = value.DESCRIPTOR.full_name
        if full in WRAPPERS and kind == WRAPPERS[full]:
            scalar(value.value, path, errors)  # type: ignore[attr-defined]
        elif full == "google.protobuf.Duration" and kind == "duration":
            _duration(value, bounds, path, errors)

    return check


def _repeated(container: Any, field: FieldDescriptor, info: FieldCheck, path: Path, errors: list[str],
              depth: int) -> None:
    if info.counts is not None:
        errors.extend(f"{_fmt(path)}: {text}" for text in count_errors(info.counts, len(container)))
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        rules, skip, opaque = info.item_message_rules, info.item_skip, info.opaque
        if rules is None and opaque:
            return
        for i, v in enumerate(container):
            where = (path, i)
            if rules is not None:
                rules(v, where, errors)
                if skip:
                    continue
            if not opaque:
                _message(v, where, errors, depth + 1)
    elif info.item_scalar is not None:
        check = info.item_scalar
        for i, v in enumerate(container):
            check(v, (path, i), errors)


def count_errors(counts: tuple[int, int | None, bool], n: int) -> list[str]:
    """What a repeated field's item-count rule (min, max, ignore_empty) says of `n` items."""
    min_items, max_items, ignore_empty = counts
    if ignore_empty and not n:
        return []
    out = []
    if min_items and n < min_items:
        out.append(f"must have at least {min_items} item(s), has {n}")
    if max_items is not None and n > max_items:
        out.append(f"must have at most {max_items} item(s), has {n}")
    return out


def _map(values: Any, field: FieldDescriptor, rules: validate_pb2.FieldRules | None, path: Path,
         errors: list[str], depth: int) -> None:
    value_field = field.message_type.fields_by_name["value"]
    key_field = field.message_type.fields_by_name["key"]
    value_rules = key_rules = None
    if rules is not None and _kind(rules) == "map":
        r = rules.map
        if not (r.ignore_empty and not values):
            if r.min_pairs and len(values) < r.min_pairs:
                errors.append(f"{_fmt(path)}: must have at least {r.min_pairs} entr(ies), has {len(values)}")
            if r.HasField("max_pairs") and len(values) > r.max_pairs:
                errors.append(f"{_fmt(path)}: must have at most {r.max_pairs} entr(ies), has {len(values)}")
        value_rules = r.values if r.HasField("values") else None
        key_rules = r.keys if r.HasField("keys") else None
    for k in list(values):
        where = (path, _MapKey(k))
        if key_rules is not None:
            _scalar_check(key_rules, key_field)(k, where, errors)
        v = values[k]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            if value_rules is not None:
                _message_rules_check(value_rules)(v, where, errors)
            if field.name not in OPAQUE_ANY_FIELDS:
                _message(v, where, errors, depth + 1)
        elif value_rules is not None:
            _scalar_check(value_rules, value_field)(v, where, errors)


def _ignore(value: Any, path: Path, errors: list[str]) -> None:
    return None


def _scalar_check(rules: validate_pb2.FieldRules, field: FieldDescriptor | None) -> ScalarCheck:
    """The check of a scalar value against `rules`, with the rules read once."""
    kind = _kind(rules)
    if kind == "string":
        return _string_check(rules.string)
    if kind == "bytes":
        return _bytes_check(rules.bytes)
    if kind in NUMERIC:
        return _number_check(getattr(rules, kind))
    if kind == "enum" and field is not None and field.enum_type is not None:
        return _enum_check(rules.enum, field.enum_type)
    return _ignore


def _string_check(r: validate_pb2.StringRules) -> ScalarCheck:
    ignore_empty = r.ignore_empty
    const = r.const if r.HasField("const") else None
    length = r.len if r.HasField("len") else None
    min_len, min_bytes = r.min_len, r.min_bytes
    max_len = r.max_len if r.HasField("max_len") else None
    max_bytes = r.max_bytes if r.HasField("max_bytes") else None
    prefix = r.prefix if r.HasField("prefix") else None
    allowed = tuple(getattr(r, "in"))
    not_in = tuple(r.not_in)

    def check(value: Any, path: Path, errors: list[str]) -> None:
        if not isinstance(value, str) or (ignore_empty and not value):
            return
        if const is not None and value != const:
            errors.append(f"{_fmt(path)}: must be {const!r}")
        if length is not None and len(value) != length:
            errors.append(f"{_fmt(path)}: must be {length} character(s) long")
        if min_len and len(value) < min_len:
            errors.append(f"{_fmt(path)}: must be at least {min_len} character(s) long" if value
                          else f"{_fmt(path)}: is required")
        if max_len is not None and len(value) > max_len:
            errors.append(f"{_fmt(path)}: must be at most {max_len} character(s) long")
        if min_bytes and len(value.encode()) < min_bytes:
            errors.append(f"{_fmt(path)}: must be at least {min_bytes} byte(s) long" if value
                          else f"{_fmt(path)}: is required")
        if max_bytes is not None and len(value.encode()) > max_bytes:
            errors.append(f"{_fmt(path)}: must be at most {max_bytes} byte(s) long")
        if prefix is not None and not value.startswith(prefix):
            errors.append(f"{_fmt(path)}: must start with {prefix!r}")
        if allowed and value not in allowed:
            errors.append(f"{_fmt(path)}: must be one of {', '.join(allowed)}")
        if not_in and value in not_in:
            errors.append(f"{_fmt(path)}: must not be {value!r}")

    return check


def _bytes_check(r: validate_pb2.BytesRules) -> ScalarCheck:
    ignore_empty, min_len = r.ignore_empty, r.min_len
    max_len = r.max_len if r.HasField("max_len") else None

    def check(value: Any, path: Path, errors: list[str]) -> None:
        if not isinstance(value, bytes) or (ignore_empty and not value):
            return
        if min_len and len(value) < min_len:
            errors.append(f"{_fmt(path)}: must be at least {min_len} byte(s) long")
        if max_len is not None and len(value) > max_len:
            errors.append(f"{_fmt(path)}: must be at most {max_len} byte(s) long")

    return check


Bounds = tuple[tuple[float, bool] | None, tuple[float, bool] | None]  # (low, high), each (limit, inclusive)


def _bounds(value: float, lo: tuple[float, bool] | None, hi: tuple[float, bool] | None) -> bool:
    """Within (lo, hi); each bound is (limit, inclusive). A `hi` below `lo` means outside (hi, lo)."""
    def above(b: tuple[float, bool]) -> bool:
        return value >= b[0] if b[1] else value > b[0]

    def below(b: tuple[float, bool]) -> bool:
        return value <= b[0] if b[1] else value < b[0]

    if lo is not None and hi is not None and hi[0] < lo[0]:
        return above(lo) or below(hi)
    return (lo is None or above(lo)) and (hi is None or below(hi))


def _bound_text(lo: tuple[float, bool] | None, hi: tuple[float, bool] | None) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo[1] else '>'} {lo[0]}")
    if hi is not None:
        parts.append(f"{'<=' if hi[1] else '<'} {hi[0]}")
    return " and ".join(parts)


def _limits(r: Any) -> Bounds:
    lo = (r.gte, True) if r.HasField("gte") else (r.gt, False) if r.HasField("gt") else None
    hi = (r.lte, True) if r.HasField("lte") else (r.lt, False) if r.HasField("lt") else None
    return lo, hi


def _number_check(r: Any) -> ScalarCheck:
    ignore_empty = getattr(r, "ignore_empty", False)
    const = r.const if r.HasField("const") else None
    lo, hi = _limits(r)
    allowed = tuple(getattr(r, "in"))
    not_in = tuple(r.not_in)

    def check(value: Any, path: Path, errors: list[str]) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or (ignore_empty and not value):
            return
        if const is not None and value != const:
            errors.append(f"{_fmt(path)}: must be {const}")
        if not _bounds(value, lo, hi):
            errors.append(f"{_fmt(path)}: must be {_bound_text(lo, hi)}, got {value}")
        if allowed and value not in allowed:
            errors.append(f"{_fmt(path)}: must be one of {', '.join(str(a) for a in allowed)}")
        if not_in and value in not_in:
            errors.append(f"{_fmt(path)}: must not be {value}")

    return check


def _duration_bounds(r: validate_pb2.DurationRules) -> Bounds:
    """A duration rule's (low, high) bounds in nanoseconds, each (limit, inclusive) or None."""
    lo = (r.gte.ToNanoseconds(), True) if r.HasField("gte") else (r.gt.ToNanoseconds(), False) \
        if r.HasField("gt") else None
    hi = (r.lte.ToNanoseconds(), True) if r.HasField("lte") else (r.lt.ToNanoseconds(), False) \
        if r.HasField("lt") else None
    return lo, hi


def _duration(value: Message, bounds: Bounds, path: Path, errors: list[str]) -> None:
    ns = value.ToNanoseconds()  # type: ignore[attr-defined]
    lo, hi = bounds
    if not _bounds(ns, lo, hi):
        text = " and ".join(f"{op} {b[0] / 1e9:g}s" for op, b in
                            ((">=" if lo and lo[1] else ">", lo), ("<=" if hi and hi[1] else "<", hi)) if b)
        errors.append(f"{_fmt(path)}: must be {text}, got {ns / 1e9:g}s")


def _enum_check(r: validate_pb2.EnumRules, enum: EnumDescriptor) -> ScalarCheck:
    defined_only = r.defined_only
    allowed = tuple(getattr(r, "in"))
    not_in = tuple(r.not_in)
    numbers = enum.values_by_number

    def check(value: Any, path: Path, errors: list[str]) -> None:
        if defined_only and value not in numbers:
            errors.append(f"{_fmt(path)}: {value} is not a value of {enum.name}")
        if allowed and value not in allowed:
            errors.append(f"{_fmt(path)}: must be one of {', '.join(str(a) for a in allowed)}")
        if not_in and value in not_in:
            errors.append(f"{_fmt(path)}: must not be {value}")

    return check
