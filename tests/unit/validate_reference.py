"""The field-rule checker as it was before it was compiled per field: the oracle the faster form must match."""

from __future__ import annotations

from collections.abc import Iterable
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
    _scalar(field.default_value, rules, field, "", errors)
    return errors[0].removeprefix(": ") if errors else ""


def validate_message(msg: Message) -> list[str]:
    """Broken rules, each as "field.path: what is wrong" (at most MAX_ERRORS)."""
    errors: list[str] = []
    _message(msg, "", errors, 0)
    return errors[:MAX_ERRORS]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _message(msg: Message, path: str, errors: list[str], depth: int) -> None:
    if depth > MAX_DEPTH or len(errors) >= MAX_ERRORS:
        return
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Any":
        inner = _unpack(msg)
        if inner is not None:
            _message(inner, path, errors, depth + 1)
        return
    plan = _plan(desc)
    if not plan.checked:
        return
    for oneof in plan.oneofs:
        if msg.WhichOneof(oneof) is None:
            choices = ", ".join(f.name for f in desc.oneofs_by_name[oneof].fields)
            errors.append(f"{_join(path, oneof)}: one of {choices} is required")
    listed = msg.ListFields()
    wanted = plan.fields
    for field, value in listed:
        if field.number in wanted:
            _field(field, value, _join(path, field.name), errors, depth)
    if plan.unset:
        present = {field.number for field, _ in listed}
        for number, name, problem in plan.unset:
            if number not in present:
                errors.append(f"{_join(path, name)}: {problem}")


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


def _field(field: FieldDescriptor, value: Any, path: str, errors: list[str], depth: int) -> None:
    """A field that is set."""
    rules = _rules(field)
    if field.is_repeated:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            _map(value, field, rules, path, errors, depth)
        else:
            _repeated(list(value), field, rules, path, errors, depth)
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if rules is not None:
            _message_rules(value, rules, path, errors)
            if rules.HasField("message") and rules.message.skip:
                return
        if field.name not in OPAQUE_ANY_FIELDS:
            _message(value, path, errors, depth + 1)
        return
    if rules is not None:
        _scalar(value, rules, field, path, errors)


def _kind(rules: validate_pb2.FieldRules) -> str:
    return rules.WhichOneof("type") or ""


def _message_rules(value: Message, rules: validate_pb2.FieldRules, path: str, errors: list[str]) -> None:
    full = value.DESCRIPTOR.full_name
    kind = _kind(rules)
    if full in WRAPPERS and kind == WRAPPERS[full]:
        _scalar(value.value, rules, None, path, errors)  # type: ignore[attr-defined]
    elif full == "google.protobuf.Duration" and kind == "duration":
        _duration(value, rules.duration, path, errors)


def _repeated(values: list[Any], field: FieldDescriptor, rules: validate_pb2.FieldRules | None, path: str,
              errors: list[str], depth: int) -> None:
    item_rules = None
    if rules is not None and _kind(rules) == "repeated":
        r = rules.repeated
        if not (r.ignore_empty and not values):
            if r.min_items and len(values) < r.min_items:
                errors.append(f"{path}: must have at least {r.min_items} item(s), has {len(values)}")
            if r.HasField("max_items") and len(values) > r.max_items:
                errors.append(f"{path}: must have at most {r.max_items} item(s), has {len(values)}")
        item_rules = r.items if r.HasField("items") else None
    for i, v in enumerate(values):
        where = f"{path}[{i}]"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if item_rules is not None:
                _message_rules(v, item_rules, where, errors)
                if item_rules.HasField("message") and item_rules.message.skip:
                    continue
            if field.name not in OPAQUE_ANY_FIELDS:
                _message(v, where, errors, depth + 1)
        elif item_rules is not None:
            _scalar(v, item_rules, field, where, errors)


def _map(values: Any, field: FieldDescriptor, rules: validate_pb2.FieldRules | None, path: str,
         errors: list[str], depth: int) -> None:
    value_field = field.message_type.fields_by_name["value"]
    key_field = field.message_type.fields_by_name["key"]
    value_rules = key_rules = None
    if rules is not None and _kind(rules) == "map":
        r = rules.map
        if not (r.ignore_empty and not values):
            if r.min_pairs and len(values) < r.min_pairs:
                errors.append(f"{path}: must have at least {r.min_pairs} entr(ies), has {len(values)}")
            if r.HasField("max_pairs") and len(values) > r.max_pairs:
                errors.append(f"{path}: must have at most {r.max_pairs} entr(ies), has {len(values)}")
        value_rules = r.values if r.HasField("values") else None
        key_rules = r.keys if r.HasField("keys") else None
    for k in list(values):
        where = f"{path}[{k!r}]"
        if key_rules is not None:
            _scalar(k, key_rules, key_field, where, errors)
        v = values[k]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            if value_rules is not None:
                _message_rules(v, value_rules, where, errors)
            if field.name not in OPAQUE_ANY_FIELDS:
                _message(v, where, errors, depth + 1)
        elif value_rules is not None:
            _scalar(v, value_rules, value_field, where, errors)


def _scalar(value: Any, rules: validate_pb2.FieldRules, field: FieldDescriptor | None, path: str,
            errors: list[str]) -> None:
    kind = _kind(rules)
    if kind == "string" and isinstance(value, str):
        _string(value, rules.string, path, errors)
    elif kind == "bytes" and isinstance(value, bytes):
        r = rules.bytes
        if r.ignore_empty and not value:
            return
        if r.min_len and len(value) < r.min_len:
            errors.append(f"{path}: must be at least {r.min_len} byte(s) long")
        if r.HasField("max_len") and len(value) > r.max_len:
            errors.append(f"{path}: must be at most {r.max_len} byte(s) long")
    elif kind in NUMERIC and isinstance(value, int | float) and not isinstance(value, bool):
        _number(value, getattr(rules, kind), path, errors)
    elif kind == "enum" and field is not None and field.enum_type is not None:
        _enum(value, rules.enum, field.enum_type, path, errors)


def _string(value: str, r: validate_pb2.StringRules, path: str, errors: list[str]) -> None:
    if r.ignore_empty and not value:
        return
    if r.HasField("const") and value != r.const:
        errors.append(f"{path}: must be {r.const!r}")
    if r.HasField("len") and len(value) != r.len:
        errors.append(f"{path}: must be {r.len} character(s) long")
    if r.min_len and len(value) < r.min_len:
        errors.append(f"{path}: must be at least {r.min_len} character(s) long" if value else f"{path}: is required")
    if r.HasField("max_len") and len(value) > r.max_len:
        errors.append(f"{path}: must be at most {r.max_len} character(s) long")
    if r.min_bytes and len(value.encode()) < r.min_bytes:
        errors.append(f"{path}: must be at least {r.min_bytes} byte(s) long" if value else f"{path}: is required")
    if r.HasField("max_bytes") and len(value.encode()) > r.max_bytes:
        errors.append(f"{path}: must be at most {r.max_bytes} byte(s) long")
    if r.HasField("prefix") and not value.startswith(r.prefix):
        errors.append(f"{path}: must start with {r.prefix!r}")
    if getattr(r, "in") and value not in getattr(r, "in"):
        errors.append(f"{path}: must be one of {', '.join(getattr(r, 'in'))}")
    if r.not_in and value in r.not_in:
        errors.append(f"{path}: must not be {value!r}")


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


def _limits(r: Any) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    lo = (r.gte, True) if r.HasField("gte") else (r.gt, False) if r.HasField("gt") else None
    hi = (r.lte, True) if r.HasField("lte") else (r.lt, False) if r.HasField("lt") else None
    return lo, hi


def _number(value: float, r: Any, path: str, errors: list[str]) -> None:
    if getattr(r, "ignore_empty", False) and not value:
        return
    if r.HasField("const") and value != r.const:
        errors.append(f"{path}: must be {r.const}")
    lo, hi = _limits(r)
    if not _bounds(value, lo, hi):
        errors.append(f"{path}: must be {_bound_text(lo, hi)}, got {value}")
    allowed: Iterable[Any] = getattr(r, "in")
    if allowed and value not in allowed:
        errors.append(f"{path}: must be one of {', '.join(str(a) for a in allowed)}")
    if r.not_in and value in r.not_in:
        errors.append(f"{path}: must not be {value}")


def _duration(value: Message, r: validate_pb2.DurationRules, path: str, errors: list[str]) -> None:
    ns = value.ToNanoseconds()  # type: ignore[attr-defined]
    lo = (r.gte.ToNanoseconds(), True) if r.HasField("gte") else (r.gt.ToNanoseconds(), False) \
        if r.HasField("gt") else None
    hi = (r.lte.ToNanoseconds(), True) if r.HasField("lte") else (r.lt.ToNanoseconds(), False) \
        if r.HasField("lt") else None
    if not _bounds(ns, lo, hi):
        text = " and ".join(f"{op} {b[0] / 1e9:g}s" for op, b in
                            ((">=" if lo and lo[1] else ">", lo), ("<=" if hi and hi[1] else "<", hi)) if b)
        errors.append(f"{path}: must be {text}, got {ns / 1e9:g}s")


def _enum(value: int, r: validate_pb2.EnumRules, enum: EnumDescriptor, path: str, errors: list[str]) -> None:
    if r.defined_only and value not in enum.values_by_number:
        errors.append(f"{path}: {value} is not a value of {enum.name}")
    allowed = getattr(r, "in")
    if allowed and value not in allowed:
        errors.append(f"{path}: must be one of {', '.join(str(a) for a in allowed)}")
    if r.not_in and value in r.not_in:
        errors.append(f"{path}: must not be {value}")
